"""`toolkit bench`: time to first token, prefill and decode tokens/s, peak RSS and the roofline of one model.

The model runs in a child process (or on a device over ssh, see remote.py); this side resolves
the model, counts the bytes a decode step reads, and turns raw per-rep samples into the Bench
JSON of DESIGN.md plus CSV and Markdown tables.
"""
from __future__ import annotations

import csv
import io
import json
import statistics
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import numpy as np

from toolkit.core.defaults import default_threads
from toolkit.core.errors import ToolkitError
from toolkit.runtime.models import resolve_model
from toolkit.eval.bench_runner import detect
from toolkit.eval.config import BenchConfig
from toolkit.eval.remote import BenchError, LocalExecutor, RemoteExecutor
from toolkit.eval.roofline import model_facts, ratio_text, roofline
from toolkit.core.integrity import check_gguf, check_hf_folder, check_onnx_folder
from toolkit.core.jsonio import atomic_write_json, atomic_write_text


class BusyMachineError(ToolkitError):
    """Other work occupies the cores the benchmark needs; figures taken now would measure contention."""


def stats(values: list[float]) -> dict:
    """mean, sample std (n−1, as llama-bench), and linearly interpolated p50/p90/p99."""
    arr = np.asarray(values, dtype=float)
    p50, p90, p99 = (float(x) for x in np.percentile(arr, [50, 90, 99]))
    return {"mean": float(arr.mean()), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "p50": p50, "p90": p90, "p99": p99, "n": len(values)}


def resolve_local(model: str) -> Path:
    """A model reference (pkg:…, .gguf, export folder, HF folder, .tar.gz bundle) as a local path."""
    if Path(model).exists():
        return Path(model)
    ref = resolve_model(model)
    if ref.path is None:
        raise BenchError(f"{model}: bench needs a local model file or folder (a hub id is not downloaded here)")
    return ref.path


def run_sweep(model: str, config: BenchConfig, out: Path, status: Callable[[int], AbstractContextManager] =
              lambda threads: nullcontext()) -> tuple[list[dict], list[Path]]:
    """`toolkit bench`: one Bench JSON row per thread count of `config.threads` (default: the cores this process
    may use), here or on `config.remote`, written to `out` with .csv and .md beside it; returns the rows and
    those three paths. `status(threads)` wraps the measurement of each row (a progress line)."""
    remote = (RemoteExecutor(config.remote, resolve_local(model), config.remote_python, tuple(config.ssh_option))
              if config.remote else nullcontext(None))
    rows: list[dict] = []
    try:
        with remote as executor:
            for threads in config.threads or [default_threads()]:
                with status(threads):
                    rows.append(run_bench(model, config, threads, executor=executor))
    finally:  # a sweep stopped part way (busy machine, lost device) keeps the rows it measured
        if rows:
            paths = write_outputs(rows, out)
    return rows, paths


def run_bench(model: str, config: BenchConfig, threads: int, executor=None) -> dict:
    """One Bench JSON row at `threads` threads (the workload from `config`; its own `threads` is the sweep that
    run_sweep walks). `executor` runs the runner spec (default: a local child process)."""
    prompt_tokens, gen_tokens, reps = config.prompt_tokens, config.gen_tokens, config.reps
    if min(prompt_tokens, gen_tokens, reps, threads) < 1:
        raise BenchError("--prompt-tokens, --gen-tokens, --reps and --threads must be at least 1")
    path = resolve_local(model)
    try:
        backend, model_path = detect(path)
    except ValueError as exc:
        raise BenchError(str(exc)) from None
    # Refuse a truncated or corrupt model here, in one line, before its facts are read or a runner starts.
    {"llama.cpp": check_gguf, "genai": check_onnx_folder, "onnx": check_onnx_folder}.get(backend, check_hf_folder)(model_path)
    facts = model_facts(backend, model_path)
    executor = executor or LocalExecutor()
    spec = {"model": str(path), "prompt_tokens": prompt_tokens, "gen_tokens": gen_tokens, "reps": reps,
            "warmup": config.warmup, "threads": threads, "allow_busy": config.allow_busy}
    result = executor(spec)
    if result.get("error") == "busy":
        check = result["busy_check"]
        who = ", ".join(f"{p['comm']} (pid {p['pid']}) {p['cores']:.2f}" for p in check.get("top", [])[:3])
        raise BusyMachineError(
            f"{executor.where} is busy: other processes used {check['others_cores']:.2f} of {check['cores']} cores "
            f"over the last {check.get('window_s', 0):.1f} s{f' ({who})' if who else ''}, leaving no room for "
            f"{threads} thread(s); wait for a quiet machine or pass --allow-busy (figures flagged)")
    if "error" in result:
        raise BenchError(f"bench of {model} failed on {executor.where}: {result['error']}")
    return summarize(model, facts, spec, result, executor.where)


def summarize(model: str, facts: dict, spec: dict, result: dict, where: str) -> dict:
    """The Bench JSON of DESIGN.md from the runner's raw samples."""
    samples = result["samples"]
    decode = stats([s["decode_tok_s"] for s in samples])
    machine = result["machine"]
    return {
        "model": model, "model_path": result["model_path"], "backend": result["backend"],
        "format": facts["format"], "quant": facts["quant"], "file_size_bytes": facts["file_size_bytes"],
        "threads": spec["threads"], "prompt_tokens": spec["prompt_tokens"], "gen_tokens": spec["gen_tokens"],
        "reps": spec["reps"], "warmup": spec["warmup"],
        "ttft_ms": stats([s["ttft_ms"] for s in samples]),
        "prefill_tok_s": stats([s["prefill_tok_s"] for s in samples]),
        "decode_tok_s": decode,
        "decode_ms_per_token": stats([ms for s in samples for ms in s["decode_step_ms"]]),
        "peak_rss_bytes": result["peak_rss_bytes"], "load_s": result["load_s"],
        "machine": machine, "host": where,
        "busy": machine["busy_check"]["busy"],
        "roofline": roofline(facts, machine.get("mem_bw_GBps"), decode["mean"], spec["prompt_tokens"],
                             spec["gen_tokens"]),
        "samples": samples, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


CSV_COLUMNS = ("model", "format", "quant", "backend", "host", "threads", "prompt_tokens", "gen_tokens", "reps",
               "ttft_ms_mean", "prefill_tok_s_mean", "prefill_tok_s_std", "decode_tok_s_mean", "decode_tok_s_std",
               "decode_ms_p50", "decode_ms_p90", "decode_ms_p99", "peak_rss_bytes", "file_size_bytes",
               "mem_bw_GBps", "ceiling_tok_s", "roofline_ratio", "above_ceiling", "busy")


def flat_row(r: dict) -> dict:
    lat = r["decode_ms_per_token"]
    return {"model": r["model"], "format": r["format"], "quant": r["quant"], "backend": r["backend"],
            "host": r["host"], "threads": r["threads"], "prompt_tokens": r["prompt_tokens"],
            "gen_tokens": r["gen_tokens"], "reps": r["reps"], "ttft_ms_mean": r["ttft_ms"]["mean"],
            "prefill_tok_s_mean": r["prefill_tok_s"]["mean"], "prefill_tok_s_std": r["prefill_tok_s"]["std"],
            "decode_tok_s_mean": r["decode_tok_s"]["mean"], "decode_tok_s_std": r["decode_tok_s"]["std"],
            "decode_ms_p50": lat["p50"], "decode_ms_p90": lat["p90"], "decode_ms_p99": lat["p99"],
            "peak_rss_bytes": r["peak_rss_bytes"], "file_size_bytes": r["file_size_bytes"],
            "mem_bw_GBps": r["roofline"]["mem_bw_GBps"], "ceiling_tok_s": r["roofline"]["ceiling_tok_s"],
            "roofline_ratio": r["roofline"]["ratio"], "above_ceiling": r["roofline"]["above_ceiling"],
            "busy": r["busy"]}


def markdown(rows: list[dict]) -> str:
    """llama-bench-like table: pp and tg as mean ± std, latency percentiles, memory, roofline."""
    lines = ["| model | format | quant | threads | size MB | ttft ms | pp t/s | tg t/s | ms/token p50/p90/p99 "
             "| peak RSS MB | ceiling t/s | ratio |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lat, roof = r["decode_ms_per_token"], r["roofline"]
        ceiling = f"{roof['ceiling_tok_s']:.0f}" if roof["ceiling_tok_s"] else "–"
        flag = " (busy)" if r["busy"] else ""
        lines.append(
            f"| {Path(r['model']).name}{flag} | {r['format']} | {r['quant']} | {r['threads']} | "
            f"{r['file_size_bytes'] / 1e6:.1f} | {r['ttft_ms']['mean']:.1f} | "
            f"{r['prefill_tok_s']['mean']:.1f} ± {r['prefill_tok_s']['std']:.1f} | "
            f"{r['decode_tok_s']['mean']:.1f} ± {r['decode_tok_s']['std']:.1f} | "
            f"{lat['p50']:.1f} / {lat['p90']:.1f} / {lat['p99']:.1f} | {r['peak_rss_bytes'] / 1e6:.0f} | "
            f"{ceiling} | {ratio_text(roof)} |")
    return "\n".join(lines) + "\n"


def write_outputs(rows: list[dict], out: Path) -> list[Path]:
    """out (JSON: one object, or a list for a thread sweep), and the same rows as .csv and .md beside it."""
    atomic_write_json(out, rows[0] if len(rows) == 1 else rows)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS)
    writer.writeheader()
    writer.writerows(flat_row(r) for r in rows)
    csv_path, md_path = out.with_suffix(".csv"), out.with_suffix(".md")
    atomic_write_text(csv_path, buf.getvalue())
    atomic_write_text(md_path, markdown(rows))
    return [out, csv_path, md_path]


def load_bench(path: Path) -> list[dict]:
    """Bench rows from a bench JSON file (an object or a sweep list)."""
    data = json.loads(Path(path).read_text())
    return data if isinstance(data, list) else [data]
