"""Flash attention is on wherever we run a GGUF through llama-cpp-python, as in llama.cpp's own tools.

llama-cpp-python turns it off unless asked; off, the quickstart's q8_0 decoded at 0.90-0.93x
(bench/results/decode_settings.json)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import llama_cpp

from toolkit.eval.bench_runner import LlamaCppLoop
from toolkit.eval.generate import LlamaCppGenerator
from toolkit.export.bundle import _GGUF_RUNNER
from toolkit.data.problems import Problem, write_jsonl
from toolkit.runtime.llama_server import LlamaServer

REPO = Path(__file__).resolve().parents[1]

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


def test_the_flash_attention_outputs_bench_scores_both_arms(smollm2_gguf, tmp_path):
    """bench/flash_attn_outputs.py: the off arm really runs without flash attention (the child asserts it) and
    both arms are scored and paired on the same problems."""
    problems = tmp_path / "heldout.jsonl"
    write_jsonl(problems, [Problem(f"t-{i}", f"Tom has {i} apples and buys 2 more. How many apples now?", str(i + 2),
                                   "test") for i in range(3)])
    out = tmp_path / "fa.json"
    subprocess.run([sys.executable, "bench/flash_attn_outputs.py", str(smollm2_gguf), str(problems),
                    "--max-new-tokens", "8", "--threads", "1", "--force", "--out", str(out)],
                   cwd=REPO, check=True, capture_output=True, timeout=300)
    result = json.loads(out.read_text())
    assert result["n"] == 3 and set(result["eval_seconds"]) == {"off", "on"}
    assert result["outputs_identical"] + len(result["outputs_differ"]) == 3
    assert result["paired_on_minus_off"]["n"] == 3
