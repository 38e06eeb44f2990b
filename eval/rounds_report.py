"""Per-round results of a distillation run: a JSON table, a Markdown table and an accuracy plot."""
from __future__ import annotations

from pathlib import Path

from toolkit.core.jsonio import atomic_write_json, atomic_write_text
from toolkit.core.stats import wilson_of_rate


def round_rows(rounds: dict[str, dict]) -> list[dict]:
    """One row per evaluated model (base, round-0, round-1, …) with accuracy, 95% interval and data."""
    rows = []
    for name, r in rounds.items():
        lo, hi = wilson_of_rate(r["strict_match"], r["n"])
        rows.append({"model": name, "n": r["n"], "strict_match": r["strict_match"],
                     "strict_ci95": [lo, hi], "flexible_extract": r["flexible_extract"],
                     "problems": r.get("problems", 0), "rationales": r.get("rationales", 0)})
    return rows


def markdown_table(rows: list[dict]) -> str:
    lines = ["| model | held-out n | strict match (95% CI) | flexible extract | training problems | rationales |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lo, hi = r["strict_ci95"]
        lines.append(f"| {r['model']} | {r['n']} | {r['strict_match']:.1%} ({lo:.1%}–{hi:.1%}) | "
                     f"{r['flexible_extract']:.1%} | {r['problems']} | {r['rationales']} |")
    return "\n".join(lines) + "\n"


def write_round_report(run_root: Path, rounds: dict[str, dict]) -> list[dict]:
    """rounds.json, rounds.md and accuracy.png in the run folder."""
    rows = round_rows(rounds)
    atomic_write_json(run_root / "rounds.json", rows)
    atomic_write_text(run_root / "rounds.md", markdown_table(rows))
    plot_rounds(rows, run_root / "accuracy.png")
    return rows


def plot_rounds(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display: files only
    import matplotlib.pyplot as plt

    x = list(range(len(rows)))
    acc = [100 * r["strict_match"] for r in rows]
    err = [[100 * (r["strict_match"] - r["strict_ci95"][0]) for r in rows],
           [100 * (r["strict_ci95"][1] - r["strict_match"]) for r in rows]]
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=120)
    ax.errorbar(x, acc, yerr=err, marker="o", capsize=4, label="strict match (95% CI)")
    ax.plot(x, [100 * r["flexible_extract"] for r in rows], marker="s", linestyle="--", label="flexible extract")
    ax.set_xticks(x, [r["model"] for r in rows])
    ax.set_ylabel(f"held-out accuracy, % (n={rows[0]['n']})")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    tmp = path.with_name("." + path.name + ".tmp")
    fig.savefig(tmp, format="png")
    plt.close(fig)
    tmp.replace(path)
