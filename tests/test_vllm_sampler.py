"""Student sampling through an OpenAI-compatible server (vLLM on a GPU; here a real llama.cpp server stands in)."""
from __future__ import annotations

import importlib.util

import pytest

from toolkit.core.errors import ModelError
from toolkit.core.recipe import StudentConfig
from toolkit.runtime.openai_generator import OpenAIGenerator
from toolkit.teacher.vllm_sampler import VllmServer

PROMPTS = [[{"role": "user", "content": q}] for q in ("What is 2 plus 3?", "What is 4 plus 4?", "What is 9 minus 4?")]


@pytest.fixture(scope="module")
def smollm2_tokenizer(smollm2_gguf):
    from toolkit.runtime.loading import load_tokenizer
    from toolkit.runtime.models import resolve_model

    return load_tokenizer(resolve_model(str(smollm2_gguf)))


def test_generator_answers_every_prompt_in_order(teacher_server, smollm2_tokenizer):
    gen = OpenAIGenerator(teacher_server.base_url, "student", tokenizer=smollm2_tokenizer, concurrency=2)
    done: list[int] = []
    first = gen.generate(PROMPTS, max_new_tokens=12, temperature=0.0, on_done=done.append)
    assert len(first) == 3 and all(isinstance(t, str) and t.strip() for t in first)
    assert sum(done) == 3
    # Greedy and one prompt per request: the same prompt alone gets the same answer.
    assert gen.generate(PROMPTS[1:2], max_new_tokens=12, temperature=0.0) == first[1:2]


def test_samples_of_one_prompt_differ_and_a_rerun_draws_the_same(teacher_server, smollm2_tokenizer):
    """SIKeD samples k answers of each problem as k requests with one prompt: each request gets its own seed
    (seed + its index), so the k differ, and the same seed draws the same k again."""
    prompts = PROMPTS[:1] * 4
    first = OpenAIGenerator(teacher_server.base_url, "student", tokenizer=smollm2_tokenizer, seed=3).generate(
        prompts, max_new_tokens=16, temperature=1.0)
    again = OpenAIGenerator(teacher_server.base_url, "student", tokenizer=smollm2_tokenizer, seed=3).generate(
        prompts, max_new_tokens=16, temperature=1.0)
    assert again == first
    assert len(set(first)) > 1


def test_the_server_is_asked_the_text_the_student_learned(teacher_server, smollm2_gguf, smollm2_tokenizer):
    """The sampler sends the prompt rule's text to the completions endpoint: the server's answers are llama.cpp's
    own greedy continuations of that text, in the chat template and in the plain format (a student without a
    template), with the plain format's stop and a forced strategy tag continued, not closed."""
    import copy

    from llama_cpp import Llama

    from toolkit.data.prompt_rule import PLAIN_STOP, render

    plain_tok = copy.deepcopy(smollm2_tokenizer)
    plain_tok.chat_template = None
    tagged = [*PROMPTS[:1], PROMPTS[2] + [{"role": "assistant", "content": "[pot]\n"}]]
    local = Llama(str(smollm2_gguf), n_ctx=1024, n_threads=2, verbose=False)
    answers = []
    for tok in (smollm2_tokenizer, plain_tok):
        got = OpenAIGenerator(teacher_server.base_url, "student", tokenizer=tok).generate(tagged, max_new_tokens=24)
        want = []
        for messages in tagged:
            text, stops = render(tok, messages)
            want.append(local.create_completion(text, max_tokens=24, temperature=0.0, repeat_penalty=1.1,
                                                stop=list(stops) or None)["choices"][0]["text"])
        assert got == want
        assert all(stop not in answer for answer in got for stop in PLAIN_STOP)
        answers.append(got)
    assert answers[0] != answers[1]  # the two formats are different questions to the model
    assert render(plain_tok, tagged[1])[0].endswith("Answer: [pot]\n")  # the plain text really was asked


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


def test_forced_strategy_sampling_may_use_the_vllm_sampler(tmp_path, tiny_model_dir):
    """The completions sampler continues a forced tag (test above), so SIKeD's forced sampling takes it."""
    from tests.conftest import write_tiny_recipe
    from toolkit.core.recipe import load_recipe

    path = write_tiny_recipe(tmp_path, tiny_model_dir, "http://127.0.0.1:9/v1")
    recipe = load_recipe(path, ["distill.strategies=[cot, pot]", "distill.self_guided.sampling=forced",
                                "student.sampler=vllm"])
    assert recipe.distill.self_guided.sampling == "forced" and recipe.student.sampler == "vllm"
