"""bench/budget_control.py: the equal-teacher-budget control's size, and the pairing of two run folders."""
from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "budget_control.py"
IDS = [f"p{i}" for i in range(10)]


def _teacher(sent: int, cached: int, tokens: int) -> dict:
    return {"requests_sent": sent, "completion_tokens": tokens, "cached": {"requests": cached}}


def _run(root: Path, name: str, stages: dict, right: dict[str, list[bool]], heldout=IDS) -> Path:
    """A run folder as `toolkit distill` leaves it: manifest, held-out problems, each eval's per-sample file."""
    run = root / name
    rounds = {}
    for model, marks in right.items():
        folder = run / "eval-base" if model == "base" else run / model / "eval"
        folder.mkdir(parents=True)
        (folder / "samples_heldout.jsonl").write_text(
            "".join(json.dumps({"id": i, "strict_match": m}) + "\n" for i, m in zip(heldout, marks)))
        rounds[model] = {"n": len(marks), "strict_match": sum(marks) / len(marks), "problems": 6, "rationales": 9}
    (run / "heldout.jsonl").write_text("".join(json.dumps({"id": i, "question": "q", "answer": "1"}) + "\n"
                                               for i in heldout))
    recipe = {"distill": {"paths_per_problem": 2}, "data": {"train_size": 6}}
    (run / "manifest.json").write_text(json.dumps({"recipe": recipe, "stages": stages,
                                                   "summary": {"rounds": rounds}}))
    (run / "rounds.md").write_text(f"| model | held-out n |\n|---|---:|\n| {name} rounds |\n")
    return run


def _bc(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, cwd=ROOT)


def test_control_size_and_pairing(tmp_path):
    base = [False] * 10
    fdd = _run(tmp_path, "fdd", {
        "round-0/rationales": {"teacher": _teacher(10, 2, 500)},  # 12 requests: 6 problems x 2 paths
        "eval/base": {},
        "round-1/questions": {"teacher": _teacher(6, 0, 200)},
        "round-1/labels": {"teacher": _teacher(18, 0, 900)},
    }, {"base": base, "round-0": [True] * 3 + [False] * 7, "round-1": [True] * 6 + [False] * 4})
    # 36 requests over 2 per original problem: the control trains on 18 problems
    assert _bc("size", str(fdd)).stdout.strip() == "18"

    control = _run(tmp_path, "control", {"round-0/rationales": {"teacher": _teacher(36, 0, 1500)}},
                   {"base": base, "round-0": [False, True, True, True, True] + [False] * 5})
    out = tmp_path / "result"
    r = _bc("compare", str(fdd), str(control), "--out", str(out))
    assert r.returncode == 0, r.stderr
    result = json.loads((out / "comparison.json").read_text())
    spend = {m["model"]: (m["teacher_requests"], m["teacher_completion_tokens"]) for m in result["models"]}
    assert spend == {"fdd/base": (0, 0), "fdd/round-0": (12, 500), "fdd/round-1": (36, 1600),
                     "control/round-0": (36, 1500)}  # the control's base is the FDD run's: not repeated
    paired = {(p["model"], p["against"]): p for p in result["paired"]}
    last = paired[("fdd/round-1", "fdd/round-0")]
    assert (last["difference"], last["only_model"], last["only_against"]) == (0.3, 3, 0)
    vs_control = paired[("fdd/round-1", "control/round-0")]
    # control right on p1-p4, FDD round 1 on p0-p5: 2 right only in FDD's model, none only in the control
    assert (vs_control["only_model"], vs_control["only_against"]) == (2, 0)
    assert vs_control["difference"] == 0.2
    assert "fdd/round-1 | control/round-0 | +20.0" in (out / "comparison.md").read_text()
    rounds = (out / "rounds.md").read_text()  # the FDD run's own table, then every model against the control
    assert rounds.startswith((fdd / "rounds.md").read_text()) and "| control/round-0 | 10 | 40.0%" in rounds
    with gzip.open(out / "samples" / "control--round-0.jsonl.gz", "rt") as f:
        assert [json.loads(line)["id"] for line in f] == IDS


def test_refuses_runs_with_different_held_out_problems(tmp_path):
    fdd = _run(tmp_path, "fdd", {}, {"round-0": [True] * 10})
    other = _run(tmp_path, "other", {}, {"round-0": [True] * 10}, heldout=[f"q{i}" for i in range(10)])
    r = _bc("compare", str(fdd), str(other), "--out", str(tmp_path / "result"))
    assert r.returncode != 0 and "same held-out problems" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "result").exists()


def test_a_run_without_the_base_eval(tmp_path, tiny_model_dir):
    """eval.base false (the control's setting): no base eval stage or folder, round 0 alone in the summary and
    rounds.md, the dry run says so; the option changes the digest only when set, so older runs still resume."""
    from tests.conftest import DATA, toolkit, write_tiny_recipe
    from tests.fault_teacher import FaultTeacher
    from toolkit.core.recipe import load_recipe

    with FaultTeacher(tmp_path / "server.jsonl") as srv:
        recipe = write_tiny_recipe(tmp_path, tiny_model_dir, srv.base_url)
        plan = toolkit("distill", str(recipe), f"data.root={DATA}", "eval.base=false", "--dry-run", cwd=tmp_path)
        assert plan.returncode == 0, plan.stderr
        assert "distilled (not the base) student" in plan.stdout
        r = toolkit("distill", str(recipe), f"data.root={DATA}", "eval.base=false", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    run = tmp_path / "runs" / "tiny"
    manifest = json.loads((run / "manifest.json").read_text())
    assert list(manifest["summary"]["rounds"]) == ["round-0"]
    assert "eval/base" not in manifest["stages"] and "round-0/eval" in manifest["stages"]
    assert not (run / "eval-base").exists()
    assert "| round-0 |" in (run / "rounds.md").read_text() and "| base |" not in (run / "rounds.md").read_text()
    default = load_recipe(recipe).digest()
    assert load_recipe(recipe, ["eval.base=true"]).digest() == default
    assert load_recipe(recipe, ["eval.base=false"]).digest() != default
