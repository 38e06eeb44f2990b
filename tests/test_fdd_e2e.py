"""FDD end to end: two rounds against a real llama.cpp teacher, and kill -9 at several moments."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from tests.conftest import DATA, kill_when, toolkit, write_tiny_recipe

TWO_ROUNDS = [f"data.root={DATA}", "distill.rounds=2", "distill.new_per_problem=2", "distill.label_solves=2", "distill.vote_min=1",
              "teacher.max_tokens=48", "distill.question_max_tokens=96"]


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.slow
def test_rounds_grow_the_data_and_report_each_round(tmp_path, tiny_model_dir, teacher_server):
    """Two rounds, then the same recipe with a third: the finished run goes on (raising distill.rounds alone
    changes nothing already done), and a recipe with fewer rounds than the run has is refused."""
    recipe = write_tiny_recipe(tmp_path, tiny_model_dir, teacher_server.base_url)
    first = toolkit("distill", str(recipe), *TWO_ROUNDS, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    run = tmp_path / "runs" / "tiny"
    before = json.loads((run / "manifest.json").read_text())["stages"]
    r = toolkit("distill", str(recipe), *TWO_ROUNDS, "distill.rounds=3", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    manifest = json.loads((run / "manifest.json").read_text())
    stages = manifest["stages"]
    assert {name: stages[name] for name in before} == before  # rounds 0 and 1 untouched
    assert [e["change"] for e in manifest["extended"]] == ["distill.rounds 2 -> 3"]
    assert manifest["recipe"]["distill"]["rounds"] == 3
    fewer = toolkit("distill", str(recipe), *TWO_ROUNDS, cwd=tmp_path)
    assert fewer.returncode == 2 and "different recipe" in fewer.stderr
    later = [f"round-{k}/{s}" for k in (1, 2) for s in ("feedback", "questions", "labels", "train", "eval")]
    assert list(stages) == ["data", "round-0/rationales", "eval/base", "round-0/train", "round-0/eval", *later]
    # Round 2 asks the same seed problems again: it must get fresh problems, not round 1's cached ones.
    q2 = stages["round-2/questions"]
    assert q2["teacher_requests_sent"] == q2["requests"] >= 6
    fb = stages["round-1/feedback"]
    assert fb["easy"] + fb["hard"] == 6  # every seed training problem got a verdict
    q = stages["round-1/questions"]
    assert q["requests"] == 6
    assert q["parsed"] == q["kept"] + q["duplicates"] + q["leaked"]
    assert q["leakage"]["suites"] and q["leakage"]["checked"] == q["parsed"] - q["duplicates"]
    labels = stages["round-1/labels"]
    assert labels["questions"] == q["kept"] and labels["accepted"] + labels["rejected"] == q["kept"]
    generated = _rows(run / "round-1" / "generated.jsonl")
    assert len(generated) == labels["accepted"]
    assert all(g["origin"].startswith(("harder-of:", "similar-of:")) and g["origin"].endswith("@round-1")
               and g["answer"] for g in generated)
    # Each round trains on everything so far, from the base checkpoint.
    r0 = _rows(run / "round-0" / "train.jsonl")
    r1 = _rows(run / "round-1" / "train.jsonl")
    r2 = _rows(run / "round-2" / "train.jsonl")
    assert r1[: len(r0)] == r0 and len(r1) == len(r0) + labels["new_rationales"]
    assert r2[: len(r1)] == r1 and len(r2) == len(r1) + stages["round-2/labels"]["new_rationales"]
    assert stages["round-1/train"]["examples"] == len(r1) and stages["round-2/train"]["examples"] == len(r2)
    rounds = json.loads((run / "rounds.json").read_text())
    assert [x["model"] for x in rounds] == ["base", "round-0", "round-1", "round-2"]
    assert all(0 <= x["strict_ci95"][0] <= x["strict_match"] <= x["strict_ci95"][1] <= 1 for x in rounds)
    # Each round is paired with round 0 and with the round before, on the same held-out problems.
    pairs = [(x["model"], c["against"], c["n"]) for x in rounds for c in x["paired"]]
    n = rounds[0]["n"]
    assert pairs == [("round-0", "base", n), ("round-1", "round-0", n), ("round-2", "round-0", n),
                     ("round-2", "round-1", n)]
    md = (run / "rounds.md").read_text().splitlines()
    assert len(md) == 15
    assert [line.split(" | ")[0] for line in md[2:6]] == ["| base", "| round-0", "| round-1", "| round-2"]
    assert [line.split(" | ")[:3] for line in md[-4:]] == [[f"| {m}", a, str(k)] for m, a, k in pairs]
    assert (run / "accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _served(server) -> int:
    return server.requests_served()


@pytest.mark.slow
def test_kill_9_at_several_moments_then_resume(tmp_path, tiny_model_dir, teacher_server):
    """Killed during teacher calls, training, student generation (round-0 eval, feedback) and question
    labelling, the run resumes to the same data.

    A request in flight at the moment of a kill never reaches the cache, so it may be paid twice:
    at most one per kill with one request in flight; every completed request is never repeated.
    """
    # Reference: an uninterrupted run in its own folder and cache.
    ref_dir = tmp_path / "ref"
    ref_dir.mkdir()
    env_cache = os.environ["TOOLKIT_CACHE"]
    os.environ["TOOLKIT_CACHE"] = str(tmp_path / "ref-cache")
    try:
        before = _served(teacher_server)
        ref = toolkit("distill", str(write_tiny_recipe(ref_dir, tiny_model_dir, teacher_server.base_url)),
                      *TWO_ROUNDS, "seed=7", cwd=ref_dir)
        assert ref.returncode == 0, ref.stderr
        uninterrupted = _served(teacher_server) - before
    finally:
        os.environ["TOOLKIT_CACHE"] = env_cache

    work = tmp_path / "killed"
    work.mkdir()
    os.environ["TOOLKIT_CACHE"] = str(tmp_path / "killed-cache")
    try:
        recipe = write_tiny_recipe(work, tiny_model_dir, teacher_server.base_url)
        cmd = [sys.executable, "-m", "toolkit.cli", "distill", str(recipe), *TWO_ROUNDS, "seed=7"]
        manifest = work / "runs" / "tiny" / "manifest.json"

        def stages() -> dict:
            try:
                return json.loads(manifest.read_text())["stages"]
            except (OSError, ValueError):
                return {}

        start = _served(teacher_server)
        kill_when(cmd, work, lambda: _served(teacher_server) - start >= 3)  # amid round-0 rationales
        kill_when(cmd, work, lambda: "eval/base" in stages())  # the base eval done, training under way
        kill_when(cmd, work, lambda: "round-0/train" in stages())  # the student generating its eval answers
        kill_when(cmd, work, lambda: "round-0/eval" in stages())  # the student answering for feedback
        kill_when(cmd, work, lambda: "round-1/questions" in stages())  # labelling under way
        for path in (work / "runs").rglob("*.json*"):  # every visible file is whole
            if not path.name.startswith("."):
                text = path.read_text()
                json.loads(text) if path.suffix == ".json" else [json.loads(x) for x in text.splitlines()]
        done = toolkit(*cmd[3:], cwd=work)
        assert done.returncode == 0, done.stderr
        assert not list((work / "runs").rglob("*.tmp"))  # the resumed run swept what the kills left
        killed_total = _served(teacher_server) - start
    finally:
        os.environ["TOOLKIT_CACHE"] = env_cache

    assert uninterrupted <= killed_total <= uninterrupted + 3
    for rel in ("round-0/train.jsonl", "round-0/eval/samples_heldout.jsonl", "round-1/feedback.jsonl",
                "round-1/questions.jsonl", "round-1/generated.jsonl", "round-1/train.jsonl"):
        assert (work / "runs/tiny" / rel).read_text() == (ref_dir / "runs/tiny" / rel).read_text(), rel
