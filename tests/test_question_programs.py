"""distill.question_check program: the writer's reply parser, the grounding test, and the question and label
stages on the real round code (a tiny student, the fake teacher, the real sandbox)."""
from __future__ import annotations

import json

import pytest
from rich.console import Console

from tests.conftest import DATA, EASY, toolkit, write_tiny_recipe
from tests.fault_teacher import FaultTeacher
from toolkit.core.recipe import load_recipe
from toolkit.data.hygiene import LeakageIndex
from toolkit.data.problems import Problem
from toolkit.data.question_programs import (harder_program_messages, parse_question_programs, stated_numbers,
                                            ungrounded_numbers)
from toolkit.pipeline import fdd
from toolkit.pipeline.context import RunContext
from toolkit.sandbox.runner import confinement_problem

SEEDS = [Problem(f"e{i}", q, str(a), "easy") for i, (q, a) in enumerate(EASY[:4])]

REPLY = """Here are the problems.

Problem 1: Tom has 12 apples and buys 3 bags with 4 apples in each bag. How many apples does he have now?
```python
apples = 12
bags = 3
per_bag = 4
answer = apples + bags * per_bag
```

**Problem 2:** A shop sells pens for 3 dollars each. It sells twice as many on Tuesday as on Monday. How much
money does it make on Tuesday?
```python
monday = 15
answer = monday * 2 * 3
```
Problem 3: Mia reads 20 pages a day. How many pages does she read in a week?
"""


def test_parser_pairs_each_question_with_the_program_after_it():
    pairs, malformed = parse_question_programs(REPLY, 5)
    assert [q for q, _ in pairs] == [
        "Tom has 12 apples and buys 3 bags with 4 apples in each bag. How many apples does he have now?",
        "A shop sells pens for 3 dollars each. It sells twice as many on Tuesday as on Monday. How much money "
        "does it make on Tuesday?"]
    assert pairs[0][1].endswith("answer = apples + bags * per_bag") and pairs[1][1].startswith("monday = 15")
    assert malformed == 1  # problem 3 came without a program
    assert parse_question_programs(REPLY, 1)[0] == pairs[:1]
    # The instruction's placeholder copied as written is a label too, not part of the question.
    copied = "Problem K: Ann has 3 red and 4 blue pens. How many pens does she have?\n```python\nanswer = 3 + 4\n```"
    assert parse_question_programs(copied, 1)[0][0][0] == "Ann has 3 red and 4 blue pens. How many pens does she have?"
    numbered = "\n".join(copied.replace("Problem K:", f"Problem K{i}:") for i in (1, 2))  # asked for several at once
    assert [q for q, _ in parse_question_programs(numbered, 2)[0]] == [
        "Ann has 3 red and 4 blue pens. How many pens does she have?"] * 2
    assert parse_question_programs(None, 2) == ([], 0) and parse_question_programs("```python\n", 2) == ([], 1)


def test_grounding_names_the_numbers_a_question_does_not_state():
    (q1, p1), (q2, p2) = parse_question_programs(REPLY, 5)[0]
    assert ungrounded_numbers(p1, q1) == []
    # "twice" states the 2; the 15 pens of Monday are the missing starting quantity FDD's writer left out.
    assert ungrounded_numbers(p2, q2) == ["15"]
    assert ungrounded_numbers("answer = 1e999", "How many are 5 and 6?") == ["(not a finite number)"]
    assert ungrounded_numbers("answer = (", "How many are 5 and 6?") == ["(not a finite number)"]
    question = "A coat costs $1,200 and is 25% off. Half a dozen hats cost 0.5 each. What is the total?"
    assert ungrounded_numbers("answer = 1200 * (1 - 25 / 100) + 12 / 2 * 0.5 + 0.25", question) == []
    assert ungrounded_numbers("answer = 1200 * 0.7", question) == ["0.7"]
    assert {1200, 25, 12, 2} <= stated_numbers(question)


def test_program_prompt_asks_for_a_program_per_problem():
    messages = harder_program_messages(SEEDS[0], 2)
    assert "variable named answer" in messages[-1]["content"] and SEEDS[0].question in messages[-1]["content"]
    # The worked example follows its own rule: every literal of its programs is stated in its question.
    for question, code in parse_question_programs(messages[2]["content"], 2)[0]:
        assert ungrounded_numbers(code, question) == []


needs_sandbox = pytest.mark.skipif(confinement_problem() is not None, reason="no bubblewrap sandbox here")


def _stages(tmp_path, tiny_model_dir, script: list[dict], *overrides: str):
    """Round 1's question and label stages for SEEDS (e0, e1 easy) with question_check program."""
    with FaultTeacher(tmp_path / "server.jsonl", script=script) as srv:
        recipe = load_recipe(write_tiny_recipe(tmp_path, tiny_model_dir, srv.base_url),
                             [f"data.root={DATA}", "distill.rounds=2", "distill.question_check=program",
                              "distill.label_solves=2", "distill.vote_min=2", *overrides])
        ctx = RunContext(recipe, Console(quiet=True))
        kept = fdd.new_questions(ctx, 1, SEEDS, ["e0", "e1"], known=SEEDS, leakage=LeakageIndex.from_suites(DATA))
        accepted, rows = fdd.pseudo_label(ctx, 1, kept)
    return ctx, kept, accepted, rows


@needs_sandbox
def test_question_check_keeps_grounded_questions_whose_vote_agrees(tmp_path, tiny_model_dir):
    bad = ("Problem 1: Sam has some marbles and buys 5 more. How many marbles does Sam have now?\n"
           "```python\nmarbles = 30\nanswer = marbles + 5\n```")
    crash = ("Problem 1: Ann has 9 cups and 4 plates. How many things does Ann have in all?\n"
             "```python\nanswer = 9 / 0 + 4\n```")
    liar = ("Problem 1: Ben has 7 cars and gets 8 more. How many cars does Ben have now?\n"
            "```python\ncars = 7\nmore = 8\nanswer = cars * more\n```")
    script = [{"match": SEEDS[1].question, "reply": bad}, {"match": SEEDS[2].question, "reply": crash},
              {"match": SEEDS[3].question, "reply": liar}]
    ctx, kept, accepted, rows = _stages(tmp_path, tiny_model_dir, script)
    rdir = ctx.run.round_dir(1)
    questions = ctx.run.manifest["stages"]["round-1/questions"]
    assert questions["question_check"] == "program"
    assert questions["ungrounded"] == 1 and questions["program_failed"] == 1
    # parsed counts every question read, before its program's tests, as the per-kind counts do.
    assert questions["parsed"] == sum(k["parsed"] for k in questions["kinds"].values()) == 4
    dropped = {json.loads(line)["reason"] for line in (rdir / "dropped_questions.jsonl").read_text().splitlines()}
    assert {"ungrounded", "program failed"} <= dropped
    # Seed e0's grounded question (fake writer) and Ben's (grounded, but its program multiplies) reach the vote.
    assert len(kept) == 2
    labels = ctx.run.manifest["stages"]["round-1/labels"]
    assert labels["program_rejected"] == 1 and labels["accepted"] == 1 == len(accepted)
    votes = {r["id"]: r for r in map(json.loads, (rdir / "votes.jsonl").read_text().splitlines())}
    ben = next(r for r in votes.values() if r["program_answer"] == "56")
    assert ben["answer"] == "15" and ben["program_agrees"] is False and not ben["accepted"]
    assert accepted[0].answer == votes[accepted[0].id]["program_answer"]
    assert rows and all(r["problem_id"] == accepted[0].id for r in rows)


@needs_sandbox
def test_question_check_replaces_label_checks_extra_program(tmp_path, tiny_model_dir):
    ctx, kept, accepted, _ = _stages(tmp_path, tiny_model_dir, [], "distill.label_check=pot")
    asked = [json.loads(line) for line in (tmp_path / "server.jsonl").read_text().splitlines()]
    # 4 writing requests and 2 solves per question: no extra PoT request, the writer's program is the check.
    assert len(asked) == 4 + 2 * len(kept) and kept and len(accepted) == len(kept)
    assert "check_requests" not in ctx.run.manifest["stages"]["round-1/labels"]


@needs_sandbox
def test_question_check_through_the_cli(tmp_path, tiny_model_dir):
    with FaultTeacher(tmp_path / "server.jsonl") as srv:
        recipe = write_tiny_recipe(tmp_path, tiny_model_dir, srv.base_url)
        r = toolkit("distill", str(recipe), f"data.root={DATA}", "distill.rounds=2", "distill.question_check=program",
                    "distill.label_solves=2", "distill.vote_min=2", "eval.base=false", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    run = tmp_path / "runs" / "tiny"
    manifest = json.loads((run / "manifest.json").read_text())
    questions, labels = manifest["stages"]["round-1/questions"], manifest["stages"]["round-1/labels"]
    assert questions["question_check"] == "program" and questions["kept"] > 0
    checks = [json.loads(line) for line in (run / "round-1" / "question_programs.jsonl").read_text().splitlines()]
    assert len(checks) == questions["parsed"] and all(c["program_answer"] for c in checks)
    votes = [json.loads(line) for line in (run / "round-1" / "votes.jsonl").read_text().splitlines()]
    assert all(v["accepted"] == bool(v["program_agrees"]) for v in votes) and labels["accepted"] > 0
    # The sandbox ran the writer's programs: the manifest says how.
    assert manifest["sandbox"]["confined"] is True
