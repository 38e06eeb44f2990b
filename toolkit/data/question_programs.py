"""Answerable-by-construction questions: the teacher writes each new problem with a program that computes its
answer from the numbers the problem states; the prompts, the reply parser and the grounding test."""
from __future__ import annotations

import ast
import math
import re
from fractions import Fraction

from toolkit.data.problems import Problem
from toolkit.data.questions import clean_question, well_formed, writer_messages
from toolkit.data.strategies import Messages, extract_program

_SYSTEM = "You write new math word problems for students, each with a Python program that solves it."
_FORMAT = ("For each problem write \"Problem K:\" and the question, then a ```python block that computes the "
           "answer only from numbers stated in the question and stores it in a variable named answer.")
_HARDER = ("Write {m} harder {noun} of this problem. Each needs more steps or more quantities, must state every "
           "number needed to solve it, and must have a whole-number answer.")
_SIMILAR = ("Write {m} new {noun} of similar difficulty to this one but about a different everyday topic. Each "
            "must state every number needed to solve it.")

# Our own worked example (questions.SHOT_PROBLEM answered): the format the parser reads, every literal stated.
_SHOT_HARDER = (
    "Problem 1: A baker makes 24 muffins in the morning and 18 in the afternoon. He sells 15 muffins and gives 6 "
    "to his neighbours. How many muffins are left?\n"
    "```python\nmorning = 24\nafternoon = 18\nsold = 15\ngiven = 6\nanswer = morning + afternoon - sold - given\n```\n"
    "Problem 2: A baker makes 3 trays of 12 muffins each. He sells 20 muffins. How many muffins does he have "
    "left?\n"
    "```python\ntrays = 3\nper_tray = 12\nsold = 20\nanswer = trays * per_tray - sold\n```"
)
_SHOT_SIMILAR = (
    "Problem 1: A library has 32 books on a shelf and lends out 19 of them. How many books are still on the "
    "shelf?\n"
    "```python\nbooks = 32\nlent = 19\nanswer = books - lent\n```\n"
    "Problem 2: Lena picks 45 strawberries and eats 12 of them. How many strawberries does she have now?\n"
    "```python\npicked = 45\neaten = 12\nanswer = picked - eaten\n```"
)


def harder_program_messages(problem: Problem, m: int) -> Messages:
    """Chat messages asking for m harder variants of `problem`, each with its solving program."""
    return writer_messages(_SYSTEM, _HARDER, "version", _FORMAT, _SHOT_HARDER, problem, m)


def similar_program_messages(problem: Problem, m: int) -> Messages:
    """Chat messages asking for m new problems as hard as `problem`, each with its solving program."""
    return writer_messages(_SYSTEM, _SIMILAR, "problem", _FORMAT, _SHOT_SIMILAR, problem, m)


# Teacher replies are capped by max_tokens; this only bounds the work on pathological input.
_MAX_CHARS = 100_000
_BLOCK = re.compile(r"```(?:python|py)?[ \t]*\n.*?(?:```|\Z)", re.DOTALL | re.IGNORECASE)
# "Problem 2:", "**Question 1.**", and "Problem K:", the instruction's placeholder copied as written (seen with the
# 1.5B teacher: 18 of the 19 questions kept in bench/results/fdd-seed-limited began with it), or numbered by the
# teacher, "Problem K1:" (asked for 3 at once: 23 of the 28 kept in its LLM2LLM arm kept that label).
_LABEL = re.compile(r"^[ \t>*#_-]*(?:\*\*)?\s*(?:problem|question)\s*(?:\d{1,3}|[a-z]\d{0,3})?\s*[:.)]\s*(?:\*\*)?",
                    re.IGNORECASE | re.MULTILINE)


def parse_question_programs(text: str, m: int) -> tuple[list[tuple[str, str]], int]:
    """At most m (question, program) pairs from a teacher reply, and how many items were malformed.

    An item is the text before a ```python block (after its "Problem K:" label) and the block; it is
    malformed when the question fails the plain writer's test (toolkit.data.questions) or the block has no
    program that assigns `answer`. A question with no block after it is malformed. Never raises.
    """
    if not isinstance(text, str):
        return [], 0
    text = text[:_MAX_CHARS]
    pairs, malformed, at = [], 0, 0
    for block in _BLOCK.finditer(text):
        before = text[at:block.start()]
        at = block.end()
        labels = list(_LABEL.finditer(before))
        # The question is what follows the last label before the block (stray prose precedes it), or, with
        # no label, the last paragraph before the block.
        body = before[labels[-1].end():] if labels else before.strip().split("\n\n")[-1]
        question = clean_question(body)
        code = extract_program(block.group(0))
        if well_formed(question) and code:
            pairs.append((question, code))
        else:
            malformed += 1
    tail = text[at:]
    malformed += sum(1 for _ in _LABEL.finditer(tail))  # labelled questions left without a program
    return pairs[:max(m, 0)], malformed


# Numbers a question may state in words (a program's `2` for "twice", `12` for "a dozen").
_WORDS = {
    "zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8,
    "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14, "fifteen": 15,
    "sixteen": 16, "seventeen": 17, "eighteen": 18, "nineteen": 19, "twenty": 20, "thirty": 30, "forty": 40,
    "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80, "ninety": 90, "hundred": 100, "thousand": 1000,
    "twice": 2, "double": 2, "doubles": 2, "half": 2, "halves": 2, "thrice": 3, "triple": 3, "triples": 3,
    "quarter": 4, "quarters": 4, "third": 3, "thirds": 3, "dozen": 12, "dozens": 12, "percent": 100,
    "pair": 2, "pairs": 2, "week": 7, "weeks": 7, "hour": 60, "hours": 60, "minute": 60, "minutes": 60,
}
_NUMERAL = re.compile(r"(?<![\w.])\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+")
_WORD = re.compile(r"[a-z]+")
# 0 and 1 state nothing (a start value, a unit step) and half written as 0.5 is the word "half".
_NEUTRAL = {Fraction(0), Fraction(1)}


def stated_numbers(question: str) -> set[Fraction]:
    """The values a question states, as numerals ("1,200", "3.5", "25%") or as words ("twice", "a dozen")."""
    values = {Fraction(m.group(0).replace(",", "")) for m in _NUMERAL.finditer(question)}
    for word in _WORD.findall(question.lower()):
        if word in _WORDS:
            values.add(Fraction(_WORDS[word]))
    if "%" in question:
        values.add(Fraction(100))
    values |= {1 / v for v in values if v}  # "half" is 2 or 0.5; "25%" is 25 or a divisor of 100
    values |= {v / 100 for v in values}
    return values


def program_literals(code: str) -> list[Fraction | None]:
    """Every numeric literal in a program (ints and floats; booleans are not numbers here); None for a float
    literal that is not finite (`1e999`); [None] for a program that does not parse."""
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return [None]
    values: list[Fraction | None] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and type(node.value) in (int, float):
            # repr: the literal as written (0.1 is 1/10, not its binary float)
            values.append(Fraction(repr(node.value)) if math.isfinite(node.value) else None)
    return values


def ungrounded_numbers(code: str, question: str) -> list[str]:
    """The program's literals that the question does not state (0 and 1 excepted), as text; empty when the
    program computes its answer from the question's own numbers only."""
    stated = stated_numbers(question) | _NEUTRAL
    missing = []
    for value in program_literals(code):
        if value is None:
            text = "(not a finite number)"
        elif value in stated:
            continue
        else:
            text = str(value.numerator) if value.denominator == 1 else str(float(value))
        if text not in missing:
            missing.append(text)
    return missing
