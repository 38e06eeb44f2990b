"""Answer extraction and normalisation, table-driven on real model outputs and on the edge cases."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from toolkit.data.answers import answers_match, extract_flexible, extract_strict, normalize_number

# Real outputs: a teacher's and students' raw completions and GSM8K's gold rationales, each with the
# strict and flexible answer a careful reader takes from it (checked by hand).
REAL = [json.loads(line) for line in (Path(__file__).parent / "data" / "real_outputs.jsonl").read_text().splitlines()]


def test_enough_real_outputs():
    assert len(REAL) >= 40
    assert sum(r["strict"] is None for r in REAL) >= 5  # outputs with no answer marker are covered


@pytest.mark.parametrize("row", REAL, ids=[f"real{i}" for i in range(len(REAL))])
def test_real_outputs(row):
    assert extract_strict(row["output"]) == row["strict"]
    assert extract_flexible(row["output"]) == row["flexible"]


@pytest.mark.parametrize("text, expected", [
    ("1,080", "1080"), ("$1,080.00", "1080"), ("18.0", "18"), ("0.50", "0.5"), ("3/4", "0.75"),
    ("1 1/2", "1.5"), ("50%", "50"), ("-7", "-7"), (".5", "0.5"), ("$ 12", "12"),
    ("109,200,000 people", "109200000"), ("9 (apples)", "9"), ("2/3", "0.666667"),
    ("0.6666666666666666", "0.666667"), ("no number here", None), ("5/0", None),
])
def test_normalize_number(text, expected):
    assert normalize_number(text) == expected


@pytest.mark.parametrize("output, strict, flexible", [
    ("The answer is 18.", "18", "18"),
    ("The final answer is $1,234.50", "1234.5", "1234.5"),
    ("Final answer: 42", "42", "42"),
    ("so x = 10 - 4 = 6", None, "6"),  # a minus between numbers is subtraction, not a sign
    ("The answer is -3 degrees.", "-3", "-3"),
    ("The answer is \\(\\boxed{30}\\).", "30", "30"),
    ("The answer is below.\n5 apples", None, "5"),  # strict reads only the marker's own line
    ("The answer is 3. Then 7 more problems follow", "3", "7"),
    ("First the answer is 2, no wait. The answer is 4.", "4", "4"),  # the last marker counts
    ("#### 1,080", "1080", "1080"),
    # a real Qwen2.5-Coder-0.5B L2M line: the result after the last "=", not the first operand
    ("The answer is $5.46 + $4.01 + $8.95 = $27.32.", "27.32", "27.32"),
    ("The answer is 9.91 + 4.11 = 14.02 pounds of watermelon.", "14.02", "14.02"),
    ("", None, None),
])
def test_extraction_edge_cases(output, strict, flexible):
    assert extract_strict(output) == strict
    assert extract_flexible(output) == flexible


@pytest.mark.parametrize("pred, gold, same", [
    ("18", "18", True), ("18.0001", "18", True), ("18.1", "18", False), ("0.666667", "0.6667", True),
    ("0.67", "0.666667", False), (None, "18", False), ("18", None, False), ("1080", "1080.0", True),
])
def test_answers_match(pred, gold, same):
    assert answers_match(pred, gold) is same
