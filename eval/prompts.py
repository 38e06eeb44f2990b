"""Evaluation prompts: strategy messages, deterministic few-shot examples (rendered by toolkit.data.prompt_rule)."""
from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from toolkit.core.errors import DataError, ToolkitError
from toolkit.data.problems import Problem, load_suite
from toolkit.data.suites import SUITES
from toolkit.data.strategies import COT_INSTRUCTION, eval_prompt, student_messages

Messages = list[dict[str, str]]


@dataclass(frozen=True)
class Shot:
    """One worked example shown before the question: the question and the answer text to imitate."""

    question: str
    answer: str


def cot_messages(question: str, shots: list[Shot]) -> Messages:
    """Chain of thought. Zero-shot it is exactly what the student is trained on (strategies.student_messages);
    few-shot puts each example as a user turn and an assistant turn between the instruction and the question."""
    if not shots:
        return student_messages(question)
    messages = [{"role": "system", "content": COT_INSTRUCTION}]
    for shot in shots:
        messages += [{"role": "user", "content": shot.question}, {"role": "assistant", "content": shot.answer}]
    messages.append({"role": "user", "content": question})
    return messages


def tagged_builder(strategy: str) -> PromptBuilder:
    """A multi-strategy student's prompt (toolkit.data.strategies.eval_prompt): `auto` lets it pick, l2m/pot
    force that tag. It was trained zero-shot on this prompt, so worked examples are refused."""
    def build(question: str, shots: list[Shot]) -> Messages:
        if shots:
            raise ToolkitError(f"--fewshot applies to --strategy cot; a {strategy} prompt is the tagged "
                               "student's own zero-shot prompt")
        return eval_prompt(question, strategy)
    return build


# Strategy name -> message builder. Every eval prompt goes through `build_messages`.
PromptBuilder = Callable[[str, list[Shot]], Messages]
BUILDERS: dict[str, PromptBuilder] = {"cot": cot_messages, **{s: tagged_builder(s) for s in ("l2m", "pot", "auto")}}


def build_messages(question: str, strategy: str = "cot", shots: list[Shot] | None = None) -> Messages:
    """The chat messages for one problem under `strategy`, with optional few-shot examples."""
    if strategy not in BUILDERS:
        raise ToolkitError(f"unknown strategy {strategy!r}; available: {', '.join(BUILDERS)}")
    return BUILDERS[strategy](question, list(shots or []))


# Our own worked examples for suites without a train split; their last line is what strict extraction reads.
FIXED_SHOTS = [
    Shot("A baker makes 24 muffins in the morning and 18 in the afternoon. He sells 30 of them. "
         "How many muffins are left?",
         "He makes 24 + 18 = 42 muffins.\nAfter selling 30, he has 42 - 30 = 12 muffins left.\nThe answer is 12."),
    Shot("Tickets cost $7 each. Maria buys 4 tickets and pays with a $50 bill. How much change does she get?",
         "4 tickets cost 4 * 7 = 28 dollars.\nHer change is 50 - 28 = 22 dollars.\nThe answer is 22."),
    Shot("A garden has 6 rows of 9 tulips. Rabbits eat 15 tulips. How many tulips are still there?",
         "There are 6 * 9 = 54 tulips.\nAfter the rabbits, 54 - 15 = 39 are left.\nThe answer is 39."),
    Shot("Sam reads 12 pages a day. How many days does he need for a book of 84 pages?",
         "He needs 84 / 12 = 7 days.\nThe answer is 7."),
    Shot("A class of 28 students splits into teams of 4. Each team gets 3 balls. How many balls are needed?",
         "There are 28 / 4 = 7 teams.\nThey need 7 * 3 = 21 balls.\nThe answer is 21."),
    Shot("Lena had 45 stickers. She gave 9 to each of her 3 friends. How many stickers does she have now?",
         "She gave away 9 * 3 = 27 stickers.\nShe has 45 - 27 = 18 left.\nThe answer is 18."),
    Shot("A shirt costs $20 and is sold at 25% off. What is the sale price?",
         "The discount is 20 * 25 / 100 = 5 dollars.\nThe sale price is 20 - 5 = 15 dollars.\nThe answer is 15."),
    Shot("A car travels 60 km per hour for 2.5 hours. How far does it go?",
         "It goes 60 * 2.5 = 150 km.\nThe answer is 150."),
]

def _shot_from_problem(p: Problem) -> Shot:
    body = (p.rationale or "").strip()
    final = f"The answer is {p.answer}."
    return Shot(p.question, f"{body}\n{final}" if body else final)


def fewshot_examples(suite: str, n: int, data_root: str | Path, evaluated: Iterable[Problem],
                     seed: int = 1234) -> list[Shot]:
    """`n` examples for `suite`, the same for every run with the same seed, never an evaluated problem.

    Drawn from the suite's train split where the dataset has one, else from FIXED_SHOTS.
    """
    if n <= 0:
        return []
    banned = {p.question.strip().lower() for p in evaluated} | {p.id for p in evaluated}
    train_split = SUITES[suite].train_split if suite in SUITES else None
    if train_split:
        pool = [p for p in load_suite(train_split, data_root)
                if p.id not in banned and p.question.strip().lower() not in banned]
        pool.sort(key=lambda p: p.id)  # the draw depends on the seed only, not the file order
        if len(pool) < n:
            raise DataError(f"--fewshot {n}: the {suite} train split has only {len(pool)} usable examples")
        return [_shot_from_problem(p) for p in random.Random(seed).sample(pool, n)]
    pool_fixed = [s for s in FIXED_SHOTS if s.question.strip().lower() not in banned]
    if len(pool_fixed) < n:
        raise DataError(f"--fewshot {n}: suite {suite} has no train split and only {len(pool_fixed)} fixed examples")
    return pool_fixed[:n]


def cut_at_stop(text: str, stops: Iterable[str]) -> str:
    """The text before the first stop string (the part a stop-aware server would have returned)."""
    cut = len(text)
    for s in stops:
        i = text.find(s)
        if i != -1:
            cut = min(cut, i)
    return text[:cut]
