"""FDD pieces on real data: the feedback split and question parsing of real teacher outputs."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from toolkit.pipeline.fdd import classify
from toolkit.data.questions import parse_questions

REAL = [json.loads(line) for line in
        (Path(__file__).parent / "data" / "real_question_outputs.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("answers, gold, threshold, label", [
    (["18"], "18", 0.5, "easy"),                       # greedy feedback: one answer decides
    (["17"], "18", 0.5, "hard"),
    ([None], "18", 0.5, "hard"),                       # no extractable answer counts as wrong
    (["18.0", "18", "3", None], "18", 0.5, "easy"),    # 2 of 4 right reaches 0.5 exactly
    (["18", "3", "4", None], "18", 0.5, "hard"),       # 1 of 4 does not
    (["18", "18", "18", "3"], "18", 1.0, "hard"),      # threshold 1: every sample must be right
    ([], "18", 0.5, "hard"),
])
def test_feedback_split(answers, gold, threshold, label):
    assert classify(answers, gold, threshold) == label


def test_real_teacher_outputs_are_saved():
    assert len(REAL) == 30


@pytest.mark.parametrize("row", REAL, ids=[f"real{i}" for i in range(len(REAL))])
def test_parse_real_question_outputs(row):
    """Reviewed by hand: items without a number or without a question are dropped and counted."""
    questions, malformed = parse_questions(row["output"], row["m"])
    assert (questions, malformed) == (row["questions"], row["malformed"])
