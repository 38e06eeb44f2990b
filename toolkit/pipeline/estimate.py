"""The dry run's teacher estimate: requests, prompt and completion tokens, and cost per stage, before any is spent."""
from __future__ import annotations

import math

from toolkit.core.recipe import Recipe
from toolkit.data.problems import Problem
from toolkit.data.question_programs import harder_program_messages, similar_program_messages
from toolkit.data.questions import harder_messages, similar_messages
from toolkit.data.strategies import STRATEGIES, Messages, teacher_messages
from toolkit.pipeline.distill import select_problems, unused_originals
from toolkit.pipeline.fdd import round_source
from toolkit.teacher.ledger import cost_usd

# The common rule of thumb for English text in BPE vocabularies: about 4 characters per token. Measured
# against llama.cpp's count for Qwen2.5 (README, "Using it"): 10-20% low for solve prompts, within 3% for
# question-writing prompts.
CHARS_PER_TOKEN = 4
# The chat template's markup around each message (role name, start and end tokens).
TOKENS_PER_MESSAGE = 4
APPROXIMATION = (f"prompt tokens ≈ characters / {CHARS_PER_TOKEN} + {TOKENS_PER_MESSAGE} per chat message of the "
                 f"real prompt templates; completion tokens = max_tokens per request (an upper bound); "
                 f"requests are counted before the cache (cached ones cost nothing)")
BOUNDS = ("FDD rounds are upper bounds: every new question is counted as kept (dedup, leakage and the vote drop "
          "some), every problem as writing questions, and each question-writing prompt as the longer of the "
          "harder and similar ones (feedback decides); "
          "questions not yet written are taken as long as the mean training problem")


def prompt_tokens(messages: Messages) -> int:
    """Approximate prompt tokens of a chat request (see APPROXIMATION)."""
    return sum(math.ceil(len(m["content"]) / CHARS_PER_TOKEN) + TOKENS_PER_MESSAGE for m in messages)


def _row(stage: str, requests: int, prompt: int, completion: int, upper_bound: bool, note: str,
         prompt_upper_bound: bool | None = None) -> dict:
    """One stage's estimate; `upper_bound`: the request count is a bound, `prompt_upper_bound`: the prompt tokens
    are (default: as the requests)."""
    return {"stage": stage, "requests": requests, "prompt_tokens": prompt, "completion_tokens": completion,
            "upper_bound": upper_bound,
            "prompt_upper_bound": upper_bound if prompt_upper_bound is None else prompt_upper_bound, "note": note}


def _rationales(recipe: Recipe, train: list[Problem]) -> dict:
    """Round 0: k paths for every problem and strategy; the count is exact."""
    dc = recipe.distill
    k = dc.paths_per_problem
    prompt = sum(prompt_tokens(teacher_messages(p.question, s)) for p in train for s in dc.strategies) * k
    requests = len(train) * len(dc.strategies) * k
    return _row("round-0/rationales", requests, prompt, requests * recipe.teacher.max_tokens, False,
                f"{len(train)} problems × {k} paths × {len(dc.strategies)} strateg"
                f"{'y' if len(dc.strategies) == 1 else 'ies'}")


def _mean(values: list[int]) -> float:
    return sum(values) / len(values) if values else 0.0


def _rounds(recipe: Recipe, train: list[Problem], unused: list[Problem]) -> list[dict]:
    """Rounds 1..R-1. A generated round (FDD): one question-writing request per training problem, then
    label_solves solves per new question. Upper bounds: every new question is taken as accepted, every problem
    as asking (with a kind switched off only easy or only hard ones do), and each prompt as the longer of the
    kinds' requests (which one a problem gets depends on the student's feedback). A round of unused originals:
    paths_per_problem solves per strategy of each problem it takes (which ones, the student's answers decide:
    their prompts are taken as long as the mean unused problem)."""
    dc = recipe.distill
    m, n = dc.new_per_problem, dc.label_solves
    programs = dc.question_check == "program"
    writers = ({"harder": harder_program_messages, "similar": similar_program_messages} if programs
               else {"harder": harder_messages, "similar": similar_messages})
    ask = [max(prompt_tokens(writers[kind](p, m)) for kind in dc.generate) for p in train]
    # With one kind switched off (distill.generate), feedback decides which problems ask at all.
    every = set(dc.generate) == set(writers)
    strategies = [s for s in STRATEGIES if s in dc.strategies]
    # Solve j uses strategy j mod |strategies| (toolkit/pipeline/fdd.py): the tokens of one question's n solves.
    solves = sum(_mean([prompt_tokens(teacher_messages(p.question, strategies[j % len(strategies)]))
                        for p in train]) for j in range(n))
    # label_check pot with no PoT among the n solves: one extra PoT request per question (an upper bound:
    # only questions that pass the vote get one).
    check = dc.label_check == "pot" and "pot" not in strategies[:n] and not programs
    pot_prompt = _mean([prompt_tokens(teacher_messages(p.question, "pot")) for p in train]) if check else 0.0
    per_original = _mean([prompt_tokens(teacher_messages(p.question, s)) for p in unused for s in dc.strategies])
    rows, problems, left = [], len(train), len(unused)
    for k in range(1, dc.rounds):
        if round_source(dc.round_source, left) == "originals":
            take = min(dc.originals_per_round or m * problems, left)
            requests = take * dc.paths_per_problem * len(dc.strategies)
            rows.append(_row(f"round-{k}/rationales", requests, round(requests * per_original),
                             requests * recipe.teacher.max_tokens, False,
                             f"{take} unused original problems × {dc.paths_per_problem} paths × "
                             f"{len(dc.strategies)} strateg{'y' if len(dc.strategies) == 1 else 'ies'}",
                             prompt_upper_bound=False))
            problems, left = problems + take, left - take
            continue
        # Generated questions are not known yet: each is taken as long as the mean training problem.
        q_prompt = sum(ask) + round((problems - len(train)) * _mean(ask))
        rows.append(_row(f"round-{k}/questions", problems, q_prompt, problems * dc.question_max_tokens,
                         k > 1 or not every, "1 per training problem" if every else
                         f"1 per {'easy' if dc.generate == ['harder'] else 'hard'} training problem",
                         prompt_upper_bound=True))
        new = problems * m
        per = n + check
        rows.append(_row(f"round-{k}/labels", new * per, round(new * (solves + pot_prompt)),
                         new * per * recipe.teacher.max_tokens, True,
                         f"{new} new questions × {n} solves" + (" + 1 PoT check" if check else "")))
        problems += new
    return rows


def estimate(recipe: Recipe) -> dict:
    """The teacher requests, tokens and (with teacher.price) cost of a whole run of `recipe`, per stage and in
    total; nothing is sent and nothing is written."""
    train, _ = select_problems(recipe)
    unused = unused_originals(recipe) if recipe.distill.rounds > 1 else []
    rows = [_rationales(recipe, train), *_rounds(recipe, train, unused)]
    price = recipe.teacher.price
    total = _row("total", *(sum(r[key] for r in rows) for key in ("requests", "prompt_tokens", "completion_tokens")),
                 any(r["upper_bound"] for r in rows), "", any(r["prompt_upper_bound"] for r in rows))
    for row in (*rows, total):
        if price is not None:
            row["cost_usd"] = round(cost_usd(row["prompt_tokens"], row["completion_tokens"], price), 6)
    notes = [APPROXIMATION, *((BOUNDS,) if recipe.distill.rounds > 1 else ())]
    if recipe.distill.self_guided:
        notes.append("self-guided iterations sample the student, not the teacher: no teacher requests")
    return {"stages": rows, "total": total, "price": price.model_dump() if price else None, "notes": notes}
