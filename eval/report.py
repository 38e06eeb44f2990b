"""`toolkit report`: one Markdown report with plots from run folders, eval results and bench JSON files.

Every model × format × quant gets one row (and one point per plot): pooled accuracy with a 95%
Wilson interval from its eval results, decode speed, size, memory and roofline ratio from its
best bench row. A distillation run folder adds its per-round accuracy table, its paired comparisons of
the rounds (from rounds.json) and its curve; a run that went through deploy adds one row per export
from deploy/deploy.json (accuracy paired against the fp32 student, speed, size, the pick) and its plots.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from toolkit.core.errors import ToolkitError
from toolkit.core.figures import pyplot, save_png
from toolkit.core.jsonio import atomic_write_text
from toolkit.core.stats import wilson_interval, wilson_of_rate
from toolkit.eval.bench import load_bench
from toolkit.eval.bench import markdown as bench_markdown
from toolkit.eval.bench import resolve_local
from toolkit.eval.bench_runner import detect
from toolkit.eval.roofline import model_facts, ratio_text
from toolkit.eval.rounds_report import difference_text
from toolkit.eval.rounds_report import markdown_table as rounds_table
from toolkit.eval.rounds_report import paired_table
from toolkit.eval.rounds_report import plot_rounds


DEPLOY = "deploy.json"  # what a run's deploy stages write in runs/NAME/deploy/ (issue 16)


class ReportError(ToolkitError):
    """An input of `toolkit report` is missing or is none of: run folder, eval results, bench JSON, deploy.json."""


def _run_root(path: Path) -> Path | None:
    """The distillation run folder (the one holding manifest.json) that contains `path`, if any."""
    for parent in [path, *path.parents]:
        if (parent / "manifest.json").is_file() and ((parent / "rounds.json").is_file()
                                                     or any(parent.glob("round-*"))):
            return parent
    return None


def _locate(ref: str, base: Path) -> Path | None:
    """The file or folder a recorded path names: as given (absolute, or relative to here), else relative to `base`
    or the nearest folder above it that holds it (a run records paths relative to where it was started)."""
    path = Path(ref)
    if path.is_absolute() or path.exists():
        return path if path.exists() else None
    base = base.resolve()
    for folder in [base, *base.parents]:
        if (folder / path).exists():
            return folder / path
    return None


def _export_meta(path: Path) -> dict:
    for meta in (path / "export.json", path.parent / "export.json"):
        if meta.is_file():
            return json.loads(meta.read_text())
    return {}


def identity(ref: str, base: Path) -> str:
    """A short, stable name of the trained model behind `ref`: an export names its source; a path inside
    a run folder is `run/round-K` or `run/iter-K` (or `run/base`); other paths their file or folder name."""
    if ref.startswith("pkg:") or not ref:
        return ref
    path = _locate(ref, base) or base / ref
    source = _export_meta(path).get("source")
    # export.json records its source as {"ref": ..., "kind": ...}; a bare string is accepted too.
    source = source.get("ref") if isinstance(source, dict) else source
    if source and source != ref:
        return identity(str(source), path.parent)
    root = _run_root(path.resolve())
    if root is not None:
        rel = path.resolve().relative_to(root).parts
        if rel and re.fullmatch(r"(round|iter)-\d+", rel[0]):
            return f"{root.name}/{rel[0]}"
        if rel and rel[0] == "eval-base":
            return f"{root.name}/base"
        return f"{root.name}/{'/'.join(rel)}"
    return path.stem if path.suffix == ".gguf" else path.name


def _format_quant(model_path: Path, backend: str) -> tuple[str, str]:
    """format and quant of the model that produced eval results (its export.json, else its files)."""
    meta = _export_meta(model_path)
    if meta.get("format") and meta.get("quant"):
        return meta["format"], meta["quant"]
    try:
        facts = model_facts(*detect(model_path))
        return facts["format"], facts["quant"]
    except (ValueError, OSError, KeyError):
        # Nothing on disk says what it is (a hub id, a remote endpoint): the runtime that decoded it, and a dash.
        return {"llama.cpp": "gguf"}.get(backend, backend or "–"), "–"


def _base_student(results: Path) -> Path | None:
    """The base student's model file behind a run's `eval-base/results.json` (the recipe in its manifest names
    it), or None."""
    root = _run_root(results.resolve())
    if results.parent.name != "eval-base" or root is None:
        return None
    try:
        ref = json.loads((root / "manifest.json").read_text())["recipe"]["student"]["model"]
        return resolve_local(ref)
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ToolkitError):
        return None


def _eval_model_path(results: Path, model: str) -> Path:
    """The model file/folder behind a results file; a run's `round-K/eval/results.json` belongs to `round-K/student`,
    its `eval-base/results.json` to the recipe's student model."""
    if results.parent.name == "eval" and (results.parent.parent / "student").exists():
        return results.parent.parent / "student"
    base = _base_student(results)
    if base is not None:
        return base
    found = _locate(model, results.parent)
    if found is not None:
        return found
    try:
        return resolve_local(model)
    except ToolkitError:
        return Path(model)


def _load_deploy(path: Path) -> dict | None:
    """The deploy.json of a run's deploy stages, or None if `path` is no such file."""
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) and {"reference", "rows", "pick"} <= data.keys() else None


def collect(inputs: list[Path]) -> tuple[list[dict], list[dict], list[tuple[str, list[dict]]], list[dict]]:
    """(eval records, bench rows, [(run name, rounds rows)], deploy records) from files and folders (searched
    recursively). A folder holding a deploy.json is read from it alone: its exports' eval results and bench
    JSON are the deploy record's rows, not models of their own."""
    evals, benches, rounds, deploys = [], [], [], []
    for item in inputs:
        if not item.exists():
            raise ReportError(f"{item}: no such file or folder")
        files = sorted(item.rglob("*.json")) if item.is_dir() else [item]
        deploy_dirs = {f.parent: d for f in files if f.name == DEPLOY and (d := _load_deploy(f)) is not None}
        found = 0
        for f in files:
            if f.parent in deploy_dirs and f.name == DEPLOY:
                deploys.append(_deploy_record(f, deploy_dirs[f.parent]))
                found += 1
                continue
            if any(folder in deploy_dirs for folder in f.parents):
                continue
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
                    raise ReportError(f"{f}: neither eval results, bench JSON, a run's rounds.json nor its deploy.json")
                continue
            found += 1
        if not found:
            raise ReportError(f"{item}: holds no eval results, bench JSON, rounds.json or deploy.json")
    return _attach_no_calculator(evals), benches, rounds, deploys


def _attach_no_calculator(evals: list[dict]) -> list[dict]:
    """A run's second eval of the same model without the calculator (`<eval>/no-calculator/results.json`, from
    eval.calculator both) becomes the `no_calculator` figure of the eval beside it, not a model of its own."""
    by_file = {Path(e["file"]).resolve(): e for e in evals}
    kept = []
    for e in evals:
        path = Path(e["file"]).resolve()
        main = by_file.get(path.parent.parent / path.name) if path.parent.name == "no-calculator" else None
        if main is None:
            kept.append(e)
        else:
            main["no_calculator"] = {k: e[k] for k in ("n", "strict", "strict_ci95", "flexible")}
    return kept


def _decode_steps(row: dict, deploy_dir: Path) -> list[float]:
    """Per-token decode times, ms, of the bench row behind a deploy.json row (the one at its thread count, the
    fastest decode of those): its bench JSON as recorded, else the export folder's bench.json; [] if none."""
    cands = [_locate(row["bench"], deploy_dir) if row.get("bench") else None]
    if row.get("name"):
        cands.append(deploy_dir / row["name"] / "bench.json")
    path = next((c for c in cands if c is not None and c.is_file()), None)
    if path is None:
        return []
    try:
        rows = load_bench(path)
        same = [r for r in rows if r["threads"] == row.get("threads")] or rows
        best = max(same, key=lambda r: r["decode_tok_s"]["mean"])
        return [ms for s in best["samples"] for ms in s["decode_step_ms"]]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as exc:
        raise ReportError(f"{path}: not a bench JSON ({type(exc).__name__}: {exc})") from None


def _deploy_record(path: Path, data: dict) -> dict:
    """deploy.json with its run's name and each export's per-token decode times (for the latency plot)."""
    root = _run_root(path.resolve())
    deploy_dir = path.parent
    return {"run": root.name if root else path.resolve().parent.parent.name, "file": str(path), **data,
            "steps": {r["name"]: _decode_steps(r, deploy_dir) for r in data["rows"]},
            "reference_steps": _decode_steps(data["reference"], deploy_dir)}


def _eval_record(path: Path, data: dict) -> dict:
    model_path = _eval_model_path(path, data["model"])
    fmt, quant = _format_quant(model_path, data.get("backend", ""))
    # Pool the suites: k correct of n, so one accuracy per model (the table lists the suites).
    n = sum(r["n"] for r in data["results"].values())
    strict = sum(round(r["strict_match"] * r["n"]) for r in data["results"].values())
    flex = sum(round(r["flexible_extract"] * r["n"]) for r in data["results"].values())
    # An export's eval is named by the model it was exported from; inside a run folder the results' own place
    # names the model (run/round-K, run/base).
    if _export_meta(model_path).get("source"):
        name = identity(str(model_path), path.parent)
    elif _run_root(path.resolve()) is not None:
        name = identity(str(path.parent), path.parent)
    else:
        name = identity(data["model"], path.parent)
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
    """One line per model × format × quant; the strict match without the calculator is a column of its own
    when some model was also evaluated without it."""
    plain = any("no_calculator" in (r.get("eval") or {}) for r in rows)
    lines = ["| model | format | quant | suites (n) | strict match (95% CI) |"
             + (" strict, no calculator (95% CI) |" if plain else "") + " flexible | decode tok/s | "
             "ms/token p50 | size MB | peak RSS MB | roofline ceiling tok/s | ratio | threads |",
             "|---|---|---|---|---:|" + ("---:|" if plain else "") + "---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        e, b = r.get("eval"), r.get("bench")
        acc = ["–"] * (4 if plain else 3)
        if e:
            lo, hi = e["strict_ci95"]
            acc = [f"{e['suites']} ({e['n']})", f"{e['strict']:.1%} ({lo:.1%}–{hi:.1%})", f"{e['flexible']:.1%}"]
            if plain:
                nc = e.get("no_calculator")
                acc.insert(2, f"{nc['strict']:.1%} ({nc['strict_ci95'][0]:.1%}–{nc['strict_ci95'][1]:.1%})"
                           if nc else "–")
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


def _point(label: str, strict: float, ci95, x: float, xerr: float = 0.0, picked: bool = False) -> dict:
    """One point of an accuracy plot: strict match and its 95% interval (fractions; None: no bar) at x ± xerr."""
    return {"label": label, "strict": strict, "ci95": list(ci95) if ci95 else None, "x": x, "xerr": xerr,
            "picked": picked}


def _strict_ci(r: dict) -> list[float] | None:
    """A deploy.json row's 95% interval of strict match: as recorded, else the Wilson interval of its rate over n
    (the fp32 student without a per-sample file has none recorded); None without n."""
    if r.get("strict_ci95"):
        return r["strict_ci95"]
    return list(wilson_of_rate(r["strict_match"], r["n"])) if r.get("n") else None


def model_points(rows: list[dict], x_of) -> list[dict]:
    """Plot points of the models table: each row with both eval results and a bench row, x = x_of(bench)."""
    return [_point(f"{r['name']} {r['format']} {r['quant']}", r["eval"]["strict"], r["eval"]["strict_ci95"],
                   *x_of(r["bench"])) for r in rows if r.get("eval") and r.get("bench")]


def deploy_points(dep: dict, key: str, scale: float = 1.0) -> list[dict]:
    """Plot points of a deploy record: the fp32 student (where it has the figure) and each export with accuracy
    and figure `key` (times `scale`); the picked export is marked."""
    ref = dep["reference"]
    cands = [(f"{ref['model']} fp32 (reference)", ref, False)]
    cands += [(r["name"], r, r["name"] == dep["pick"].get("chosen")) for r in dep["rows"]]
    return [_point(label, r["strict_match"], _strict_ci(r), r[key] * scale, picked=picked)
            for label, r, picked in cands if r.get("strict_match") is not None and r.get(key) is not None]


def _scatter(points: list[dict], xlabel: str, path: Path, title: str = "") -> bool:
    """Accuracy (with its 95% interval) against x, one labelled point each (picked: a star); False, and no
    file, when there are no points."""
    if not points:
        return False
    plt = pyplot()

    fig, ax = plt.subplots(figsize=(6.4, 4), dpi=120)
    for p in points:
        acc, ci = 100 * p["strict"], p["ci95"]
        yerr = [[acc - 100 * ci[0]], [100 * ci[1] - acc]] if ci else None
        ax.errorbar([p["x"]], [acc], yerr=yerr, xerr=[p["xerr"]] if p["xerr"] else None,
                    marker="*" if p["picked"] else "o", markersize=12 if p["picked"] else 6, capsize=3)
        ax.annotate(p["label"] + (" (picked)" if p["picked"] else ""), (p["x"], acc), fontsize=7,
                    xytext=(4, 4), textcoords="offset points")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("strict accuracy, % (95% CI)")
    ax.set_ylim(bottom=0)
    ax.margins(x=0.2)  # room for the labels of the outermost points
    if title:
        ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_png(fig, path)
    return True


def _per_second(ms):
    """ms per token <-> tokens per second (its own inverse); 0 ms maps to infinity, not a division error."""
    ms = np.asarray(ms, dtype=float)
    return np.divide(1000.0, ms, out=np.full_like(ms, np.inf), where=ms > 0)


def _latency_plot(series: list[tuple[str, list[float]]], path: Path, title: str | None = None) -> bool:
    """The distribution (ECDF, log x) of per-token decode times, one line per model with the p50 and p99 in its
    legend, and tok/s on the top axis; False, and no file, when no model has samples."""
    series = [(label, steps) for label, steps in series if steps]
    if not series:
        return False
    plt = pyplot()
    # heavy optional runtime, imported on first use
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    fig, ax = plt.subplots(figsize=(6.4, 4), dpi=120)
    for label, steps in series:
        ms = np.sort(np.asarray(steps, dtype=float))
        p50, p99 = np.percentile(ms, [50, 99])  # linear interpolation, as the bench JSON's percentiles
        ax.step(ms, 100 * np.arange(1, len(ms) + 1) / len(ms), where="post",
                label=f"{label}: p50 {p50:.1f}, p99 {p99:.1f} ms ({len(ms)} tokens)")
    ax.set_xscale("log")
    ax.set_xlabel("decode time per token, ms (log scale)")
    ax.set_ylabel("tokens decoded at least this fast, %")
    top = ax.secondary_xaxis("top", functions=(_per_second, _per_second))
    top.set_xlabel("decode speed, tok/s")
    # Plain numbers (0.2, 6, 50; not 10⁻¹) at 1-2-5 steps, or at every integer step within a range of under a decade.
    lo, hi = min(min(steps) for _, steps in series), max(max(steps) for _, steps in series)
    subs = (1.0, 2.0, 5.0) if lo <= 0 or hi / lo > 10 else tuple(float(k) for k in range(1, 10))
    for axis in (ax.xaxis, top.xaxis):
        axis.set_major_locator(LogLocator(subs=subs))
        axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        axis.set_minor_formatter(NullFormatter())
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3, which="both")
    ax.legend(loc="lower right", fontsize=7, title=title, title_fontsize=8)
    fig.tight_layout()
    save_png(fig, path)
    return True


def _cell(value, fmt: str, scale: float | None = None) -> str:
    """A table cell: `value` (times `scale`) in format `fmt`, or a dash where it is missing (a failed export)."""
    if value is None:
        return "–"
    value = value if scale is None else value * scale
    return format(value + 0.0 if isinstance(value, float) else value, fmt)  # + 0.0: no "-0.0"


def paired_cells(row: dict) -> list[str]:
    """difference vs the fp32 student, points (95% CI), and the McNemar p; the reason where it was not paired."""
    c = row.get("paired")
    if not c:
        return ["–", "–"]
    return [difference_text(c), "–" if "refused" in c else f"{c['mcnemar_p']:.3g}"]


def _deploy_line(label: str, r: dict, paired: list[str], parity: str, picked: str) -> str:
    acc = _cell(r.get("strict_match"), ".1%")
    ci = _strict_ci(r) if r.get("strict_match") is not None else None
    if ci:
        acc += f" ({ci[0]:.1%}–{ci[1]:.1%})"
    p50, p99 = r.get("decode_ms_p50"), r.get("decode_ms_p99")
    cells = [label, r["format"], r["quant"], _cell(r.get("n"), "d"), acc, *paired,
             _cell(r.get("drop_upper_points"), ".1f"), _cell(r.get("decode_tok_s"), ".1f"),
             _cell(r.get("prefill_tok_s"), ".1f"), _cell(r.get("ttft_ms"), ".1f"),
             "–" if p50 is None else f"{p50:.2f} / {p99:.2f}", _cell(r.get("peak_rss_bytes"), ".0f", 1e-6),
             _cell(r.get("size_bytes"), ".1f", 1e-6), ratio_text({"ratio": r.get("roofline_ratio")}),
             _cell(r.get("threads"), "d"), parity, picked]
    return "| " + " | ".join(cells) + " |"


def deploy_table(dep: dict) -> str:
    """One row per export of a deploy record, the fp32 student first, then which export was picked and why."""
    ref, pick = dep["reference"], dep["pick"]
    lines = ["| export | format | quant | held-out n | strict match (95% CI) | vs fp32 student, points (95% CI) "
             "| McNemar p | largest drop in CI, points | decode tok/s | prefill tok/s | TTFT ms | ms/token p50 / p99 "
             "| peak RSS MB | size MB | roofline ratio | threads | parity | picked |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
             _deploy_line(f"{ref['model']} (fp32 student)", ref, ["reference", "–"], "–", "")]
    for r in dep["rows"]:
        passed = (r.get("parity") or {}).get("passed")
        lines.append(_deploy_line(r["name"], r, paired_cells(r), {True: "✓", False: "✗"}.get(passed, "–"),
                                  "✓" if r["name"] == pick.get("chosen") else ""))
    lines.append("")
    failed = [f"- {r['name']} failed: {r['error']}" for r in dep["rows"] if r.get("error")]
    lines += [*failed, ""] if failed else []
    rule = f"rule: {pick.get('rule')}, largest accuracy drop allowed {_cell(pick.get('max_accuracy_drop'), 'g')} points"
    reason = str(pick.get("reason") or "no reason recorded").rstrip(".")
    if pick.get("chosen"):
        bundle = f" Edge bundle: `{pick['bundle']}`." if pick.get("bundle") else ""
        lines.append(f"**Picked: {pick['chosen']}** ({rule}): {reason}.{bundle}")
    else:
        lines.append(f"**No export picked** ({rule}): {reason}.")
    return "\n".join(lines) + "\n"


def deploy_section(dep: dict, out: Path) -> list[str]:
    """The Markdown lines of one run's deploy section, and its PNGs in `out`."""
    run = dep["run"]
    calc = " with the calculator" if dep.get("calculator") else ""
    md = [f"## Deploy: {run}", "",
          f"Exports of `{dep['student']}`, each evaluated{calc} in its own runtime on the same held-out problems as "
          "the fp32 student and paired against it: the difference in strict match (export minus fp32 student, "
          "percentage points) with its 95% bootstrap interval, the exact McNemar p, and the largest drop that "
          "interval allows. Speed: the bench row with the fastest decode (mean over reps); ms/token from every "
          "decode step; ratio = measured decode ÷ memory-bandwidth ceiling.", "", deploy_table(dep)]
    plots = [(f"deploy-{run}-accuracy_vs_speed.png", "decode_tok_s", 1.0, "decode speed, tok/s (mean over reps)"),
             (f"deploy-{run}-accuracy_vs_size.png", "size_bytes", 1e-6, "file size, MB")]
    drawn = [png for png, key, scale, label in plots
             if _scatter(deploy_points(dep, key, scale), label, out / png, title=f"{run}: exports")]
    series = [(f"{dep['reference']['model']} fp32", dep["reference_steps"]),
              *[(r["name"], dep["steps"][r["name"]]) for r in dep["rows"]]]
    latency = f"deploy-{run}-decode_latency.png"
    if _latency_plot(series, out / latency, title=f"run {run}"):
        drawn.append(latency)
    for png in drawn:
        md += [f"![{png[:-4].replace('_', ' ')}]({png})", ""]
    return md


def build_report(inputs: list[Path], out: Path) -> Path:
    """Write out/report.md plus out/accuracy_vs_speed.png, out/accuracy_vs_size.png, out/decode_latency.png,
    one out/rounds-<run>.png per distillation run and out/deploy-<run>-{accuracy_vs_speed, accuracy_vs_size,
    decode_latency}.png per run with deploy/deploy.json (each plot where it has data); returns report.md's path."""
    evals, benches, rounds, deploys = collect(inputs)
    rows = merge(evals, benches)
    out.mkdir(parents=True, exist_ok=True)
    md = ["# toolkit report", "", "Inputs: " + ", ".join(f"`{p}`" for p in inputs), ""]
    if rows:
        md += ["## Models (model × format × quant)", "",
               "Accuracy pools the listed suites (greedy); speed is the bench row with the fastest decode "
               "(tok/s mean ± std over reps); ratio = measured decode ÷ memory-bandwidth ceiling.", "",
               models_table(rows)]
    plots = [("accuracy_vs_speed.png", lambda b: (b["decode_tok_s"]["mean"], b["decode_tok_s"]["std"]),
              "decode speed, tok/s (mean ± std over reps)"),
             ("accuracy_vs_size.png", lambda b: (b["file_size_bytes"] / 1e6,), "file size, MB")]
    drawn = [name for name, x_of, label in plots if _scatter(model_points(rows, x_of), label, out / name)]
    series = [(f"{r['name']} {r['format']} {r['quant']}", [ms for s in r["bench"].get("samples", [])
                                                          for ms in s["decode_step_ms"]])
              for r in rows if r.get("bench")]
    if _latency_plot(series, out / "decode_latency.png"):
        drawn.append("decode_latency.png")
    for name in drawn:
        md += [f"![{name[:-4].replace('_', ' ')}]({name})", ""]
    for run, rrows in rounds:
        png = f"rounds-{run}.png"
        plot_rounds(rrows, out / png)
        md += [f"## Distillation rounds: {run}", "", rounds_table(rrows) + paired_table(rrows),
               f"![accuracy per round]({png})", ""]
    for dep in deploys:
        md += deploy_section(dep, out)
    if benches:
        md += ["## All bench rows", "", bench_markdown(benches)]
    path = out / "report.md"
    atomic_write_text(path, "\n".join(md))
    return path
