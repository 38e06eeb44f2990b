"""Student sampling through an OpenAI-compatible server (vLLM on a GPU; here a real llama.cpp server stands in)."""
from __future__ import annotations

import importlib.util

import pytest

from toolkit.core.errors import ModelError
from toolkit.core.recipe import StudentConfig
from toolkit.teacher.vllm_sampler import OpenAIGenerator, VllmServer

PROMPTS = [[{"role": "user", "content": q}] for q in ("What is 2 plus 3?", "What is 4 plus 4?", "What is 9 minus 4?")]


def test_generator_answers_every_prompt_in_order(teacher_server):
    gen = OpenAIGenerator(teacher_server.base_url, "student", concurrency=2)
    done: list[int] = []
    first = gen.generate(PROMPTS, max_new_tokens=12, temperature=0.0, on_done=done.append)
    assert len(first) == 3 and all(isinstance(t, str) and t.strip() for t in first)
    assert sum(done) == 3
    # Greedy and one prompt per request: the same prompt alone gets the same answer.
    assert gen.generate(PROMPTS[1:2], max_new_tokens=12, temperature=0.0) == first[1:2]


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vllm is installed: it would really start")
def test_missing_vllm_is_one_clear_error(tmp_path, tiny_model_dir):
    server = VllmServer(tiny_model_dir, tmp_path / "vllm.log", seed=0, max_model_len=256)
    server.start_timeout_s = 60
    with pytest.raises(ModelError, match="vLLM server for .* exited: .*vllm"):
        server.start()


def test_sampler_option_defaults_to_transformers():
    assert StudentConfig(model="x").sampler == "transformers"
    cfg = StudentConfig(model="x", sampler="vllm", vllm_args=["--gpu-memory-utilization", "0.5"])
    assert cfg.vllm_args == ["--gpu-memory-utilization", "0.5"]
    with pytest.raises(ValueError):
        StudentConfig(model="x", sampler="sglang")
