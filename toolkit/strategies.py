"""Reasoning strategies: prompt templates for teacher and student, and cleaning of rationales (CoT)."""
from __future__ import annotations

import re

from toolkit.answers import extract_strict

Messages = list[dict[str, str]]

COT_INSTRUCTION = (
    "Solve the math word problem step by step. Show each calculation, then finish with "
    'a last line of the form "The answer is N." where N is a single number.'
)

# Our own worked examples: they fix the output format that strict extraction reads.
_COT_SHOTS = [
    (
        "A baker makes 24 muffins in the morning and 18 in the afternoon. He sells 30 of them. "
        "How many muffins are left?",
        "He makes 24 + 18 = 42 muffins.\nAfter selling 30, he has 42 - 30 = 12 muffins left.\n"
        "The answer is 12.",
    ),
    (
        "Tickets cost $7 each. Maria buys 4 tickets and pays with a $50 bill. How much change does she get?",
        "4 tickets cost 4 * 7 = 28 dollars.\nHer change is 50 - 28 = 22 dollars.\nThe answer is 22.",
    ),
]


def teacher_messages(question: str) -> Messages:
    """Few-shot chat messages asking the teacher for a chain-of-thought rationale."""
    messages = [{"role": "system", "content": COT_INSTRUCTION}]
    for q, a in _COT_SHOTS:
        messages += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
    messages.append({"role": "user", "content": question})
    return messages


def student_messages(question: str) -> Messages:
    """Zero-shot messages the student is trained on and evaluated with (the same in both)."""
    return [{"role": "system", "content": COT_INSTRUCTION}, {"role": "user", "content": question}]


_ANSWER_LINE = re.compile(r"the\s+(?:final\s+)?answer\s+is[^\n]*", re.IGNORECASE)


def clean_rationale(text: str) -> str | None:
    """The rationale up to and including its first "The answer is N." line; None if it has none.

    Teachers often keep talking after the answer (a second problem, notes); the student should
    learn to stop there.
    """
    match = _ANSWER_LINE.search(text)
    if match is None or extract_strict(match.group(0)) is None:
        return None
    body = text[: match.start()].strip()
    answer = extract_strict(match.group(0))
    final = f"The answer is {answer}."
    return f"{body}\n{final}" if body else final
