"""Per-round results of a distillation run: a JSON table, a Markdown table with paired comparisons of the
rounds, and an accuracy plot."""
from __future__ import annotations

from pathlib import Path

from toolkit.core.figures import pyplot, save_png
from toolkit.core.jsonio import atomic_write_json, atomic_write_text, read_jsonl
from toolkit.core.stats import paired, wilson_of_rate

SAMPLES = "samples_heldout.jsonl"  # the per-sample file each held-out eval writes beside its results.json


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


def _scores(rec: dict) -> dict[str, bool] | str:
    """Strict score per held-out id from the per-sample file beside the eval's results.json, or why there is none."""
    if not rec.get("results"):
        return "no per-sample file recorded"
    path = Path(rec["results"]).parent / SAMPLES
    if not path.is_file():
        return f"no per-sample file {path}"
    rows = read_jsonl(path)
    scores = {str(r["id"]): bool(r["strict_match"]) for r in rows}
    if not rows:
        return f"{path} is empty"
    if len(scores) != len(rows):
        return f"{path} repeats held-out ids"
    return scores


def compare(model: str, scores: dict[str, bool] | str, against: str, other: dict[str, bool] | str) -> dict:
    """`model` minus `against` on the same held-out problems: the difference in strict match, its 95% interval
    and the exact McNemar p; refused, with the reason, unless both per-sample files hold exactly the same ids."""
    for name, s in ((model, scores), (against, other)):
        if isinstance(s, str):
            return {"against": against, "refused": f"{name}: {s}"}
    if set(scores) != set(other):
        return {"against": against, "refused": f"held-out ids differ ({len(set(scores) - set(other))} only in "
                                               f"{model}, {len(set(other) - set(scores))} only in {against})"}
    p = paired(other, scores)  # a = the model compared against, b = this model: the difference is b - a
    return {"against": against, "n": p["n"], "difference": p["difference"], "ci95": p["ci95"],
            "only_model": p["only_b"], "only_against": p["only_a"], "mcnemar_p": p["mcnemar_p"]}


def add_paired(rows: list[dict], rounds: dict[str, dict]) -> list[dict]:
    """Each row's `paired` list: against round 0 and against the model before it (once if they are the same)."""
    scores = {name: _scores(rec) for name, rec in rounds.items()}
    for i, row in enumerate(rows):
        name = row["model"]
        refs = ["round-0"] if "round-0" in scores and name not in ("base", "round-0") else []
        if i > 0 and rows[i - 1]["model"] not in refs:
            refs.append(rows[i - 1]["model"])
        row["paired"] = [compare(name, scores[name], ref, scores[ref]) for ref in refs]
    return rows


def _paired_cells(c: dict) -> list[str]:
    if "refused" in c:
        return ["–", f"not paired: {c['refused']}", "–", "–", "–"]
    lo, hi = c["ci95"]
    return [str(c["n"]), f"{100 * c['difference']:+.1f} ({100 * lo:+.1f} to {100 * hi:+.1f})",
            str(c["only_model"]), str(c["only_against"]), f"{c['mcnemar_p']:.3g}"]


def paired_table(rows: list[dict]) -> str:
    """The rows' paired comparisons as Markdown; empty for rows without them (a run from before they existed)."""
    if not any(r.get("paired") for r in rows):
        return ""
    lines = ["", "Paired on the same held-out problems, each model against round 0 and against the model before "
             "it: the difference in strict match (model minus against, percentage points) with its 95% bootstrap "
             "interval (problems resampled), the discordant problems, and the exact two-sided McNemar p.", "",
             "| model | against | n | difference, points (95% CI) | right only in model | right only in against "
             "| McNemar p |", "|---|---|---:|---:|---:|---:|---:|"]
    lines += ["| " + " | ".join([r["model"], c["against"], *_paired_cells(c)]) + " |"
              for r in rows for c in r.get("paired", [])]
    return "\n".join(lines) + "\n"


def write_round_report(run_root: Path, rounds: dict[str, dict]) -> list[dict]:
    """rounds.json, rounds.md (with the paired comparisons) and accuracy.png in the run folder."""
    rows = add_paired(round_rows(rounds), rounds)
    atomic_write_json(run_root / "rounds.json", rows)
    atomic_write_text(run_root / "rounds.md", markdown_table(rows) + paired_table(rows))
    plot_rounds(rows, run_root / "accuracy.png")
    return rows


def plot_rounds(rows: list[dict], path: Path) -> None:
    plt = pyplot()

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
    save_png(fig, path)
