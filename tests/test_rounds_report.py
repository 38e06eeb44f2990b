"""Paired comparisons of a run's rounds: from crafted per-sample files with known discordant tables, and the
refusal to pair evals of different held-out problems."""
from __future__ import annotations

import json
import math
from pathlib import Path

from toolkit.core.jsonio import atomic_write_jsonl
from toolkit.eval.report import build_report
from toolkit.eval.rounds_report import write_round_report

IDS = [f"heldout-{i}" for i in range(20)]


def _eval(run: Path, folder: str, right: set[int], ids: list[str] = IDS) -> dict:
    """A round's manifest record and its per-sample file: problems `right` (indices into ids) solved."""
    out = run / folder / "results.json"
    atomic_write_jsonl(out.parent / "samples_heldout.jsonl",
                       [{"id": pid, "strict_match": i in right, "flexible_extract": i in right}
                        for i, pid in enumerate(ids)])
    k = len(right)
    return {"n": len(ids), "strict_match": k / len(ids), "flexible_extract": k / len(ids), "results": str(out)}


def _exact_p(b: int, c: int) -> float:
    """Two-sided exact McNemar p, written out for the test: 2 * P(X <= min) for X ~ Binomial(b + c, 1/2)."""
    return min(1.0, 2 * sum(math.comb(b + c, k) for k in range(min(b, c) + 1)) / 2 ** (b + c))


def _run(tmp_path: Path) -> tuple[Path, dict]:
    run = tmp_path / "run"
    rounds = {
        "base": _eval(run, "eval-base", {0}),
        # round 0 against base: 9 right only in round 0, 1 only in base (problem 0 lost), 0 both.
        "round-0": _eval(run, "round-0/eval", set(range(1, 10))),
        # round 1 against round 0: 1 right only in round 1 (problem 10), 8 only in round 0 (2..9).
        "round-1": _eval(run, "round-1/eval", {1, 10}),
        # the first self-guided iteration against round 1: the same problems right, nothing discordant.
        "iter-1": _eval(run, "iter-1/eval", {1, 10}),
    }
    return run, rounds


def test_paired_rows_carry_the_exact_mcnemar_p_and_difference(tmp_path):
    run, rounds = _run(tmp_path)
    rows = write_round_report(run, rounds)
    assert rows == json.loads((run / "rounds.json").read_text())
    by = {(r["model"], c["against"]): c for r in rows for c in r["paired"]}
    assert set(by) == {("round-0", "base"), ("round-1", "round-0"), ("iter-1", "round-0"), ("iter-1", "round-1")}
    r0 = by["round-0", "base"]
    assert (r0["n"], r0["only_model"], r0["only_against"]) == (20, 9, 1)
    assert r0["difference"] == (9 - 1) / 20 and r0["mcnemar_p"] == _exact_p(9, 1) == 22 / 1024
    r1 = by["round-1", "round-0"]
    assert (r1["only_model"], r1["only_against"]) == (1, 8)
    assert r1["difference"] == -7 / 20 and r1["mcnemar_p"] == _exact_p(1, 8) == 20 / 512
    assert r1["ci95"][0] <= r1["difference"] <= r1["ci95"][1] < 0
    same = by["iter-1", "round-1"]
    assert same["difference"] == 0 and same["ci95"] == [0, 0] and same["mcnemar_p"] == 1.0
    assert by["iter-1", "round-0"] == {**r1, "against": "round-0"}
    # The per-round table keeps its rows; the paired rows follow it.
    md = (run / "rounds.md").read_text()
    assert md.startswith("| model | held-out n | strict match (95% CI) | flexible extract |")
    lo, hi = (100 * x for x in r1["ci95"])
    assert f"| round-1 | round-0 | 20 | -35.0 ({lo:+.1f} to {hi:+.1f}) | 1 | 8 | 0.0391 |" in md
    assert "| round-0 | base | 20 | +40.0 (" in md and "| 9 | 1 | 0.0215 |" in md
    # `toolkit report` renders them from rounds.json.
    report = build_report([run], tmp_path / "report").read_text()
    assert "| iter-1 | round-1 | 20 | +0.0 (+0.0 to +0.0) | 0 | 0 | 1 |" in report


def test_evals_of_different_problems_are_not_paired(tmp_path):
    run, rounds = _run(tmp_path)
    other = IDS[:18] + ["elsewhere-1", "elsewhere-2"]
    rounds["round-1"] = _eval(run, "round-1/eval", {1, 10}, ids=other)
    (run / "iter-1" / "eval" / "samples_heldout.jsonl").unlink()
    rows = write_round_report(run, rounds)
    by = {(r["model"], c["against"]): c for r in rows for c in r["paired"]}
    assert by["round-1", "round-0"] == {"against": "round-0",
                                        "refused": "held-out ids differ (2 only in round-1, 2 only in round-0)"}
    assert by["iter-1", "round-0"]["refused"].startswith("iter-1: no per-sample file ")
    assert "n" in by["round-0", "base"]  # the pairs that do match are still compared
    md = (run / "rounds.md").read_text()
    assert ("| round-1 | round-0 | – | not paired: held-out ids differ (2 only in round-1, 2 only in round-0) "
            "| – | – | – |") in md


def test_calculator_both_rows_carry_the_no_calculator_figure_and_its_paired_comparison(tmp_path):
    run, rounds = _run(tmp_path)
    # round 0 without the calculator: problems 1..5 right, so 4 right only with it (6..9), 1 only without (12).
    plain = _eval(run, "round-0/eval/no-calculator", {1, 2, 3, 4, 5, 12})
    rounds["round-0"].update(strict_match_no_calculator=plain["strict_match"],
                             flexible_extract_no_calculator=plain["flexible_extract"],
                             results_no_calculator=plain["results"])
    rows = {r["model"]: r for r in write_round_report(run, rounds)}
    r0 = rows["round-0"]
    assert r0["strict_match_no_calculator"] == 6 / 20 and r0["flexible_extract_no_calculator"] == 6 / 20
    lo, hi = r0["strict_no_calculator_ci95"]
    assert 0 < lo < 6 / 20 < hi < 1
    c = r0["calculator_paired"]
    assert (c["against"], c["n"], c["only_model"], c["only_against"]) == ("no calculator", 20, 4, 1)
    assert c["difference"] == 3 / 20 and c["mcnemar_p"] == _exact_p(4, 1)
    assert not any("calculator_paired" in r or "strict_match_no_calculator" in r
                   for name, r in rows.items() if name != "round-0")
    md = (run / "rounds.md").read_text()
    assert md.startswith("| model | held-out n | strict match (95% CI) | strict, no calculator (95% CI) | flexible")
    assert f"| round-0 | 20 | 45.0% ({r0['strict_ci95'][0]:.1%}–{r0['strict_ci95'][1]:.1%}) | 30.0% ({lo:.1%}–{hi:.1%}) | 45.0% |" in md
    assert "| base | 20 | 5.0% (" in md and "| – | 5.0% | 0 | 0 |" in md  # a model evaluated only once
    assert f"| round-0 | 20 | +15.0 ({100 * c['ci95'][0]:+.1f} to {100 * c['ci95'][1]:+.1f}) | 4 | 1 | 0.375 |" in md
