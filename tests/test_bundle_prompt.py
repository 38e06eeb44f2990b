"""The prompt rule end to end: a trained student folder and every export carry its record (prompt.json, export.json),
and a bundle's run.py asks a question byte for byte as the eval of that export does (GGUF and genai runners, chat
template and plain format, a forced strategy tag)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import build_export_model, drop_chat_template
from tests.test_export_bundle import _unpack
from toolkit.core.jsonio import read_jsonl
from toolkit.core.recipe import TrainConfig
from toolkit.data.prompt_rule import PROMPT_FILE, prompt_record, render
from toolkit.data.strategies import TAGS, is_tagged, student_strategies, training_completion, training_prompt
from toolkit.eval.backend import llama_prompt
from toolkit.eval.command import run_eval
from toolkit.eval.config import EvalConfig
from toolkit.eval.prompts import build_messages
from toolkit.export.config import ExportConfig
from toolkit.export.run import export_model
from toolkit.runtime.loading import load_model_and_tokenizer
from toolkit.runtime.models import resolve_model
from toolkit.training.train import IGNORE, tokenize_example, train

# Braces (str.format in the runner), a trailing space (the plain format strips the question) and a non-ASCII sign.
QUESTION = "A box {blue} holds 3 pens and Tom buys 5 more for 2 €. How many pens does he have? "


def make_student(folder: Path, strategies: list[str], chat: bool) -> Path:
    """A student folder as the pipeline saves one: the tiny llama fine-tuned for one step on examples rendered by
    the prompt rule, saved with the rule's record."""
    base = build_export_model(folder / "base", "llama")
    if not chat:
        drop_chat_template(base)
    model, tok = load_model_and_tokenizer(resolve_model(str(base)))
    body = "He has 3 + 5 = 8 pens.\nThe answer is 8."
    examples = [tokenize_example(tok, training_prompt("Tom has 3 pens and buys 5 more.", strategies),
                                 training_completion("cot", body, strategies), 128)]
    cfg = TrainConfig(max_steps=1, batch_size=1, seq_len=128, threads=1, checkpoint_every=0)
    out = folder / "student"
    train(model, tok, examples, cfg, out, seed=0, prompt=prompt_record(strategies, chat))
    return out


CASES = [  # format, quant, strategies, chat template, forced strategy (None: the student's own prompt)
    ("gguf", "f16", ["cot"], True, None),
    ("gguf", "f16", ["cot"], False, None),
    ("gguf", "f16", ["cot", "l2m", "pot"], True, "pot"),
    ("genai", "fp32", ["cot", "l2m", "pot"], True, None),
    ("genai", "fp32", ["cot", "l2m", "pot"], True, "pot"),
    ("genai", "fp32", ["cot", "pot"], False, "pot"),
]


@pytest.mark.parametrize("fmt, quant, strategies, chat, force", CASES,
                         ids=[f"{c[0]}-{'chat' if c[3] else 'plain'}-{'+'.join(c[2])}-{c[4] or 'own'}" for c in CASES])
def test_bundle_prompt_is_byte_identical_to_the_eval_prompt(tmp_path, fmt, quant, strategies, chat, force):
    student = make_student(tmp_path, strategies, chat)
    record = prompt_record(strategies, chat)
    assert json.loads((student / PROMPT_FILE).read_text()) == record  # beside config.json
    m = export_model(str(student), tmp_path / "out", ExportConfig(format=fmt, quant=quant, threads=1, bundle=True))
    assert m["prompt"] == record
    assert json.loads((tmp_path / "out" / PROMPT_FILE).read_text()) == record
    folder = _unpack(tmp_path / "out" / m["bundle"]["path"], tmp_path / "unpacked")
    assert json.loads((folder / PROMPT_FILE).read_text()) == record  # shipped, and in SHA256SUMS (_unpack checks)

    # The eval's prompt for this export: the strategy the run evaluates with (its own prompt, or a forced tag)
    # under the run's strategies, rendered by the backend that `toolkit eval` picks for the export.
    strategy = force or ("auto" if is_tagged(strategies) else "cot")
    with student_strategies(strategies):
        messages = build_messages(QUESTION, strategy)
    if fmt == "gguf":
        from llama_cpp import Llama

        llm = Llama(str(next((tmp_path / "out").glob("*.gguf"))), vocab_only=True, verbose=False)
        expected = llama_prompt(llm, messages)[0]
        llm.close()
    else:
        from transformers import AutoTokenizer

        expected = render(AutoTokenizer.from_pretrained(tmp_path / "out"), messages)[0]  # as GenaiGenerator does
    prefix = ["--prefix", TAGS[force] + "\n"] if force else []
    # -I: isolated mode, so the toolkit checkout on sys.path cannot help the runner
    proc = subprocess.run([sys.executable, "-I", str(folder / "run.py"), QUESTION, "--print-prompt", *prefix],
                          capture_output=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout.decode() == expected

    # ... which is the prompt the student was trained on (its own prompt) and evaluated with in torch.
    _, tok = load_model_and_tokenizer(resolve_model(str(student)))
    assert render(tok, messages)[0] == expected
    assert (record["system"] in expected) and ("<|im_start|>" in expected) == chat
    if force is None:
        ex = tokenize_example(tok, training_prompt(QUESTION, strategies), "The answer is 8.", 512)
        assert tok.decode(ex.input_ids[: ex.labels.count(IGNORE)]) == expected
    else:
        assert expected.endswith(TAGS[force] + "\n")


def test_a_bundle_of_a_model_without_a_record_asks_with_the_default_cot_prompt(tmp_path):
    """An export of a model that was not trained here (no prompt.json) records `toolkit eval`'s default, the CoT
    prompt, which its runner then uses too."""
    src = build_export_model(tmp_path / "qwen2", "qwen2")
    m = export_model(str(src), tmp_path / "out", ExportConfig(format="gguf", quant="f16", threads=1, bundle=True))
    assert m["prompt"] == prompt_record(["cot"], chat=True)
    folder = _unpack(tmp_path / "out" / m["bundle"]["path"], tmp_path / "unpacked")
    proc = subprocess.run([sys.executable, "-I", str(folder / "run.py"), QUESTION, "--print-prompt"],
                          capture_output=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout.decode().startswith("<|im_start|>system\n" + m["prompt"]["system"] + "<|im_end|>\n")


def test_toolkit_eval_of_a_tagged_student_offers_the_strategies_it_learned(tmp_path, data_root):
    """`toolkit eval --strategy auto` on a [cot, pot] student folder, or on its GGUF export, asks with the prompt it
    was trained on (its prompt.json's strategies), not the prompt offering all three."""
    student = make_student(tmp_path, ["cot", "pot"], chat=True)
    export_model(str(student), tmp_path / "out", ExportConfig(format="gguf", quant="f16", threads=1))
    for model in (student, next((tmp_path / "out").glob("*.gguf"))):
        out = tmp_path / f"eval-{model.suffix or 'torch'}" / "results.json"
        run_eval(str(model), out, EvalConfig(suite="multiarith", limit=1, strategy="auto", max_new_tokens=2,
                                             threads=1, data_root=str(data_root)), quiet=True)
        (sample,) = read_jsonl(out.with_name("samples_multiarith.jsonl"))
        assert sample["prompt"] == training_prompt(sample["prompt"][-1]["content"], ["cot", "pot"])
        assert json.loads(out.read_text())["config"]["prompt_strategies"] == ["cot", "pot"]
