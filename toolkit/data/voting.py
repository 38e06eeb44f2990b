"""Self-consistency pseudo-labels: the majority answer of several teacher solutions, and its agreement."""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

from toolkit.data.answers import answers_match

# Slack for the agreement threshold: a recipe's 0.7 must accept 7 of 10 votes however the
# fraction was computed (0.1 * 7 is 0.7000000000000001 in floating point).
_EPS = 1e-9


@dataclass(frozen=True)
class Vote:
    """The outcome of one vote: the winning answer (None when no solution gave one), its votes,
    the number of solutions, votes / total, and whether it is trusted as a label."""

    answer: str | None
    votes: int
    total: int
    agreement: float
    accepted: bool


def _value(answer: str) -> float:
    """Numeric sort key; text that is not a finite number sorts after every number."""
    try:
        value = float(answer)
    except ValueError:
        return math.inf
    return value if math.isfinite(value) else math.inf


def majority_vote(answers: list[str | None], min_fraction: float, min_votes: int) -> Vote:
    """The largest group of matching answers among `answers` (normalised numbers or None).

    Answers that `answers_match` each other (tolerant compare, "0.5" ~ "0.50001") form one group.
    None answers count in the total but never win. Groups are formed in numeric order, so the
    result does not depend on the order of `answers`; a tie goes to the group of the smallest
    value. The group's answer is its most frequent spelling (ties: the smallest value).
    Accepted when votes >= min_votes and votes / total >= min_fraction.
    """
    total = len(answers)
    counts = Counter(a for a in answers if a is not None)
    # Greedy grouping over the distinct answers in numeric order: each group is anchored at its
    # smallest member, and a later answer joins it when it matches that anchor.
    groups: list[list[str]] = []
    for answer in sorted(counts, key=lambda a: (_value(a), a)):
        if groups and answers_match(answer, groups[-1][0]):
            groups[-1].append(answer)
        else:
            groups.append([answer])
    if not groups:
        return Vote(None, 0, total, 0.0, False)
    # max() keeps the first of equal keys, and groups are in ascending order: ties go to the smallest.
    best = max(groups, key=lambda g: sum(counts[a] for a in g))
    votes = sum(counts[a] for a in best)
    answer = max(best, key=lambda a: counts[a])  # first of equal counts = the smallest spelling
    agreement = votes / total
    accepted = votes >= min_votes and agreement >= min_fraction - _EPS
    return Vote(answer, votes, total, agreement, accepted)
