"""`toolkit init`: a starter recipe from your own problems and teacher, then `toolkit distill` on it, through the real
CLI; bad problem files are one line naming the file, the line and the fix."""
from __future__ import annotations

import json

import pytest

from tests.conftest import ROOT, one_line_error, toolkit
from tests.fault_teacher import FaultTeacher
from toolkit.core.recipe import load_recipe
from toolkit.pipeline.distill import select_problems
from toolkit.pipeline.starter import starter_text

PROBLEMS = ROOT / "recipes" / "data" / "own-problems.jsonl"
OWN_DATA = ROOT / "recipes" / "own-data.yaml"


def test_init_then_distill_on_your_own_problems_and_teacher(tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.setenv("OWN_TEACHER_KEY", "sk-own-test-key")
    with FaultTeacher(tmp_path / "teacher.jsonl", api_key_env="OWN_TEACHER_KEY") as srv:
        init = toolkit("init", str(PROBLEMS), "--question-field", "problem", "--teacher-url", srv.base_url,
                       "--teacher-model", "my-teacher", "--api-key-env", "OWN_TEACHER_KEY",
                       "--student", str(tiny_model_dir), "--name", "mine", "--out", "mine.yaml", cwd=tmp_path)
        assert init.returncode == 0, init.stderr
        text = (tmp_path / "mine.yaml").read_text()
        assert "sk-own-test-key" not in text and "api_key_env: OWN_TEACHER_KEY" in text and "# " in text
        run = toolkit("distill", "mine.yaml", "train.max_steps=2", "train.batch_size=2", "train.seq_len=256",
                      "train.threads=1", "teacher.max_tokens=48", "eval.max_new_tokens=8", "eval.batch_size=4",
                      "eval.base=false", cwd=tmp_path, timeout=300)
        assert run.returncode == 0, run.stderr[-3000:]
        rows = srv.rows()
    manifest = json.loads((tmp_path / "runs" / "mine" / "manifest.json").read_text())
    stages = manifest["stages"]
    assert stages["data"]["train"] == 16 and stages["data"]["heldout"] == 4  # 20 problems, a fifth held out
    assert stages["round-0/rationales"]["requested"] == 32 and stages["round-0/rationales"]["kept"] >= 16
    assert stages["round-0/train"]["steps"] == 2 and "round-0/eval" in stages
    assert len(rows) == 32 and all(r["auth"] is True for r in rows)
    ids = {json.loads(x)["id"] for x in (tmp_path / "runs" / "mine" / "heldout.jsonl").read_text().splitlines()}
    assert len(ids) == 4 and all(i.startswith("own-problems-p") for i in ids)
    # An existing recipe is never overwritten by accident.
    again = toolkit("init", str(PROBLEMS), "--question-field", "problem", "--out", "mine.yaml", cwd=tmp_path)
    one_line_error(again, "mine.yaml exists", "--force")


def test_the_shipped_own_data_recipe_is_what_init_writes():
    assert OWN_DATA.read_text() == starter_text(PROBLEMS, OWN_DATA, question_field="problem", name="own-data")
    recipe = load_recipe(OWN_DATA)
    train, heldout = select_problems(recipe)
    assert (len(train), len(heldout)) == (16, 4) and recipe.teacher.backend == "llama.cpp"


@pytest.mark.parametrize("line, needles", [
    ('{"id": "x", "problem": "How many?", "answer": "seven"}',
     ["bad.jsonl:2: answer 'seven' has no number", "write the final answer as a number"]),
    ('{"id": "x", "problem": "How many?"}',
     ["bad.jsonl:2: missing or empty field 'answer' (fields here: id, problem)", "--answer-field",
      "data.train.answer_field"]),
    ('{"id": "p1", "problem": "How many?", "answer": 3}',
     ["bad.jsonl:2: duplicate problem id 'bad-p1' (first at ", "bad.jsonl:1)", "give each problem its own id"]),
])
def test_a_bad_problem_file_is_one_line_with_file_line_and_fix(tmp_path, line, needles):
    good = '{"id": "p1", "problem": "What is 2 plus 3?", "answer": 5}'
    (tmp_path / "bad.jsonl").write_text(f"{good}\n{line}\n")
    r = toolkit("init", "bad.jsonl", "--question-field", "problem", "--out", "r.yaml", cwd=tmp_path)
    one_line_error(r, *needles)
    assert not (tmp_path / "r.yaml").exists()


def test_a_csv_with_a_repeated_id_names_its_line(tmp_path):
    (tmp_path / "p.csv").write_text("id,q,a\n1,What is 1 plus 1?,2\n2,What is 2 plus 2?,4\n1,What is 3 plus 3?,6\n")
    one_line_error(toolkit("init", "p.csv", "--question-field", "q", "--answer-field", "a", cwd=tmp_path),
                   "p.csv:4: duplicate problem id 'p-1' (first at ", "p.csv:2)")
