"""distill.round_source: later rounds spent on unused original problems (feedback-selected), `auto` falling back
to generated questions once they run out, and the planner's note, through the real CLI with the fake teacher."""
from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import DATA, toolkit, write_jsonl, write_tiny_recipe
from tests.fault_teacher import FaultTeacher
from toolkit.core.recipe import load_recipe
from toolkit.data.problems import Problem
from toolkit.pipeline.distill import select_problems, unused_originals
from toolkit.pipeline.fdd import round_source, wrong_first

# Ten problems: round 0 takes 4, 2 are held out, 4 stay unused.
PROBLEMS = [{"id": f"p{i}", "question": f"What is {i + 2} plus {i + 3}?", "answer": 2 * i + 5} for i in range(10)]


def _recipe(tmp_path: Path, base_url: str, tiny_model_dir: Path) -> Path:
    recipe = write_tiny_recipe(tmp_path, tiny_model_dir, base_url)
    write_jsonl(tmp_path / "easy.jsonl", PROBLEMS)
    recipe.write_text(recipe.read_text().replace("train_size: 6", "train_size: 4"))
    return recipe


def _flat(text: str) -> str:
    """A rich table's text as one line: its borders dropped, wrapped cells joined."""
    return " ".join(text.replace("│", " ").split())


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_unused_originals_are_the_seeded_rest_a_larger_train_size_takes_first(tmp_path, tiny_model_dir):
    recipe = load_recipe(_recipe(tmp_path, "http://127.0.0.1:9", tiny_model_dir))
    train, heldout = select_problems(recipe)
    unused = unused_originals(recipe)
    assert len(train) == 4 and len(heldout) == 2 and len(unused) == 4
    assert {p.id for p in train + heldout + unused} == {f"easy-{p['id']}" for p in PROBLEMS}
    # The equal-budget control (a larger train_size) takes the same problems in the same order.
    bigger = recipe.model_copy(update={"data": recipe.data.model_copy(update={"train_size": 8})})
    assert select_problems(bigger)[0] == train + unused and select_problems(bigger)[1] == heldout


def test_wrong_first_and_auto():
    probs = [Problem(f"q{i}", "?", "1", "s") for i in range(5)]
    assert [p.id for p in wrong_first(probs, {"q3", "q1"}, 3)] == ["q1", "q3", "q0"]
    assert [p.id for p in wrong_first(probs, set(), 2)] == ["q0", "q1"]
    assert round_source("auto", 3) == "originals" and round_source("auto", 0) == "generated"
    assert round_source("generated", 3) == "generated" and round_source("originals", 3) == "originals"


def test_auto_spends_rounds_on_unused_originals_then_writes_questions(tmp_path, tiny_model_dir):
    with FaultTeacher(tmp_path / "server.jsonl") as srv:
        recipe = _recipe(tmp_path, srv.base_url, tiny_model_dir)
        args = [f"data.root={DATA}", "distill.rounds=4", "distill.round_source=auto", "distill.originals_per_round=3",
                "distill.originals_pick=wrong_first", "distill.label_solves=2", "distill.vote_min=1", "eval.base=false"]
        r = toolkit("distill", str(recipe), *args, cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        answered = sum(srv.answered().values())
    run = tmp_path / "runs" / "tiny"
    stages = json.loads((run / "manifest.json").read_text())["stages"]
    # Rounds 1 and 2 take originals (3, then the last 1), round 3 has none left and writes questions.
    assert [s for s in stages if s.startswith("round-")] == [
        "round-0/rationales", "round-0/train", "round-0/eval",
        "round-1/select", "round-1/rationales", "round-1/train", "round-1/eval",
        "round-2/select", "round-2/rationales", "round-2/train", "round-2/eval",
        "round-3/feedback", "round-3/questions", "round-3/labels", "round-3/train", "round-3/eval"]
    assert stages["round-1/select"]["easy"] + stages["round-1/select"]["hard"] == 4  # the 4 unused, all candidates
    assert stages["round-2/select"]["easy"] + stages["round-2/select"]["hard"] == 1
    # 2 paths for each problem a round takes: its teacher requests are recorded like round 0's.
    assert stages["round-1/rationales"]["requested"] == 6 and stages["round-2/rationales"]["requested"] == 2
    selected = _rows(run / "round-1" / "select.jsonl")
    wrong = [r["id"] for r in selected if r["label"] == "hard"]
    right = [r["id"] for r in selected if r["label"] == "easy"]
    taken = {r["problem_id"] for r in _rows(run / "round-1" / "new_train.jsonl")}
    assert taken <= set((wrong + right)[:3])
    r0, r1 = _rows(run / "round-0" / "train.jsonl"), _rows(run / "round-1" / "train.jsonl")
    assert r1[:len(r0)] == r0 and len(r1) == len(r0) + len(_rows(run / "round-1" / "new_train.jsonl"))
    heldout = {p["id"] for p in _rows(run / "heldout.jsonl")}
    assert not heldout & {r["problem_id"] for r in r1}  # never a held-out problem
    round_2 = {r["problem_id"] for r in _rows(run / "round-2" / "new_train.jsonl")}
    assert not round_2 & taken
    # Round 0's 8, rounds 1 and 2's 6 + 2, then round 3's question writing and labels.
    assert answered > 8 + 6 + 2


def test_dry_run_says_when_a_generated_round_leaves_originals_unused(tmp_path, tiny_model_dir):
    recipe = _recipe(tmp_path, "http://127.0.0.1:9", tiny_model_dir)
    r = toolkit("distill", str(recipe), f"data.root={DATA}", "distill.rounds=2", "--dry-run", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "NOTE: 4 original problems with gold answers stay unused" in _flat(r.stdout)
    assert "fdd-cpu-powered" in r.stdout
    # The run itself says so in its opening lines (it stops at the unreachable teacher right after).
    r = toolkit("distill", str(recipe), f"data.root={DATA}", "distill.rounds=2", cwd=tmp_path)
    assert "note: rounds 1-1 write new questions while 4 original problems" in _flat(r.stdout)
    r = toolkit("distill", str(recipe), f"data.root={DATA}", "distill.rounds=2", "distill.round_source=auto",
                "--dry-run", cwd=tmp_path)
    assert r.returncode == 0 and "NOTE" not in r.stdout
    assert "of the 4 unused original problems, in seeded order" in _flat(r.stdout)
    r = toolkit("distill", str(recipe), f"data.root={DATA}", "distill.rounds=2", "distill.round_source=auto",
                "distill.originals_pick=wrong_first", "--dry-run", cwd=tmp_path)
    assert "of the 4 unused original problems, those the student gets wrong first" in _flat(r.stdout)


def test_seeded_pick_takes_the_next_unused_originals_without_asking_the_student(tmp_path, tiny_model_dir):
    with FaultTeacher(tmp_path / "server.jsonl") as srv:
        recipe = _recipe(tmp_path, srv.base_url, tiny_model_dir)
        r = toolkit("distill", str(recipe), f"data.root={DATA}", "distill.rounds=2", "distill.round_source=originals",
                    "distill.originals_per_round=3", "eval.base=false", cwd=tmp_path)
        assert r.returncode == 0, r.stderr
    run = tmp_path / "runs" / "tiny"
    stages = json.loads((run / "manifest.json").read_text())["stages"]
    assert "round-1/select" not in stages and stages["round-1/rationales"]["requested"] == 6
    # the same 3 a train_size larger by 3 would take: the first of the unused originals in seeded order
    want = {p.id for p in unused_originals(load_recipe(recipe))[:3]}
    assert {r["problem_id"] for r in _rows(run / "round-1" / "new_train.jsonl")} <= want
    assert "the next 3 unused original problems in seeded order" in r.stdout
