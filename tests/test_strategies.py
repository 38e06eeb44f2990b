"""Strategies: parsers on real teacher replies, PoT answers from the sandbox, tags, prompts, mixing and the schema."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from toolkit.core.errors import RecipeError
from toolkit.core.recipe import load_recipe
from toolkit.pipeline.siked import mix, score_samples
from toolkit.data.strategies import (TAGS, clean_solution, eval_prompt, extract_program, final_answer, final_answers,
                                split_tag, strategy_stats, teacher_messages, training_completion, training_prompt)
from toolkit.data.problems import Problem

from tests.test_recipe import MINIMAL

REAL = Path(__file__).parent / "data" / "real_strategy_outputs.jsonl"
ROWS = [json.loads(line) for line in REAL.read_text().splitlines()] if REAL.is_file() else []


@pytest.mark.parametrize("row", ROWS, ids=[f"{r['strategy']}-{i}" for i, r in enumerate(ROWS)])
def test_parsers_on_real_teacher_replies(row):
    """Each saved Qwen2.5-Coder-0.5B reply parses to the validity and answer reviewed by hand."""
    cleaned = clean_solution(row["strategy"], row["output"])
    assert (cleaned is not None) == row["valid"]
    if cleaned is not None:
        assert final_answer(row["strategy"], cleaned)[1] == row["answer"]
        # The cleaned form is what the student learns; read back through its tag it gives the same answer.
        assert final_answer("auto", training_completion(row["strategy"], cleaned, ["cot", "l2m", "pot"])) == \
            (row["strategy"], row["answer"])


def test_real_replies_cover_both_strategies_and_both_outcomes():
    """Well-formed and malformed replies of both strategies, and a PoT answer that came from running
    the teacher's program (it printed the answer too, but only `answer` is read)."""
    for strategy in ("l2m", "pot"):
        mine = [r for r in ROWS if r["strategy"] == strategy]
        assert any(r["valid"] for r in mine) and any(not r["valid"] for r in mine), strategy
    assert any(r["strategy"] == "pot" and r["valid"] and r["answer"] for r in ROWS)


def test_pot_answers_come_from_running_the_program():
    code = "```python\napples = 3\nboxes = 4\nanswer = apples * boxes + 0.5 * 2\n```"
    assert final_answer("pot", code) == ("pot", "13")
    # A program that prints a wrong number but sets the right answer: only `answer` counts.
    assert final_answer("pot", "```python\nprint(99)\nanswer = 7\n```")[1] == "7"
    assert final_answer("pot", "```python\nanswer = 1/0\n```")[1] is None  # raises in the sandbox
    assert final_answer("pot", "```python\nwhile True:\n    pass\nanswer = 1\n```")[1] is None  # timeout
    assert final_answer("pot", "The answer is 5.")[1] is None  # no program at all


def test_extract_program_edge_cases():
    assert extract_program("```python\nx = 2\nanswer = x\n") == "x = 2\nanswer = x"  # cut by the token limit
    assert extract_program("x = 2\nanswer = x + 1") == "x = 2\nanswer = x + 1"  # no fence
    assert extract_program("```python\nanswer = (\n```") is None  # syntax error
    assert extract_program("```python\nresult = 4\n```") is None  # never sets answer
    two = "```python\nprint('hi')\n```\nThen:\n```python\nanswer = 3\n```"
    assert extract_program(two) == "answer = 3"  # the first block that sets answer


def test_tags_and_auto_reading():
    assert split_tag("  [pot]\n```python\nanswer = 1\n```") == ("pot", "```python\nanswer = 1\n```")
    assert split_tag("no tag here") == (None, "no tag here")
    assert final_answer("auto", "[l2m]\nSub-question 1: x?\nAnswer 1: 2 + 2 = 4.\nThe answer is 4.") == ("l2m", "4")
    assert final_answer("auto", "He has 5. The answer is 5.") == ("cot", "5")  # untagged reads as CoT
    got = final_answers("auto", ["[pot]\n```python\nanswer = 2 * 21\n```", "[cot]\nThe answer is 3.", "[pot]\nnope"])
    assert got == [("pot", "42"), ("cot", "3"), ("pot", None)]
    with pytest.raises(ValueError):
        final_answer("tot", "x")


def test_prompts():
    assert teacher_messages("Q?", "pot")[0]["content"].startswith("Solve the math word problem by writing")
    assert [m["role"] for m in teacher_messages("Q?", "l2m")] == ["system", "user", "assistant", "user",
                                                                 "assistant", "user"]
    # A CoT-only recipe keeps the plain prompt and untagged targets (the quickstart's meaning).
    assert training_prompt("Q?", ["cot"]) == eval_prompt("Q?", "cot")
    assert training_completion("cot", "The answer is 1.", ["cot"]) == "The answer is 1."
    assert training_completion("pot", "x", ["cot", "pot"]) == "[pot]\nx"
    forced = eval_prompt("Q?", "pot")
    assert forced[-1] == {"role": "assistant", "content": TAGS["pot"] + "\n"}
    assert eval_prompt("Q?", "auto") == training_prompt("Q?", ["cot", "l2m", "pot"])


def test_forced_tag_renders_as_the_start_of_the_assistant_turn(tiny_model_dir):
    """The forced prompt is the trained prompt plus the tag: the same tokens the student saw in training."""
    from transformers import AutoTokenizer

    from toolkit.data.prompt_rule import render
    from toolkit.eval.prompts import build_messages
    from toolkit.training.train import tokenize_example

    from toolkit.data.strategies import student_strategies

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    for strategies in (["cot", "l2m", "pot"], ["cot", "pot"]):
        with student_strategies(strategies):  # a run's stages evaluate with the recipe's strategies
            text, stops = render(tok, build_messages("What is 2 plus 3?", "pot"))
        assert stops == ()
        assert text.endswith("<|im_start|>assistant\n[pot]\n")
        ex = tokenize_example(tok, training_prompt("What is 2 plus 3?", strategies),
                              training_completion("pot", "```python\nanswer = 5\n```", strategies), 256)
        forced_ids = tok(text, add_special_tokens=False)["input_ids"]
        assert ex.input_ids[: len(forced_ids)] == forced_ids


def test_strategy_stats():
    stats = strategy_stats(["pot", "pot", "cot", "l2m"], [True, False, True, False])
    assert stats["pot"] == {"chosen": 2, "share": 0.5, "correct": 1, "accuracy": 0.5}
    assert stats["l2m"]["accuracy"] == 0.0 and stats["cot"]["accuracy"] == 1.0
    assert strategy_stats([], [])["cot"]["accuracy"] is None


def _rows(n: int, source: str, prefix: str = "p") -> list[dict]:
    return [{"problem_id": f"{prefix}{i}", "source": source} for i in range(n)]


def test_mixing_alpha_schedule_reaches_the_teacher_share():
    teacher, own = _rows(100, "teacher"), _rows(20, "self")
    rows, info = mix(teacher, own, "alpha_schedule", 0.8, seed=0)
    assert info == {"teacher_rows": 80, "self_rows": 20, "rows": 100, "teacher_share": 0.8}
    assert rows[80:] == own and all(r in teacher for r in rows[:80])
    assert mix(teacher, own, "alpha_schedule", 0.2, seed=0)[1]["teacher_rows"] == 5
    assert mix(teacher, own, "alpha_schedule", 0.99, seed=0)[1]["teacher_rows"] == 100  # capped at what there is
    assert mix(teacher, [], "alpha_schedule", 0.2, seed=0)[0] == teacher  # nothing solved: the teacher data whole
    assert mix(teacher, own, "alpha_schedule", 0.5, seed=1)[0] != mix(teacher, own, "alpha_schedule", 0.5, seed=2)[0]


def test_mixing_adaptive_keeps_teacher_rows_of_failed_problems_only():
    teacher = _rows(10, "teacher")
    own = [{"problem_id": "p1", "source": "self"}, {"problem_id": "p3", "source": "self"}]
    rows, info = mix(teacher, own, "adaptive", None, seed=0)
    assert [r["problem_id"] for r in rows[:-2]] == [f"p{i}" for i in range(10) if i not in (1, 3)]
    assert info["teacher_rows"] == 8 and info["self_rows"] == 2


def test_score_samples_keeps_correct_well_formed_replies_once():
    probs = [Problem("a", "Q1", "12", "t", "seed"), Problem("b", "Q2", "7", "t", "seed")]
    outs = ["[pot]\n```python\nanswer = 3 * 4\n```", "[pot]\n```python\nanswer = 3 * 4\n```",  # a: twice the same
            "[l2m]\nThe answer is 7.",  # b: right number but no sub-question: not a well-formed L2M solution
            "[cot]\n3 + 4 = 7.\nThe answer is 7."]
    samples, train, stats = score_samples([(p, None) for p in probs for _ in range(2)], outs, ["cot", "l2m", "pot"])
    assert [s["correct"] for s in samples] == [True, True, False, True]
    assert [(r["problem_id"], r["strategy"]) for r in train] == [("a", "pot"), ("b", "cot")]
    assert train[0]["completion"] == "[pot]\n```python\nanswer = 3 * 4\n```"
    assert stats["pot"]["chosen"] == 2 and stats["l2m"]["accuracy"] == 0.0
    # A strategy outside the recipe never counts.
    assert score_samples([(probs[0], None)], ["[pot]\n```python\nanswer = 12\n```"], ["cot", "l2m"])[1] == []


SIKED = MINIMAL + """\
distill:
  strategies: [cot, pot]
  self_guided: {iterations: 2, mixing: alpha_schedule, alpha: [0.9, 0.2]}
"""


def test_recipe_options(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(SIKED)
    r = load_recipe(path)
    assert r.distill.strategies == ["cot", "pot"] and r.distill.self_guided.alpha == [0.9, 0.2]
    assert r.distill.self_guided.samples == 4 and r.distill.self_guided.temperature == 0.7
    for override, msg in [("distill.self_guided.iterations=3", "one teacher share per iteration"),
                          ("distill.self_guided.alpha=[0.9, 1.5]", r"must lie in \[0, 1\]"),
                          ("distill.self_guided.mixing=adaptive", "alpha applies to mixing 'alpha_schedule' only"),
                          ("distill.strategies=[cot, cot]", "strategies repeat one"),
                          ("distill.strategies=[cot, tot]", "distill.strategies.1"),
                          ("distill.self_guided.mixing=some", "distill.self_guided.mixing")]:
        with pytest.raises(RecipeError, match=msg):
            load_recipe(path, [override])
    adaptive = load_recipe(path, ["distill.self_guided.mixing=adaptive", "distill.self_guided.alpha=null"])
    assert adaptive.distill.self_guided.alpha is None
