"""A student whose tokenizer has no chat template (a base model) goes through `toolkit distill`: it trains on the
plain format of the prompt rule and is evaluated on that same text, with no traceback."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from tests.conftest import drop_chat_template, toolkit, write_tiny_recipe
from tests.fault_teacher import FaultTeacher
from toolkit.core.jsonio import read_jsonl
from toolkit.data.prompt_rule import PLAIN_TEMPLATE, prompt_record, read_record, render
from toolkit.data.strategies import COT_INSTRUCTION, training_prompt
from toolkit.training.train import IGNORE, tokenize_example


def test_a_student_without_a_chat_template_distills_in_the_plain_format(tmp_path, tiny_model_dir):
    from transformers import AutoTokenizer

    base = tmp_path / "base-student"
    shutil.copytree(tiny_model_dir, base)
    drop_chat_template(base)
    assert not AutoTokenizer.from_pretrained(base).chat_template
    with FaultTeacher(tmp_path / "server.jsonl") as srv:
        r = toolkit("distill", str(write_tiny_recipe(tmp_path, base, srv.base_url)), cwd=tmp_path)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr[-3000:]
    run = tmp_path / "runs" / "tiny"
    stages = json.loads((run / "manifest.json").read_text())["stages"]
    assert stages["round-0/train"]["prompt_format"] == "plain"
    student = run / "round-0" / "student"
    assert read_record(student) == prompt_record(["cot"], chat=False)  # prompt.json beside config.json

    # The base and the trained student were evaluated on the plain format, with the CoT system text ...
    tok = AutoTokenizer.from_pretrained(student)
    for stage in ("eval/base", "round-0/eval"):
        results = Path(stages[stage]["results"])
        assert json.loads(results.read_text())["config"]["prompt_format"] == "plain"
        samples = list(read_jsonl(results.with_name("samples_heldout.jsonl")))
        assert len(samples) == 2
        for s in samples:
            question = s["prompt"][-1]["content"]
            assert s["prompt"] == training_prompt(question, ["cot"])
            assert render(tok, s["prompt"])[0] == PLAIN_TEMPLATE.format(system=COT_INSTRUCTION, question=question)
    # ... and each training example's prompt is that same text, its labels the reply and the end token.
    rows = list(read_jsonl(run / "round-0" / "train.jsonl"))
    assert rows
    for row in rows:
        ex = tokenize_example(tok, row["messages"], row["completion"], 256)
        n_prompt = ex.labels.count(IGNORE)
        assert tok.decode(ex.input_ids[:n_prompt]) == render(tok, row["messages"])[0]
        assert tok.decode(ex.input_ids[n_prompt:]) == " " + row["completion"] + tok.eos_token
