"""`toolkit report --compare RUN…`: which student to ship. Distillation runs side by side, one row per student
and one per export: held-out accuracy of base and distilled (paired), the no-calculator figure, training time
and peak memory, and each export's size, paired accuracy against its fp32 student and decode speed, with
the accuracy-against-speed and accuracy-against-size Pareto plots.

Students are paired with each other only when their per-sample files hold the same held-out ids (the same
data seed and held-out size); otherwise the cross-run column says why not.
"""
from __future__ import annotations

from pathlib import Path

from toolkit.core import untrusted_json
from toolkit.core.errors import ToolkitError
from toolkit.core.figures import pyplot, save_png
from toolkit.core.jsonio import atomic_write_json, atomic_write_text
from toolkit.eval.rounds_report import compare, difference_text, run_scores

MANIFEST_BYTES = 64 << 20  # a run's manifest is tens of kB; a run folder may come from elsewhere


class CompareError(ToolkitError):
    """An input of `toolkit report --compare` is not a finished distillation run folder."""


def _read(path: Path, what: str) -> dict:
    if not path.is_file():
        raise CompareError(f"{path.parent}: no {what} ({path.name}); --compare takes finished distillation run folders")
    return untrusted_json.load(path, max_bytes=MANIFEST_BYTES)


def _obj(d, key: str) -> dict:
    """d[key] where both are JSON objects, else {}: a hand-edited or hostile run folder is read, never trusted."""
    v = d.get(key) if isinstance(d, dict) else None
    return v if isinstance(v, dict) else {}


def _number(v) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _count(v) -> int | None:
    return int(v) if isinstance(v, int) and not isinstance(v, bool) else None


def _paired(v) -> dict | None:
    """A deploy row's paired comparison when it has every field the table prints, else None."""
    if not isinstance(v, dict):
        return None
    ci = v.get("ci95")
    ok = (all(_number(v.get(k)) is not None for k in ("difference", "mcnemar_p")) and isinstance(ci, list)
          and len(ci) == 2 and all(_number(x) is not None for x in ci))
    return {k: v[k] for k in ("against", "n", "difference", "ci95", "only_model", "only_against", "mcnemar_p")
            if k in v} if ok else None


def _final_round(manifest: dict, run: Path) -> str:
    """The round whose student the run handed on (summary.student: runs/NAME/round-K/student)."""
    student = _obj(manifest, "summary").get("student")
    if not isinstance(student, str) or not student.rstrip("/").endswith("/student"):
        raise CompareError(f"{run}: the run has no final student yet (its manifest's summary names none)")
    return Path(student).parent.name


def _training(manifest: dict) -> dict:
    """Seconds of every training stage together and the highest peak RSS among them (bytes)."""
    stages = [s for name, s in _obj(manifest, "stages").items() if name.endswith("/train") and isinstance(s, dict)]
    peaks = [p for p in (_number(s.get("peak_rss_bytes")) for s in stages) if p is not None]
    return {"train_seconds": round(sum(_number(s.get("seconds")) or 0.0 for s in stages), 1),
            "train_peak_rss_bytes": max(peaks, default=None)}


def run_rows(run: Path) -> list[dict]:
    """One row for the run's final student (fp32, torch) and one per export its deploy stages made."""
    manifest = _read(run / "manifest.json", "manifest")
    final = _final_round(manifest, run)
    rounds = _obj(_obj(manifest, "summary"), "rounds")
    recipe = _obj(manifest, "recipe")
    name = str(recipe.get("name") or run.name)
    student = str(_obj(recipe, "student").get("model", "?"))
    me, base = run_scores(run, final), run_scores(run, "base")
    mine = _obj(rounds, final)
    fp32 = {"run": name, "student": student, "model": final, "format": "torch", "quant": "fp32",
            "n": _count(mine.get("n")), "strict_match": _number(mine.get("strict_match")),
            "strict_match_no_calculator": _number(mine.get("strict_match_no_calculator")),
            "base_strict_match": _number(_obj(rounds, "base").get("strict_match")),
            "vs_base": compare(final, me, "base", base) if "base" in rounds else None,
            **_training(manifest), "size_bytes": None, "decode_tok_s": None, "threads": None,
            "roofline_ratio": None, "scores": me if isinstance(me, dict) else None}
    rows = [fp32]
    deploy_path = run / "deploy" / "deploy.json"
    deploy = untrusted_json.load(deploy_path, max_bytes=MANIFEST_BYTES) if deploy_path.is_file() else {}
    chosen = _obj(deploy, "pick").get("chosen")
    listed = deploy.get("rows")
    for r in listed if isinstance(listed, list) else []:
        if not isinstance(r, dict) or r.get("error"):
            continue
        rows.append({"run": name, "student": student, "model": final, "format": str(r.get("format")),
                     "quant": str(r.get("quant")), "n": _count(r.get("n")),
                     "strict_match": _number(r.get("strict_match")),
                     "vs_fp32": _paired(r.get("paired")),
                     "size_bytes": _number(r.get("size_bytes")), "decode_tok_s": _number(r.get("decode_tok_s")),
                     "threads": _count(r.get("threads")), "roofline_ratio": _number(r.get("roofline_ratio")),
                     "picked": r.get("name") == chosen})
    return rows


def pair_students(rows: list[dict]) -> None:
    """Each fp32 row's `vs_first`: its student minus the first run's, on the same held-out problems."""
    students = [r for r in rows if r["format"] == "torch"]
    first = students[0]
    for r in students[1:]:
        r["vs_first"] = compare(r["run"], r["scores"] or "no per-sample file", first["run"],
                                first["scores"] or "no per-sample file")


def pareto(points: list[tuple[float, float]]) -> list[bool]:
    """Whether each (x, accuracy) point is on the front: no other point is at least as good in both and better
    in one (higher x is better; pass -size for size)."""
    return [not any(a >= x and b >= y and (a, b) != (x, y) for a, b in points) for x, y in points]


def _pct(v) -> str:
    return "–" if v is None else f"{100 * v:.1f}"


def _mb(v) -> str:
    return "–" if v is None else f"{v / 1e6:.0f}"


def _num(v, fmt: str) -> str:
    return "–" if v is None else format(v, fmt)


def _diff(c: dict | None) -> str:
    return "–" if not c else difference_text(c) + ("" if "refused" in c else f", p {c['mcnemar_p']:.3g}")


def markdown(rows: list[dict]) -> str:
    students = [r for r in rows if r["format"] == "torch"]
    first = students[0]["run"]
    lines = ["# Students compared", "",
             "Held-out strict match (%). Paired differences in points with their 95% interval and the exact "
             "McNemar p; a pairing is refused where the held-out problems differ.", "",
             "## Distilled students (fp32, torch)", "",
             f"| run | student | n | base | distilled | vs base | no calculator | vs {first} | training s | "
             "training peak GB |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in students:
        lines.append(f"| {r['run']} | {r['student']} | {r['n']} | {_pct(r['base_strict_match'])} | "
                     f"{_pct(r['strict_match'])} | {_diff(r['vs_base'])} | {_pct(r['strict_match_no_calculator'])} | "
                     f"{_diff(r.get('vs_first')) if r['run'] != first else '(reference)'} | {r['train_seconds']} | "
                     f"{_num(r['train_peak_rss_bytes'] and r['train_peak_rss_bytes'] / 1e9, '.2f')} |")
    exports = [r for r in rows if r["format"] != "torch"]
    if exports:
        lines += ["", "## Exports", "", "`front`: on the Pareto front of accuracy against decode speed (s) and against "
                  "size (z) across every export here.", "",
                  "| run | format | quant | size MB | accuracy | vs fp32 | decode tok/s | threads | roofline | front |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for r in exports:
            front = ("s" if r.get("front_speed") else "") + ("z" if r.get("front_size") else "")
            lines.append(f"| {r['run']} | {r['format']} | {r['quant']}{' (picked)' if r.get('picked') else ''} | "
                         f"{_mb(r['size_bytes'])} | {_pct(r['strict_match'])} | {_diff(r.get('vs_fp32'))} | "
                         f"{_num(r['decode_tok_s'], '.1f')} | {r['threads'] or '–'} | "
                         f"{_num(r['roofline_ratio'], '.2f')} | {front or '–'} |")
    return "\n".join(lines) + "\n"


def plot(exports: list[dict], path: Path) -> bool:
    """Accuracy against decode tok/s and against size, one colour per run, the Pareto front joined."""
    pts = [r for r in exports if r["strict_match"] is not None and r["decode_tok_s"] and r["size_bytes"]]
    if not pts:
        return False
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    runs = sorted({r["run"] for r in pts})
    for ax, key, label, front in ((axes[0], "decode_tok_s", "decode tokens/s", "front_speed"),
                                  (axes[1], "size_bytes", "size (MB)", "front_size")):
        scale = 1e-6 if key == "size_bytes" else 1.0
        for i, run in enumerate(runs):
            mine = [r for r in pts if r["run"] == run]
            ax.scatter([r[key] * scale for r in mine], [100 * r["strict_match"] for r in mine], color=f"C{i}",
                       label=run)
            for r in mine:
                ax.annotate(r["quant"], (r[key] * scale, 100 * r["strict_match"]), fontsize=7,
                            xytext=(3, 3), textcoords="offset points")
        line = sorted((r[key] * scale, 100 * r["strict_match"]) for r in pts if r.get(front))
        ax.plot([x for x, _ in line], [y for _, y in line], color="grey", linestyle="--", linewidth=1)
        ax.set_xlabel(label)
        ax.set_ylabel("held-out strict match (%)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle("Students and exports: accuracy against speed and size (dashed: Pareto front)")
    fig.tight_layout()
    save_png(fig, path)
    return True


def compare_runs(runs: list[Path], out: Path) -> Path:
    """Write compare.md, compare.json and compare-pareto.png for `runs` into `out`; returns the Markdown path."""
    if len(set(runs)) != len(runs):
        raise CompareError("--compare: a run folder is named twice")
    rows = [row for run in runs for row in run_rows(run)]
    pair_students(rows)
    exports = [r for r in rows if r["format"] != "torch" and r["strict_match"] is not None]
    for key, sign, flag in (("decode_tok_s", 1, "front_speed"), ("size_bytes", -1, "front_size")):
        ranked = [r for r in exports if r.get(key)]
        for r, on in zip(ranked, pareto([(sign * r[key], r["strict_match"]) for r in ranked])):
            r[flag] = on
    out.mkdir(parents=True, exist_ok=True)
    md = out / "compare.md"
    text = markdown(rows)
    if plot(exports, out / "compare-pareto.png"):
        text += "\n![accuracy against speed and size](compare-pareto.png)\n"
    atomic_write_text(md, text)
    atomic_write_json(out / "compare.json", [{k: v for k, v in r.items() if k != "scores"} for r in rows])
    return md
