"""Tests for toolkit.core.stats: exact values of the Wilson interval, McNemar's test and the paired comparison."""
from __future__ import annotations

import pytest

from toolkit.core.stats import mcnemar_p, paired, stderr, wilson_interval, wilson_of_rate


def test_wilson_interval_matches_the_published_value():
    """3 of 40 at z = 1.96: centre 0.12302 / 1.09604, half-width 1.96 × √0.00233463 / 1.09604."""
    lo, hi = wilson_interval(3, 40)
    assert lo == pytest.approx(0.025835, abs=1e-6)
    assert hi == pytest.approx(0.198645, abs=1e-6)


def test_wilson_interval_edges():
    assert wilson_interval(0, 0) == (0.0, 0.0)
    lo, hi = wilson_interval(0, 10)
    assert lo == pytest.approx(0.0, abs=1e-12) and hi == pytest.approx(3.8416 / 13.8416)  # z² / (n + z²)
    lo, hi = wilson_interval(10, 10)
    assert hi == pytest.approx(1.0) and lo == pytest.approx(10 / 13.8416)  # n / (n + z²)


def test_wilson_of_rate_rounds_back_to_the_count():
    assert wilson_of_rate(3 / 40, 40) == wilson_interval(3, 40)
    assert wilson_of_rate(0.3333333, 30) == wilson_interval(10, 30)


def test_stderr_uses_the_sample_variance():
    assert stderr(0.5, 5) == pytest.approx(0.25)  # √(0.25 / 4)
    assert stderr(1.0, 1) == 0.0


@pytest.mark.parametrize("only_a, only_b, p", [
    (1, 6, 0.125),   # 2 × (C(7,0) + C(7,1)) / 2⁷ = 2 × 8 / 128
    (0, 5, 0.0625),  # 2 × 1 / 2⁵
    (6, 1, 0.125),   # symmetric
    (3, 3, 1.0),     # 2 × 42 / 64 > 1: capped
    (0, 0, 1.0),     # no discordant pair: no evidence
])
def test_mcnemar_exact_p(only_a, only_b, p):
    assert mcnemar_p(only_a, only_b) == pytest.approx(p)


def test_paired_counts_the_shared_problems_only():
    a = {"x": True, "y": False, "z": False}
    b = {"x": True, "y": True, "z": True, "w": False}  # w: answered by b only, left out
    r = paired(a, b, reps=2000)
    assert (r["n"], r["only_a"], r["only_b"]) == (3, 0, 2)
    assert r["difference"] == pytest.approx(2 / 3)
    assert r["mcnemar_p"] == pytest.approx(0.5)  # 2 × 1 / 2²
    means = {0.0, 1 / 3, 2 / 3, 1.0}  # a resample of [0, 1, 1] has one of these means
    lo, hi = r["ci95"]
    assert any(lo == pytest.approx(m) for m in means) and any(hi == pytest.approx(m) for m in means)
    assert lo <= r["difference"] <= hi
    assert paired(a, b, reps=2000) == r  # seeded
