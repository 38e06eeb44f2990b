"""`toolkit eval` backends on real runtimes: torch, optimum ORT, onnxruntime-genai, llama.cpp, server, OpenAI."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import build_tiny_tokenizer, toolkit

from toolkit.eval.accuracy import evaluate
from toolkit.eval.backend import equal_length_batches
from toolkit.eval.generate import detect_backend, export_info, open_generator
from toolkit.data.prompt_rule import PLAIN_STOP, plain_text
from toolkit.eval.prompts import build_messages, cut_at_stop, fewshot_examples
from toolkit.data.problems import load_suite

QUESTIONS = ["Tom has 3 apples and buys 5 more. How many apples does he have?",
             "Each box holds 7 pencils. There are 4 boxes. How many pencils in total?",
             "A baker makes 24 muffins and sells 18 of them. How many are left?"]


@pytest.fixture(scope="module")
def exports(tmp_path_factory) -> dict[str, Path]:
    """A tiny random llama whose greedy output varies with the input (weights at std 0.3, not 0.02),
    plus its optimum ONNX export and its onnxruntime-genai export, made the way `toolkit export` will."""
    import torch
    from optimum.onnxruntime import ORTModelForCausalLM
    from transformers import LlamaConfig, LlamaForCausalLM

    root = tmp_path_factory.mktemp("eval-exports")
    hf = root / "hf"
    tok = build_tiny_tokenizer(hf)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         initializer_range=0.3, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id, tie_word_embeddings=True)
    LlamaForCausalLM(config).save_pretrained(hf)
    onnx = root / "onnx"
    ORTModelForCausalLM.from_pretrained(hf, export=True).save_pretrained(onnx)
    tok.save_pretrained(onnx)
    (onnx / "export.json").write_text(json.dumps({"format": "onnx", "quant": "fp32"}))
    genai = root / "genai"
    subprocess.run([sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(hf), "-o", str(genai),
                    "-p", "fp32", "-e", "cpu", "-c", str(root / "genai-cache")], check=True, capture_output=True)
    plain = root / "plain"  # the same model without a chat template: plain completion prompts
    shutil.copytree(hf, plain)
    (plain / "chat_template.jinja").unlink(missing_ok=True)
    cfg = json.loads((plain / "tokenizer_config.json").read_text())
    cfg.pop("chat_template", None)
    (plain / "tokenizer_config.json").write_text(json.dumps(cfg))
    return {"hf": hf, "onnx": onnx, "genai": genai, "plain": plain}


def _greedy(model: str, backend: str, batch_size: int = 4, n: int = 12) -> list[str]:
    gen = open_generator(model, backend, batch_size=batch_size, threads=1)
    try:
        return gen.generate([build_messages(q) for q in QUESTIONS], max_new_tokens=n)
    finally:
        gen.close()


def test_auto_backend_follows_the_model_reference(exports, smollm2_gguf, tmp_path):
    assert detect_backend(str(exports["hf"])) == "torch"
    assert detect_backend(str(exports["onnx"])) == "onnx"
    assert detect_backend(str(exports["genai"])) == "genai"
    assert detect_backend(str(smollm2_gguf)) == "llama.cpp"
    assert detect_backend("pkg:smollm2-135m-instruct") == "llama.cpp"
    assert detect_backend("openai:http://127.0.0.1:1/v1#m") == "openai"
    assert detect_backend("Qwen/Qwen2.5-0.5B-Instruct") == "torch"
    assert export_info(str(exports["onnx"])) == {"format": "onnx", "quant": "fp32"}
    assert export_info(str(exports["hf"])) is None


def test_torch_onnx_and_genai_give_the_same_greedy_text(exports):
    torch_out = _greedy(str(exports["hf"]), "torch")
    assert all(len(t.strip()) >= 5 for t in torch_out) and len(set(torch_out)) == 3  # real, input-dependent text
    assert _greedy(str(exports["onnx"]), "auto") == torch_out
    assert _greedy(str(exports["genai"]), "auto", batch_size=1) == torch_out
    # Batched: prompts of different lengths never share a padded batch (a left-padded genai row decoded
    # differently, bench/results/eval_backends.json); equal prompts do share one and give the same text.
    assert _greedy(str(exports["genai"]), "genai", batch_size=3) == torch_out
    gen = open_generator(str(exports["genai"]), "genai", batch_size=4, threads=1)
    try:
        twice = gen.generate([build_messages(q) for q in QUESTIONS + QUESTIONS[:2]], max_new_tokens=12)
    finally:
        gen.close()
    assert twice == torch_out + torch_out[:2]


def test_equal_length_batches_never_mix_lengths():
    assert equal_length_batches([5, 3, 5, 5, 3, 7], 2) == [[1, 4], [0, 2], [3], [5]]


def test_plain_completion_format_without_a_chat_template(exports):
    messages = build_messages(QUESTIONS[0])
    text = plain_text(messages)
    assert text.endswith(f"Question: {QUESTIONS[0]}\nAnswer:") and "<|im_start|>" not in text
    assert cut_at_stop(" 3 + 5 = 8. The answer is 8.\n\nQuestion: Ann has", PLAIN_STOP) == " 3 + 5 = 8. The answer is 8.\n"
    gen = open_generator(str(exports["plain"]), "torch", threads=1)
    assert gen.config["prompt_format"] == "plain"
    out = gen.generate([messages], max_new_tokens=16)
    assert "\nQuestion:" not in out[0]


def test_same_inputs_give_the_same_results_and_samples(exports, data_root, tmp_path):
    problems = {"multiarith": load_suite("multiarith", data_root)[:3]}
    shots = {"multiarith": fewshot_examples("multiarith", 2, data_root, problems["multiarith"])}
    runs = []
    for k in range(2):
        out = tmp_path / f"run{k}" / "results.json"
        out.parent.mkdir()
        gen = open_generator(str(exports["onnx"]), "auto", threads=1)
        report = evaluate(gen, problems, out, model="m", max_new_tokens=8, shots=shots)
        runs.append((report["results"], (out.parent / "samples_multiarith.jsonl").read_text()))
    assert runs[0] == runs[1]
    sample = json.loads(runs[0][1].splitlines()[0])
    assert len(sample["prompt"]) == 1 + 2 * 2 + 1  # system, two worked examples, the question
    assert report["config"]["threads"] == 1 and report["backend"] == "onnx"


def test_fewshot_draw_is_deterministic_and_never_an_evaluated_problem(data_root):
    train = load_suite("gsm8k_train", data_root)
    evaluated = load_suite("gsm8k", data_root)[:5] + train[:50]  # pretend part of train is evaluated
    a = fewshot_examples("gsm8k", 4, data_root, evaluated, seed=7)
    assert a == fewshot_examples("gsm8k", 4, data_root, evaluated, seed=7)
    assert a != fewshot_examples("gsm8k", 4, data_root, evaluated, seed=8)
    banned = {p.question for p in evaluated}
    assert all(s.question not in banned and s.answer.endswith(".") and "The answer is" in s.answer for s in a)
    assert "<<" not in "".join(s.answer for s in a)  # calculator notes stripped
    fixed = fewshot_examples("svamp", 3, data_root, load_suite("svamp", data_root)[:5])
    assert len(fixed) == 3 and fixed == fewshot_examples("svamp", 3, data_root, [])


def test_llama_cpp_in_process_and_served_write_real_text(smollm2_gguf):
    local = _greedy(str(smollm2_gguf), "auto", n=16)
    assert all(t.strip() for t in local)
    served = _greedy(str(smollm2_gguf), "llama.cpp-server", n=16)
    assert all(t.strip() for t in served)


def test_openai_backend_against_a_real_server_keeps_order_and_never_writes_the_key(
        teacher_server, tmp_path, data_root, monkeypatch):
    monkeypatch.setenv("EVAL_TEST_KEY", "sk-secret-123")
    out = tmp_path / "results.json"
    ref = f"openai:{teacher_server.base_url}#smollm2"
    before = teacher_server.requests_served()
    r = toolkit("eval", ref, "--suite", "multiarith", "--limit", "3", "--max-new-tokens", "12",
                "--concurrency", "3", "--api-key-env", "EVAL_TEST_KEY", "--threads", "1", "--data-root", str(data_root),
                "--out", str(out), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert teacher_server.requests_served() - before == 3
    res = json.loads(out.read_text())
    assert res["backend"] == "openai" and res["config"]["api_key_env"] == "EVAL_TEST_KEY"
    samples = [json.loads(line) for line in (tmp_path / "samples_multiarith.jsonl").read_text().splitlines()]
    ids = [p.id for p in load_suite("multiarith", data_root)[:3]]
    assert [s["id"] for s in samples] == ids and all(s["output"].strip() for s in samples)
    for f in tmp_path.iterdir():
        assert "sk-secret-123" not in f.read_text()


def test_openai_backend_with_the_served_models_tokenizer_asks_the_text_it_was_trained_on(
        teacher_server, smollm2_gguf, tmp_path, data_root):
    """--tokenizer: each prompt is rendered here by the prompt rule and sent to the completions endpoint, so the
    server's answers are llama.cpp's own greedy continuations of exactly that text."""
    from llama_cpp import Llama

    from toolkit.data.prompt_rule import render
    from toolkit.runtime.loading import load_tokenizer
    from toolkit.runtime.models import resolve_model

    out = tmp_path / "results.json"
    r = toolkit("eval", f"openai:{teacher_server.base_url}#smollm2", "--tokenizer", str(smollm2_gguf), "--suite",
                "multiarith", "--limit", "3", "--max-new-tokens", "12", "--threads", "1", "--data-root",
                str(data_root), "--out", str(out), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert json.loads(out.read_text())["config"]["prompt_format"].startswith("prompt rule, rendered here (chat")
    tok = load_tokenizer(resolve_model(str(smollm2_gguf)))
    local = Llama(str(smollm2_gguf), n_ctx=1024, n_threads=2, verbose=False)
    samples = [json.loads(line) for line in (tmp_path / "samples_multiarith.jsonl").read_text().splitlines()]
    for s in samples:
        text, stops = render(tok, s["prompt"])
        want = local.create_completion(text, max_tokens=12, temperature=0.0, repeat_penalty=1.1,
                                       stop=list(stops) or None)["choices"][0]["text"]
        assert s["output"] == want


@pytest.mark.parametrize("args, expected", [
    (["{hf}", "--tokenizer", "{hf}"], "--tokenizer goes with an openai"),
    (["openai:127.0.0.1:8000#m"], "bad OpenAI model reference"),
    (["openai:http://127.0.0.1:9/v1#m"], "is unreachable"),
    (["{hf}", "--backend", "onnx"], "needs *.onnx"),
    (["{hf}", "--backend", "genai"], "needs genai_config.json"),
    (["{hf}", "--backend", "llama.cpp"], "needs a GGUF file"),
    (["{onnx}", "--fewshot", "99"], "fixed examples"),
])
def test_bad_model_references_end_in_one_line(exports, data_root, tmp_path, args, expected):
    args = [a.format(**exports) for a in args]
    r = toolkit("eval", *args, "--suite", "multiarith", "--limit", "1", "--threads", "1", "--data-root", str(data_root),
                "--out", str(tmp_path / "r.json"), cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], r.stderr
