"""Per-round results of a distillation run: a JSON table, a Markdown table with paired comparisons of the
rounds, and an accuracy plot."""
from __future__ import annotations

from pathlib import Path

from toolkit.core.figures import pyplot, save_png
from toolkit.core.jsonio import atomic_write_json, atomic_write_text, read_jsonl
from toolkit.core.stats import paired, wilson_of_rate

SAMPLES = "samples_heldout.jsonl"  # the per-sample file each held-out eval writes beside its results.json


def round_rows(rounds: dict[str, dict]) -> list[dict]:
    """One row per evaluated model (base, round-0, round-1, …) with accuracy, 95% interval and data; with
    eval.calculator "both" also its strict match without the calculator and that figure's 95% interval."""
    rows = []
    for name, r in rounds.items():
        lo, hi = wilson_of_rate(r["strict_match"], r["n"])
        row = {"model": name, "n": r["n"], "strict_match": r["strict_match"],
               "strict_ci95": [lo, hi], "flexible_extract": r["flexible_extract"],
               "problems": r.get("problems", 0), "rationales": r.get("rationales", 0)}
        if "strict_match_no_calculator" in r:
            row.update(strict_match_no_calculator=r["strict_match_no_calculator"],
                       strict_no_calculator_ci95=list(wilson_of_rate(r["strict_match_no_calculator"], r["n"])),
                       flexible_extract_no_calculator=r["flexible_extract_no_calculator"])
        rows.append(row)
    return rows


def markdown_table(rows: list[dict]) -> str:
    """The rounds as Markdown; the no-calculator column only when some row was also evaluated without it."""
    plain = any("strict_match_no_calculator" in r for r in rows)
    lines = ["| model | held-out n | strict match (95% CI) |" + (" strict, no calculator (95% CI) |" if plain else "")
             + " flexible extract | training problems | rationales |",
             "|---|---:|---:|" + ("---:|" if plain else "") + "---:|---:|---:|"]
    for r in rows:
        lo, hi = r["strict_ci95"]
        cells = [r["model"], str(r["n"]), f"{r['strict_match']:.1%} ({lo:.1%}–{hi:.1%})"]
        if plain:
            cells.append(_strict_no_calculator(r))
        cells += [f"{r['flexible_extract']:.1%}", str(r["problems"]), str(r["rationales"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _strict_no_calculator(row: dict) -> str:
    if "strict_match_no_calculator" not in row:
        return "–"
    lo, hi = row["strict_no_calculator_ci95"]
    return f"{row['strict_match_no_calculator']:.1%} ({lo:.1%}–{hi:.1%})"


def eval_dir(run: Path, model: str) -> Path:
    """Where a run folder keeps one model's held-out eval: eval-base/ for the base student, <round>/eval/ else."""
    return run / "eval-base" if model == "base" else run / model / "eval"


def scores_at(path: Path) -> dict[str, bool] | str:
    """Strict score per held-out id from one per-sample file, or why it cannot be paired."""
    if not path.is_file():
        return f"no per-sample file {path}"
    rows = read_jsonl(path)
    scores = {str(r["id"]): bool(r["strict_match"]) for r in rows}
    if not rows:
        return f"{path} is empty"
    if len(scores) != len(rows):
        return f"{path} repeats held-out ids"
    return scores


def strict_scores(rec: dict, key: str = "results") -> dict[str, bool] | str:
    """Strict score per held-out id from the per-sample file beside the eval's results.json (`key`: the record's
    path to it; results_no_calculator for the eval without the calculator), or why there is none."""
    if not rec.get(key):
        return "no per-sample file recorded"
    return scores_at(Path(rec[key]).parent / SAMPLES)


def run_scores(run: Path, model: str) -> dict[str, bool] | str:
    """strict_scores for one model of a run folder found by its layout, wherever the folder now lies (the
    manifest's recorded paths are relative to where the run was made)."""
    return scores_at(eval_dir(run, model) / SAMPLES)


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
    scores = {name: strict_scores(rec) for name, rec in rounds.items()}
    for i, row in enumerate(rows):
        name = row["model"]
        refs = ["round-0"] if "round-0" in scores and name not in ("base", "round-0") else []
        if i > 0 and rows[i - 1]["model"] not in refs:
            refs.append(rows[i - 1]["model"])
        row["paired"] = [compare(name, scores[name], ref, scores[ref]) for ref in refs]
        if "strict_match_no_calculator" in row:
            row["calculator_paired"] = compare(name, scores[name], "no calculator",
                                               strict_scores(rounds[name], "results_no_calculator"))
    return rows


def difference_text(c: dict) -> str:
    """A paired comparison's difference in points with its 95% interval, as every table shows it:
    "+2.5 (-5.0 to +10.0)"; the reason where the two were not paired."""
    if "refused" in c:
        return f"not paired: {c['refused']}"
    lo, hi = c["ci95"]
    return f"{100 * c['difference']:+.1f} ({100 * lo:+.1f} to {100 * hi:+.1f})"


def _paired_cells(c: dict) -> list[str]:
    if "refused" in c:
        return ["–", difference_text(c), "–", "–", "–"]
    return [str(c["n"]), difference_text(c), str(c["only_model"]), str(c["only_against"]), f"{c['mcnemar_p']:.3g}"]


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


def calculator_table(rows: list[dict]) -> str:
    """Each model with the calculator against itself without it, as Markdown; empty unless eval.calculator was both."""
    if not any("calculator_paired" in r for r in rows):
        return ""
    lines = ["", "Calculator on against off, each model paired on the same held-out problems: the difference in "
             "strict match (with minus without, percentage points) with its 95% bootstrap interval, the discordant "
             "problems, and the exact two-sided McNemar p.", "",
             "| model | n | difference, points (95% CI) | right only with calculator | right only without "
             "| McNemar p |", "|---|---:|---:|---:|---:|---:|"]
    lines += ["| " + " | ".join([r["model"], *_paired_cells(r["calculator_paired"])]) + " |"
              for r in rows if "calculator_paired" in r]
    return "\n".join(lines) + "\n"


def write_round_report(run_root: Path, rounds: dict[str, dict]) -> list[dict]:
    """rounds.json, rounds.md (with the paired comparisons) and accuracy.png in the run folder."""
    rows = add_paired(round_rows(rounds), rounds)
    atomic_write_json(run_root / "rounds.json", rows)
    atomic_write_text(run_root / "rounds.md", markdown_table(rows) + paired_table(rows) + calculator_table(rows))
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
