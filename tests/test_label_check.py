"""Cross-strategy labels (distill.label_check pot, issue 17): a generated question is kept only when the teacher's
PoT program, run in the real sandbox, agrees with the CoT majority. The labelling stage against scripted teacher
replies, the recipe checks, and a tiny FDD run through the real CLI."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from rich.console import Console

from tests.conftest import DATA, DEAD, one_line_error, toolkit, write_tiny_recipe
from tests.fault_teacher import FaultTeacher, solve
from tests.test_eval_backend import BEFORE_BACKEND, at_release
from tests.test_sandbox import _one_line_refusal
from toolkit.core.recipe import load_recipe
from toolkit.data.problems import Problem
from toolkit.pipeline import fdd
from toolkit.pipeline.context import RunContext

KEEP = Problem("r1-a-0", "Ada packs 5 boxes and 3 crates. How many in all?", "", "generated", "similar-of:a@round-1")
DROP = Problem("r1-b-0", "Bo packs 5 boxes and 4 crates. How many in all?", "", "generated", "similar-of:b@round-1")
CRASH = Problem("r1-c-0", "Cy packs 6 boxes and 2 crates. How many in all?", "", "generated", "similar-of:c@round-1")
NO_VOTE = Problem("r1-d-0", "Di packs 7 boxes. How many in all?", "", "generated", "similar-of:d@round-1")
SPLIT = Problem("r1-e-0", "Ed packs 2 boxes and 6 crates. How many in all?", "", "generated", "similar-of:e@round-1")


def _rule(q: Problem, strategy: str, reply: str, **more) -> dict:
    return {"match": q.question, "strategy": strategy, "reply": reply, **more}


def _program(expr: str) -> str:
    return f"```python\nanswer = {expr}\n```"


# Every CoT solve of these says 8 (NO_VOTE's say nothing a vote can count); their PoT programs give 8, 9, a
# ZeroDivisionError, and for SPLIT 8 with sample seed 0 and 9 with seed 1.
SCRIPT = [*(_rule(q, "cot", "They pack 8 things.\nThe answer is 8.") for q in (KEEP, DROP, CRASH, SPLIT)),
          _rule(NO_VOTE, "cot", "I cannot tell."),
          _rule(KEEP, "pot", _program("5 + 3")), _rule(DROP, "pot", _program("5 + 4")),
          _rule(CRASH, "pot", _program("8 / 0")),
          _rule(SPLIT, "pot", _program("2 + 6"), seed=0), _rule(SPLIT, "pot", _program("2 + 7"), seed=1)]


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _label(tmp_path, tiny_model_dir, questions: list[Problem], overrides: list[str]) -> tuple[dict, dict, int]:
    """Round 1's labelling stage for `questions` against the scripted teacher: (votes.jsonl rows by id, the stage's
    manifest entry, requests the teacher answered); run twice, the second time from the stage's cache."""
    with FaultTeacher(tmp_path / "server.jsonl", script=SCRIPT) as srv:
        recipe = load_recipe(write_tiny_recipe(tmp_path, tiny_model_dir, srv.base_url),
                             [f"data.root={DATA}", "distill.rounds=2", "distill.label_check=pot", *overrides])
        ctx = RunContext(recipe, Console(quiet=True))
        accepted, rows = fdd.pseudo_label(ctx, 1, questions)
        answered = len(srv.rows())
        # A resumed run reads the finished stage back and asks the teacher nothing.
        again = fdd.pseudo_label(RunContext(recipe, Console(quiet=True)), 1, questions)
        assert again == (accepted, rows) and len(srv.rows()) == answered
    rdir = tmp_path / "runs" / "tiny" / "round-1"
    assert [p.id for p in accepted] == [r["id"] for r in _rows(rdir / "votes.jsonl") if r["accepted"]]
    assert rows == _rows(rdir / "new_train.jsonl")
    return {r["id"]: r for r in _rows(rdir / "votes.jsonl")}, ctx.run.manifest["stages"]["round-1/labels"], answered


@pytest.mark.parametrize("pot_answers, label, agrees", [
    (["8"], "8", True), (["9"], "8", False), ([None], "8", False),  # a failed program counts against
    ([], "8", False),                                                # no program never agrees
    (["8", "8.0"], "8", True), (["8", "9"], "8", False),             # a strict majority: of two, both
    (["8", None, "8"], "8", True), (["8", None, "9"], "8", False),
])
def test_pot_agrees_is_a_strict_majority(pot_answers, label, agrees):
    assert fdd.pot_agrees(pot_answers, label) is agrees


def test_cot_only_recipe_asks_one_program_per_voted_question(tmp_path, tiny_model_dir):
    """Strategies [cot]: 2 CoT solves vote; each question that passed gets one extra PoT request, and is kept
    only when its program gives the vote's answer. The program never becomes a training row."""
    votes, stage, answered = _label(tmp_path, tiny_model_dir, [KEEP, DROP, CRASH, NO_VOTE],
                                    ["distill.label_solves=2", "distill.vote_min=2"])
    assert answered == 4 * 2 + 3  # NO_VOTE's vote failed: no program was asked for it
    assert {i: (v["answer"], v["pot_answers"], v["check_passed"], v["accepted"]) for i, v in votes.items()} == {
        KEEP.id: ("8", ["8"], True, True), DROP.id: ("8", ["9"], False, False),
        CRASH.id: ("8", [None], False, False), NO_VOTE.id: (None, [], None, False)}
    assert votes[KEEP.id]["strategies"] == ["cot", "cot", "pot"] and votes[KEEP.id]["votes"] == 2
    assert {k: stage[k] for k in ("questions", "accepted", "rejected", "check_rejected", "check_requests",
                                  "new_rationales")} == {"questions": 4, "accepted": 1, "rejected": 3,
                                                         "check_rejected": 2, "check_requests": 3,
                                                         "new_rationales": 2}
    assert stage["label_check"] == "pot" and stage["teacher"]["answered"] == answered
    train = _rows(tmp_path / "runs" / "tiny" / "round-1" / "new_train.jsonl")
    assert [(r["problem_id"], r["strategy"]) for r in train] == [(KEEP.id, "cot")] * 2
    generated = _rows(tmp_path / "runs" / "tiny" / "round-1" / "generated.jsonl")
    assert [(g["id"], g["answer"]) for g in generated] == [(KEEP.id, "8")]


def test_pot_strategy_checks_with_its_own_solves(tmp_path, tiny_model_dir):
    """Strategies [cot, pot], 4 solves: 2 CoT vote, 2 PoT check (no extra request); SPLIT's programs give 8 and
    9, not a strict majority, so it is dropped although 3 of its 4 solves say 8. Agreeing programs train."""
    votes, stage, answered = _label(tmp_path, tiny_model_dir, [KEEP, SPLIT],
                                    ["distill.strategies=[cot, pot]", "distill.label_solves=4"])
    assert answered == 2 * 4 and stage["check_requests"] == 0
    keep, split = votes[KEEP.id], votes[SPLIT.id]
    assert keep["strategies"] == split["strategies"] == ["cot", "cot", "pot", "pot"]
    assert (keep["votes"], keep["agreement"], keep["pot_answers"], keep["check_passed"]) == (2, 1.0, ["8", "8"], True)
    assert (split["votes"], split["pot_answers"], split["check_passed"], split["accepted"]) == (2, ["8", "9"], False,
                                                                                                False)
    assert (stage["accepted"], stage["check_rejected"]) == (1, 1)
    train = _rows(tmp_path / "runs" / "tiny" / "round-1" / "new_train.jsonl")
    assert [r["strategy"] for r in train] == ["cot", "cot", "pot", "pot"]
    assert all(r["problem_id"] == KEEP.id for r in train)
    assert train[2]["completion"] == "[pot]\n" + _program("5 + 3")


@pytest.mark.parametrize("overrides, needle", [
    (["distill.strategies=[pot]"], "label_check pot checks PoT programs against the CoT / L2M majority"),
    # cot gets 1 of 2 solves (pot the other): vote_min 2 is out of reach.
    (["distill.strategies=[cot, pot]", "distill.label_solves=2"], "vote_min 2 can never be reached"),
    (["distill.label_check=cot"], "distill.label_check"),
])
def test_nonsense_label_checks_stop_with_one_line(tmp_path, tiny_model_dir, overrides, needle):
    recipe = write_tiny_recipe(tmp_path, tiny_model_dir, DEAD)
    one_line_error(toolkit("distill", str(recipe), "distill.label_check=pot", *overrides, cwd=tmp_path,
                           timeout=120), needle)


def test_label_check_changes_the_digest_only_when_set():
    for name, digest in BEFORE_BACKEND.items():
        assert at_release(name).digest() == digest  # runs made before the option still resume
        assert at_release(name, "distill.label_check=none").digest() == digest
        assert at_release(name, "distill.label_check=pot").digest() != digest


def test_label_check_without_a_sandbox_is_refused_before_any_work(no_bwrap, tmp_path, tiny_model_dir):  # noqa: F811
    """PoT programs run even when pot is not a strategy: the sandbox is checked before the run folder exists."""
    recipe = write_tiny_recipe(tmp_path, tiny_model_dir, DEAD)
    r = toolkit("distill", str(recipe), "distill.label_check=pot", cwd=tmp_path, timeout=120)
    assert r.returncode == 2, r.stderr
    _one_line_refusal(r.stderr)
    assert not (tmp_path / "runs").exists()


def test_fdd_run_with_label_check_end_to_end(tmp_path, tiny_model_dir):
    """Two FDD rounds through the real CLI; the fake teacher's programs are right except for questions that give
    things away, so exactly those are rejected by the check, and every kept label is the right answer."""
    script = [{"match": "gives away", "strategy": "pot", "reply": _program("0")}]
    with FaultTeacher(tmp_path / "server.jsonl", script=script, pot_programs=True) as srv:
        recipe = write_tiny_recipe(tmp_path, tiny_model_dir, srv.base_url)
        r = toolkit("distill", str(recipe), f"data.root={DATA}", "distill.rounds=2", "distill.new_per_problem=2",
                    "distill.label_check=pot", "eval.max_new_tokens=8", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    run = tmp_path / "runs" / "tiny"
    stages = json.loads((run / "manifest.json").read_text())["stages"]
    labels = stages["round-1/labels"]
    votes = _rows(run / "round-1" / "votes.jsonl")
    questions = {q["id"]: q["question"] for q in _rows(run / "round-1" / "questions.jsonl")}
    assert len(votes) == labels["questions"] == len(questions) > 0
    given = [v for v in votes if "gives away" in questions[v["id"]]]
    assert given and len(given) < len(votes)  # both kinds of question, so the check has something to split
    for v in votes:  # 4 CoT solves (the fake's seed 3 is wrong): 3 of 4 pass the vote, then one program each
        assert v["strategies"] == ["cot"] * 4 + ["pot"] and v["answer"] == str(solve(questions[v["id"]]))
        assert v["check_passed"] is v["accepted"] is (v not in given)
        assert v["pot_answers"] == ["0" if v in given else v["answer"]]
    assert (labels["check_requests"], labels["check_rejected"], labels["rejected"]) == (len(votes), len(given),
                                                                                        len(given))
    generated = _rows(run / "round-1" / "generated.jsonl")
    assert [g["id"] for g in generated] == [v["id"] for v in votes if v["accepted"]]
    train = _rows(run / "round-1" / "new_train.jsonl")
    assert {t["strategy"] for t in train} == {"cot"} and len(train) == labels["new_rationales"] == 3 * len(generated)
    assert stages["round-1/train"]["examples"] == len(_rows(run / "round-0" / "train.jsonl")) + len(train)
