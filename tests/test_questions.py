"""FDD question prompts and the parsing of teacher replies, table-driven over the formats teachers use."""
from __future__ import annotations

import random
import string
import time

import pytest

from toolkit.data.problems import Problem
from toolkit.data.questions import harder_messages, parse_questions, similar_messages

SEED = Problem("gsm8k_train-7", "Tom has 5 apples and buys 3 more. How many apples does he have?", "8", "gsm8k")

APPLES = "Tom has 5 apples and buys 3 bags of 4 apples. How many apples does he have now?"
PAGES = "Sara reads 12 pages a day for 5 days. How many pages does she read in total?"
COWS = "A farmer has 12 cows and buys 7 more cows. How many cows does he have?"

CASES = [
    ("numbered-dot", f"1. {APPLES}\n2. {PAGES}\n3. {COWS}", 3, [APPLES, PAGES, COWS], 0),
    ("numbered-paren", f"1) {APPLES}\n2) {PAGES}", 3, [APPLES, PAGES], 0),
    ("problem-label", f"Problem 1: {APPLES}\nProblem 2: {PAGES}", 3, [APPLES, PAGES], 0),
    ("question-label", f"Question 1: {APPLES}\n\nQuestion 2: {PAGES}", 3, [APPLES, PAGES], 0),
    ("bold-number", f"**1.** {APPLES}\n**2.** {PAGES}", 3, [APPLES, PAGES], 0),
    # Labelled items own their numbered solution steps: the steps are not new items.
    ("bold-label-on-own-line-with-solution",
     f"**Problem 1:**\n\n{APPLES}\n\n**Solution:**\n1. 3 * 4 = 12\n2. 5 + 12 = 17\n\n**Problem 2:**\n{PAGES}",
     3, [APPLES, PAGES], 0),
    ("bullets", f"- {APPLES}\n* {PAGES}\n• {COWS}", 3, [APPLES, PAGES, COWS], 0),
    ("json-strings", f'["{APPLES}", "{PAGES}"]', 3, [APPLES, PAGES], 0),
    ("json-objects-fenced",
     f'Here you go:\n```json\n[{{"question": "{APPLES}", "answer": 17}}, {{"Problem": "{PAGES}"}}, {{"answer": 3}}]\n```',
     3, [APPLES, PAGES], 1),
    ("json-object-holding-list", f'{{"questions": ["{APPLES}", "{COWS}"]}}', 3, [APPLES, COWS], 0),
    ("json-single-object", f'{{"problem": "{COWS}"}}', 3, [COWS], 0),
    ("q-labels", f"Q1: {APPLES}\nQ2) {PAGES}", 3, [APPLES, PAGES], 0),
    ("parenthesised-numbers", f"(1) {APPLES}\n(2) {COWS}", 3, [APPLES, COWS], 0),
    ("single-unnumbered", APPLES, 3, [APPLES], 0),
    ("single-with-intro-after-colon", f"Here is a harder problem: {APPLES}", 3, [APPLES], 0),
    ("preamble-and-closing",
     f"Sure! Here are 2 harder problems:\n\n1. {APPLES}\n2. {PAGES}\n\nI hope this helps! Let me know.", 3,
     [APPLES, PAGES], 0),
    ("closing-right-after-last-item", f"1. {APPLES}\n2. {PAGES}\nThese problems need two steps each.", 3,
     [APPLES, PAGES], 0),
    ("answer-and-steps-after-question",
     f"1. {APPLES} Answer: 17\n2. {PAGES}\nStep 1: 12 * 5 = 60.\nThe answer is 60.\n"
     f"3. {COWS} (Solution: 12 + 7 = 19)", 3, [APPLES, PAGES, COWS], 0),
    ("trailing-words-after-the-question", f"1. {APPLES} Show your work!\n2. {PAGES} (answer 60)", 3,
     [APPLES, PAGES], 0),
    ("unnumbered-with-solution-paragraphs", f"{APPLES}\n\nSolution:\n3 * 4 = 12 apples.\n\nSo he has 17.", 3,
     [APPLES], 0),
    ("multi-line-items",
     "1. Tom has 5 apples\n   and buys 3 bags of 4 apples.\n   How many apples does he have now?\n"
     "2. Sara reads 12 pages a day\nfor 5 days. How many pages does she read in total?", 3, [APPLES, PAGES], 0),
    ("imperative-without-question-mark",
     "1. A box holds 24 pens and 3 boxes are sold. Find the number of pens sold.\n"
     "2. A car drives 60 km each hour for 3 hours. Calculate the distance it drives. Solution: 60 * 3 = 180", 3,
     ["A box holds 24 pens and 3 boxes are sold. Find the number of pens sold.",
      "A car drives 60 km each hour for 3 hours. Calculate the distance it drives."], 0),
    ("malformed-items-dropped-and-counted",
     "1. Tom has some apples and buys more. How many apples does he have?\n"  # no digit
     "2. Tom has 5 apples.\n"  # too short, and asks nothing
     "3. Tom has 5 apples and 3 pears in a big basket at home.\n"  # asks nothing
     "4. How many 3?\n"  # fewer than 6 words
     f"5. {'Tom walks 3 km. ' * 41}How far?\n"  # more than 120 words
     f"6. {APPLES}", 3, [APPLES], 5),
    ("at-most-m", f"1. {APPLES}\n2. {PAGES}\n3. {COWS}", 2, [APPLES, PAGES], 0),
    ("question-and-label-quoted", f'1. Problem: "{APPLES}"', 3, [APPLES], 0),
    ("empty", "", 3, [], 0),
    ("only-chatter", "Sure! Here are some problems:\n\nI hope this helps!", 3, [], 0),
    ("garbage", "}{ ][ ``` ### ***", 3, [], 1),
    ("prose-brackets-are-not-json", "Tom has [3] bags of 4 apples and eats 2. How many apples are left?", 3,
     ["Tom has [3] bags of 4 apples and eats 2. How many apples are left?"], 0),
]


@pytest.mark.parametrize("text, m, expected, malformed", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_parse_questions(text, m, expected, malformed):
    assert parse_questions(text, m) == (expected, malformed)


@pytest.mark.parametrize("text", [
    "[" * 100_000, "{" * 100_000, "#" + " " * 99_990 + "x", "Problem 1" + " " * 99_990 + "x",
    "answer" + " " * 99_990 + ":", "\n" * 100_000, "1.\n\n" * 25_000, "```" * 33_000, "\x00\ud800" * 1000,
    f"1. {APPLES}\n" * 20_000,
], ids=lambda t: repr(t[:12]))
def test_never_raises_nor_stalls_on_pathological_text(text):
    start = time.process_time()  # CPU seconds: another job on the machine does not count
    questions, malformed = parse_questions(text, 3)
    assert len(questions) <= 3 and malformed >= 0
    assert time.process_time() - start < 2.0  # quadratic regex backtracking would take minutes


def test_never_raises_on_random_text():
    rnd = random.Random(0)
    alphabet = string.printable + "•“”’—"
    for _ in range(500):
        text = "".join(rnd.choice(alphabet) for _ in range(rnd.randint(0, 300)))
        questions, _ = parse_questions(text, 2)
        assert len(questions) <= 2


@pytest.mark.parametrize("build, ask, ask_one", [
    (harder_messages, "Write 3 harder versions of this problem.", "Write 1 harder version of this problem."),
    (similar_messages, "Write 3 new problems of similar difficulty", "Write 1 new problem of similar difficulty"),
])
def test_messages_shape(build, ask, ask_one):
    messages = build(SEED, 3)
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    request = messages[-1]["content"]
    assert request.startswith(ask) and SEED.question in request
    assert request.endswith("Reply with a numbered list, one problem per item, questions only, "
                            "no answers or solutions.")
    assert messages[1]["content"].startswith("Write 2 ")
    # The worked example parses back to the two problems it shows: it teaches the format we read.
    assert len(parse_questions(messages[2]["content"], 5)[0]) == 2
    assert build(SEED, 1)[-1]["content"].startswith(ask_one)


def test_messages_reject_zero():
    with pytest.raises(ValueError):
        harder_messages(SEED, 0)
