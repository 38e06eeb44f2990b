"""Flash attention is on wherever we run a GGUF through llama-cpp-python, as in llama.cpp's own tools.

llama-cpp-python turns it off unless asked; off, the quickstart's q8_0 decoded at 0.90-0.93x
(bench/results/decode_settings.json)."""
from __future__ import annotations

import llama_cpp

from toolkit.eval.bench_runner import LlamaCppLoop
from toolkit.eval.generate import LlamaCppGenerator
from toolkit.export.bundle import _GGUF_RUNNER
from toolkit.runtime.llama_server import LlamaServer

ENABLED = llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED


def test_the_eval_and_bench_runtimes_ask_for_flash_attention(smollm2_gguf):
    assert LlamaCppGenerator(smollm2_gguf, n_ctx=256).llm.context_params.flash_attn_type == ENABLED
    assert LlamaCppLoop(smollm2_gguf, threads=1, n_ctx=256).llm.context_params.flash_attn_type == ENABLED


def test_the_teacher_server_runs_with_flash_attention(smollm2_gguf, tmp_path):
    log = tmp_path / "server.log"
    with LlamaServer(smollm2_gguf, log, n_ctx=256, threads=1):
        pass
    context = [line for line in log.read_text().splitlines() if line.startswith("llama_context: flash_attn")]
    assert context and context[0].split("=")[-1].strip() == "enabled", context


def test_the_bundle_runner_asks_for_flash_attention():
    call = next(line for line in _GGUF_RUNNER.splitlines() if line.startswith("llm = Llama("))
    assert "flash_attn=True" in call
