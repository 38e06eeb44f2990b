"""Statistics of 0/1 scores: standard error, the 95% Wilson interval, and the paired comparison of two models."""
from __future__ import annotations

import math
import random


def stderr(p: float, n: int) -> float:
    """Standard error of a mean of n 0/1 scores (sample variance, as lm-evaluation-harness reports)."""
    return math.sqrt(p * (1 - p) / (n - 1)) if n > 1 else 0.0


def wilson_interval(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval for k successes in n trials (sound for small n and p near 0)."""
    if n == 0:
        return (0.0, 0.0)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def wilson_of_rate(p: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson interval of an accuracy p over n problems (p * n rounded back to the count it came from)."""
    return wilson_interval(round(p * n), n, z)


def mcnemar_p(only_a: int, only_b: int) -> float:
    """Exact two-sided McNemar p-value of the discordant pairs: a binomial(only_a + only_b, 1/2) test."""
    n = only_a + only_b
    tail = sum(math.comb(n, k) for k in range(min(only_a, only_b) + 1)) / 2 ** n if n else 1.0
    return min(1.0, 2 * tail)


def paired(a: dict[str, bool], b: dict[str, bool], reps: int = 10000, seed: int = 0) -> dict:
    """b - a on the problems both answered: difference, 95% bootstrap interval (problems resampled),
    and the exact two-sided McNemar p-value on the discordant pairs."""
    ids = sorted(set(a) & set(b))
    diffs = [int(b[i]) - int(a[i]) for i in ids]
    rng = random.Random(seed)
    boots = sorted(sum(rng.choice(diffs) for _ in diffs) / len(diffs) for _ in range(reps))
    only_b, only_a = diffs.count(1), diffs.count(-1)
    return {"n": len(ids), "difference": sum(diffs) / len(ids), "ci95": [boots[int(0.025 * reps)],
            boots[int(0.975 * reps) - 1]], "only_a": only_a, "only_b": only_b, "mcnemar_p": mcnemar_p(only_a, only_b)}
