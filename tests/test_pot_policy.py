"""PoT only where the recipe allows it: the tagged prompt offers only the recipe's strategies, a student's `[pot]`
reply is never executed without `pot` among them, and the manifest always records the sandbox mode."""
from __future__ import annotations

import json

import pytest

from tests.conftest import DATA, toolkit, write_tiny_recipe
from tests.fault_teacher import FaultTeacher
from toolkit.data.strategies import (TAGGED_INSTRUCTION, final_answer, final_answers, student_strategies,
                                     tagged_instruction, training_prompt)
from toolkit.eval.prompts import build_messages
from toolkit.sandbox.runner import SandboxUnavailable

POT_REPLY = "[pot]\n```python\nanswer = 6 * 7\n```"



def test_the_tagged_prompt_offers_only_the_recipe_strategies():
    assert tagged_instruction(["cot", "l2m", "pot"]) == TAGGED_INSTRUCTION  # unchanged for a full recipe
    for strategies in (["cot", "l2m"], ["l2m", "cot"], ["l2m"]):
        system = training_prompt("Q?", strategies)[0]["content"]
        assert "[pot]" not in system and "[l2m]" in system and "Python" not in system
        with student_strategies(strategies):  # what evals build inside a run's stage
            assert "[pot]" not in build_messages("Q?", "auto")[0]["content"]
    assert "[cot]" not in training_prompt("Q?", ["l2m", "pot"])[0]["content"]
    assert "[pot]" in build_messages("Q?", "auto")[0]["content"]  # outside a run: `toolkit eval` offers all


def test_a_pot_reply_is_never_executed_where_the_recipe_has_no_pot(no_bwrap):
    """Without bubblewrap any program run raises; with [cot, l2m] the [pot] reply gets no answer and runs nothing."""
    with student_strategies(["cot", "l2m"]):
        assert final_answers("auto", [POT_REPLY, "[cot]\nThe answer is 5."]) == [("pot", None), ("cot", "5")]
        assert final_answer("auto", POT_REPLY) == ("pot", None)
    with pytest.raises(SandboxUnavailable):  # where pot is allowed, the same reply is executed
        with student_strategies(["cot", "l2m", "pot"]):
            final_answers("auto", [POT_REPLY])


def test_a_cot_l2m_recipe_without_bubblewrap_completes_and_records_the_sandbox(tmp_path, tiny_model_dir, monkeypatch):
    """The real CLI, a fake teacher, the tiny student: no bubblewrap, `sandbox: bwrap` (the default), and the run
    completes, since nothing in it may run a program; the manifest says so."""
    monkeypatch.setenv("TOOLKIT_BWRAP", "/nonexistent/bwrap")
    monkeypatch.delenv("TOOLKIT_SANDBOX", raising=False)
    with FaultTeacher(tmp_path / "log.jsonl") as srv:
        recipe = write_tiny_recipe(tmp_path, tiny_model_dir, srv.base_url)
        r = toolkit("distill", str(recipe), f"data.root={DATA}", "distill.strategies=[cot, l2m]", "train.max_steps=1",
                    cwd=tmp_path, timeout=600)
    assert r.returncode == 0, r.stderr
    run = tmp_path / "runs" / "tiny"
    manifest = json.loads((run / "manifest.json").read_text())
    sandbox = {k: manifest["sandbox"][k] for k in ("mode", "confined", "pot_allowed")}
    assert sandbox == {"mode": "bwrap", "confined": False, "pot_allowed": False}
    from toolkit.sandbox.runner import cgroup_status

    assert {key: manifest["sandbox"].get(key) for key in cgroup_status()} == cgroup_status()  # recorded either way
    prompts = [p for p in run.rglob("*.jsonl") if p.name.startswith("samples_") or p.name == "train.jsonl"]
    assert len(prompts) == 3  # the base's and round 0's evals, round 0's training set
    for path in prompts:
        assert "[cot]" in path.read_text() and "[pot]" not in path.read_text(), path  # no PoT offered anywhere
