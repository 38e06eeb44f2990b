"""`toolkit report`: one Markdown report with plots from run folders, eval results and bench JSON files.

Every model × format × quant gets one row (and one point per plot): pooled accuracy with a 95%
Wilson interval from its eval results, decode speed, size, memory and roofline ratio from its
best bench row. A distillation run folder adds its per-round accuracy table, its paired comparisons of
the rounds (from rounds.json) and its curve.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from toolkit.core.errors import ToolkitError
from toolkit.core.figures import pyplot, save_png
from toolkit.core.jsonio import atomic_write_text
from toolkit.core.stats import wilson_interval
from toolkit.eval.bench import markdown as bench_markdown
from toolkit.eval.bench import resolve_local
from toolkit.eval.bench_runner import detect
from toolkit.eval.roofline import model_facts, ratio_text
from toolkit.eval.rounds_report import markdown_table as rounds_table
from toolkit.eval.rounds_report import paired_table
from toolkit.eval.rounds_report import plot_rounds


class ReportError(ToolkitError):
    """An input of `toolkit report` is missing or is none of: run folder, eval results, bench JSON."""


def _run_root(path: Path) -> Path | None:
    """The distillation run folder (the one holding manifest.json) that contains `path`, if any."""
    for parent in [path, *path.parents]:
        if (parent / "manifest.json").is_file() and ((parent / "rounds.json").is_file()
                                                     or any(parent.glob("round-*"))):
            return parent
    return None


def _export_meta(path: Path) -> dict:
    for meta in (path / "export.json", path.parent / "export.json"):
        if meta.is_file():
            return json.loads(meta.read_text())
    return {}


def identity(ref: str, base: Path) -> str:
    """A short, stable name of the trained model behind `ref`: an export names its source; a path inside
    a run folder is `run/round-K` (or `run/base`); other paths their file or folder name."""
    if ref.startswith("pkg:") or not ref:
        return ref
    path = Path(ref) if Path(ref).is_absolute() or Path(ref).exists() else base / ref
    meta = _export_meta(path)
    if meta.get("source") and meta["source"] != ref:
        return identity(str(meta["source"]), path.parent)
    root = _run_root(path.resolve())
    if root is not None:
        rel = path.resolve().relative_to(root).parts
        if rel and re.fullmatch(r"round-\d+", rel[0]):
            return f"{root.name}/{rel[0]}"
        if rel and rel[0] == "eval-base":
            return f"{root.name}/base"
        return f"{root.name}/{'/'.join(rel)}"
    return path.stem if path.suffix == ".gguf" else path.name


def _format_quant(model_path: Path, backend: str) -> tuple[str, str]:
    """format and quant of the model that produced eval results (its export.json, else its files)."""
    try:
        facts = model_facts(*detect(model_path))
        return facts["format"], facts["quant"]
    except (ValueError, OSError, KeyError):
        return {"llama.cpp": "gguf"}.get(backend, backend or "?"), "?"


def _eval_model_path(results: Path, model: str) -> Path:
    """The model file/folder behind a results file; a run's `round-K/eval/results.json` belongs to `round-K/student`."""
    if results.parent.name == "eval" and (results.parent.parent / "student").exists():
        return results.parent.parent / "student"
    for cand in (Path(model), results.parent / model):
        if cand.exists():
            return cand
    try:
        return resolve_local(model)
    except ToolkitError:
        return Path(model)


def collect(inputs: list[Path]) -> tuple[list[dict], list[dict], list[tuple[str, list[dict]]]]:
    """(eval records, bench rows, [(run name, rounds rows)]) from files and folders (searched recursively)."""
    evals, benches, rounds = [], [], []
    for item in inputs:
        if not item.exists():
            raise ReportError(f"{item}: no such file or folder")
        files = sorted(item.rglob("*.json")) if item.is_dir() else [item]
        found = 0
        for f in files:
            try:
                data = json.loads(f.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                if item.is_file():
                    raise ReportError(f"{f}: not JSON ({exc})") from None
                continue
            rows = data if isinstance(data, list) else [data]
            if rows and all(isinstance(r, dict) and "decode_tok_s" in r for r in rows):
                for r in rows:
                    r.setdefault("_name", identity(r["model"], f.parent))
                benches.extend(rows)
            elif isinstance(data, dict) and "results" in data and "model" in data:
                evals.append(_eval_record(f, data))
            elif f.name == "rounds.json" and rows and all("strict_ci95" in r for r in rows):
                rounds.append((f.parent.name, rows))
            else:
                if item.is_file():
                    raise ReportError(f"{f}: neither eval results, bench JSON nor a run's rounds.json")
                continue
            found += 1
        if not found:
            raise ReportError(f"{item}: holds no eval results, bench JSON or rounds.json")
    return evals, benches, rounds


def _eval_record(path: Path, data: dict) -> dict:
    model_path = _eval_model_path(path, data["model"])
    fmt, quant = _format_quant(model_path, data.get("backend", ""))
    # Pool the suites: k correct of n, so one accuracy per model (the table lists the suites).
    n = sum(r["n"] for r in data["results"].values())
    strict = sum(round(r["strict_match"] * r["n"]) for r in data["results"].values())
    flex = sum(round(r["flexible_extract"] * r["n"]) for r in data["results"].values())
    # Inside a run folder the results' own place names the model (run/round-K, run/base).
    in_run = _run_root(path.resolve()) is not None
    name = identity(str(path.parent), path.parent) if in_run else identity(data["model"], path.parent)
    return {"name": name, "format": fmt, "quant": quant,
            "suites": ",".join(data["results"]), "n": n, "strict": strict / n if n else 0.0,
            "strict_ci95": wilson_interval(strict, n), "flexible": flex / n if n else 0.0, "file": str(path)}


def merge(evals: list[dict], benches: list[dict]) -> list[dict]:
    """One row per (model, format, quant): the latest eval and the bench row with the fastest decode."""
    rows: dict[tuple, dict] = {}
    for e in evals:
        rows.setdefault((e["name"], e["format"], e["quant"]), {})["eval"] = e
    for b in benches:
        row = rows.setdefault((b["_name"], b["format"], b["quant"]), {})
        if "bench" not in row or b["decode_tok_s"]["mean"] > row["bench"]["decode_tok_s"]["mean"]:
            row["bench"] = b
    return [{"name": k[0], "format": k[1], "quant": k[2], **v} for k, v in sorted(rows.items())]


def models_table(rows: list[dict]) -> str:
    lines = ["| model | format | quant | suites (n) | strict match (95% CI) | flexible | decode tok/s | "
             "ms/token p50 | size MB | peak RSS MB | roofline ceiling tok/s | ratio | threads |",
             "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        e, b = r.get("eval"), r.get("bench")
        acc = ["–"] * 3
        if e:
            lo, hi = e["strict_ci95"]
            acc = [f"{e['suites']} ({e['n']})", f"{e['strict']:.1%} ({lo:.1%}–{hi:.1%})", f"{e['flexible']:.1%}"]
        perf = ["–"] * 7
        if b:
            roof, busy = b["roofline"], " (busy)" if b.get("busy") else ""
            perf = [f"{b['decode_tok_s']['mean']:.1f} ± {b['decode_tok_s']['std']:.1f}{busy}",
                    f"{b['decode_ms_per_token']['p50']:.2f}", f"{b['file_size_bytes'] / 1e6:.1f}",
                    f"{b['peak_rss_bytes'] / 1e6:.0f}",
                    f"{roof['ceiling_tok_s']:.0f}" if roof.get("ceiling_tok_s") else "–",
                    ratio_text(roof), str(b["threads"])]
        lines.append("| " + " | ".join([r["name"], r["format"], r["quant"], *acc, *perf]) + " |")
    return "\n".join(lines) + "\n"


def _scatter(rows: list[dict], x_of, xlabel: str, path: Path) -> bool:
    """Accuracy (with its 95% interval) against x, one labelled point per row that has both; False if none."""
    pts = [r for r in rows if r.get("eval") and r.get("bench")]
    if not pts:
        return False
    plt = pyplot()

    fig, ax = plt.subplots(figsize=(6.4, 4), dpi=120)
    for r in pts:
        e, x = r["eval"], x_of(r["bench"])
        lo, hi = e["strict_ci95"]
        ax.errorbar([x], [100 * e["strict"]], yerr=[[100 * (e["strict"] - lo)], [100 * (hi - e["strict"])]],
                    marker="o", capsize=3)
        ax.annotate(f"{r['name']} {r['format']} {r['quant']}", (x, 100 * e["strict"]), fontsize=7,
                    xytext=(4, 4), textcoords="offset points")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("strict accuracy, % (95% CI)")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_png(fig, path)
    return True


def build_report(inputs: list[Path], out: Path) -> Path:
    """Write out/report.md plus out/accuracy_vs_latency.png, out/accuracy_vs_size.png and one
    out/rounds-<run>.png per distillation run; returns the Markdown file's path."""
    evals, benches, rounds = collect(inputs)
    rows = merge(evals, benches)
    out.mkdir(parents=True, exist_ok=True)
    md = ["# toolkit report", "", "Inputs: " + ", ".join(f"`{p}`" for p in inputs), ""]
    if rows:
        md += ["## Models (model × format × quant)", "",
               "Accuracy pools the listed suites (greedy); speed is the bench row with the fastest decode "
               "(tok/s mean ± std over reps); ratio = measured decode ÷ memory-bandwidth ceiling.", "",
               models_table(rows)]
    plots = [("accuracy_vs_latency.png", lambda b: b["decode_ms_per_token"]["p50"], "decode latency, ms/token (p50)"),
             ("accuracy_vs_size.png", lambda b: b["file_size_bytes"] / 1e6, "file size, MB")]
    drawn = [name for name, x_of, label in plots if _scatter(rows, x_of, label, out / name)]
    for name in drawn:
        md += [f"![{name[:-4].replace('_', ' ')}]({name})", ""]
    if rows and not drawn:
        md += ["(no plot: no model has both eval results and a bench row)", ""]
    for run, rrows in rounds:
        png = f"rounds-{run}.png"
        plot_rounds(rrows, out / png)
        md += [f"## Distillation rounds: {run}", "", rounds_table(rrows) + paired_table(rrows),
               f"![accuracy per round]({png})", ""]
    if benches:
        md += ["## All bench rows", "", bench_markdown(benches)]
    path = out / "report.md"
    atomic_write_text(path, "\n".join(md))
    return path
