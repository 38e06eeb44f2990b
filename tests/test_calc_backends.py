"""The calculator inside every backend's decoding: torch, optimum ONNX, onnxruntime-genai, llama.cpp, its server."""
from __future__ import annotations

import json

import pytest

from tests.conftest import toolkit
from tests.test_eval_backends import QUESTIONS, exports  # noqa: F401  (the module's export fixture)

from toolkit.eval.generate import open_generator
from toolkit.eval.prompts import build_messages


def _prefilled(question: str, answer_so_far: str) -> list[dict]:
    return build_messages(question) + [{"role": "assistant", "content": answer_so_far}]


PROMPTS = [_prefilled("What is 12 * 3?", "He has 12 * 3 ="), build_messages(QUESTIONS[0]),
           _prefilled("What is 4817 * 29?", "So 4817 * 29 = ")]


def _run(model: str, backend: str, calculator: bool, prompts=PROMPTS, n: int = 10):
    gen = open_generator(model, backend, batch_size=3, threads=1, calculator=calculator)
    try:
        return gen.generate(prompts, max_new_tokens=n), getattr(gen, "calc_counts", None)
    finally:
        gen.close()


@pytest.mark.parametrize("kind, backend", [("hf", "torch"), ("onnx", "onnx"), ("genai", "genai")])
def test_token_backends_force_the_result_per_sequence_in_a_batch(exports, kind, backend):  # noqa: F811
    out, counts = _run(str(exports[kind]), backend, calculator=True)
    assert out[0].startswith(" 36") and not out[0][3:4].isdigit(), out
    assert out[2].startswith("139693") and not out[2][6:7].isdigit(), out  # "= " already has its space
    # the row without arithmetic decodes exactly as without the calculator, in the same batch
    plain, _ = _run(str(exports[kind]), backend, calculator=False)
    assert out[1] == plain[1] and not plain[0].startswith(" 36")
    assert counts[0][0] == 1 and counts[1] == (0, 0) and counts[2] == (1, 1)  # a random model never writes 139693


def test_llama_cpp_in_process_and_served_force_results_the_model_writes_itself(smollm2_gguf):
    prompts = [PROMPTS[0], PROMPTS[2],
               # the model writes " =" itself after this prefix; the calculator then answers mid-stream
               _prefilled("What is 17 * 23? Write it as a * b = c.", "17 * 23")]
    for backend in ("llama.cpp", "llama.cpp-server"):
        out, counts = _run(str(smollm2_gguf), backend, calculator=True, prompts=prompts, n=12)
        assert out[0].startswith(" 36") and not out[0][3:4].isdigit(), (backend, out)
        assert out[1].startswith("139693") and not out[1][6:7].isdigit(), (backend, out)
        assert out[2].startswith(" = 391") and not out[2][6:7].isdigit(), (backend, out)
        assert counts[0][0] == counts[1][0] == counts[2][0] == 1 and counts[1][1] == 1, (backend, counts)


def test_llama_cpp_with_the_calculator_renders_prompts_as_its_chat_completion_does(smollm2_gguf):
    plain, _ = _run(str(smollm2_gguf), "llama.cpp", calculator=False, prompts=[PROMPTS[1]], n=16)
    calc, counts = _run(str(smollm2_gguf), "llama.cpp", calculator=True, prompts=[PROMPTS[1]], n=16)
    assert calc == plain or counts[0][0] > 0


def test_results_json_and_samples_record_the_calculator(exports, data_root, tmp_path):  # noqa: F811
    for flag in ([], ["--calculator"]):
        out = tmp_path / f"run{len(flag)}" / "results.json"
        out.parent.mkdir()
        r = toolkit("eval", str(exports["hf"]), "--suite", "multiarith", "--limit", "2", "--max-new-tokens", "6",
                    "--threads", "1", "--data-root", str(data_root), "--out", str(out), *flag, cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        res = json.loads(out.read_text())
        on = bool(flag)
        assert res["calculator"] is on and res["config"]["calculator"] is on
        assert ("calc_forced" in res["results"]["multiarith"]) is on
        for line in (out.parent / "samples_multiarith.jsonl").read_text().splitlines():
            s = json.loads(line)
            assert s["calculator"] is on
            assert (s["calc_forced"], s["calc_changed"]) == ((0, 0) if on else (None, None))


def test_a_remote_endpoint_with_the_calculator_is_one_line(tmp_path, data_root):
    r = toolkit("eval", "openai:http://127.0.0.1:9/v1#m", "--calculator", "--suite", "multiarith", "--limit", "1",
                "--data-root", str(data_root), "--out", str(tmp_path / "r.json"), cwd=tmp_path)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "--calculator" in lines[0], r.stderr
