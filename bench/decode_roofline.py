"""Decode speed against the memory-bandwidth roofline; target: the best export of SmolLM2-135M at ≥ 50%.

    .venv/bin/python bench/decode_roofline.py [MODEL ...] [--threads 1,2] [--out bench/results/roofline]

MODEL defaults to the packaged SmolLM2-135M Q4_1 GGUF; pass export folders (e.g. an
onnxruntime-genai int4 folder from `toolkit export --format genai --quant int4`) to compare.
pp 128 / tg 128, 5 reps after 1 warm-up, like `toolkit bench`'s defaults. Refuses to measure on
a busy machine (DESIGN.md, contention trap); exit status 1 when no model reaches the target, when a
ratio is above 1 (a measurement error, not a result), or with one error line when the machine is busy.
Also writes OUT/bandwidth.json: the bench's read-only probe (1 thread and all cores) beside a plain
single-thread numpy `a.sum()` over the same buffer, measured in this process, so the probe can be checked.
"""
from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

import numpy as np

from toolkit.core.errors import ToolkitError
from toolkit.eval.bench import markdown, run_bench, write_outputs
from toolkit.eval.config import BenchConfig
from toolkit.eval.machine import PROBE_RUNS, cores, probe_buffer_bytes, read_bandwidth

TARGET = 0.5  # measured decode tok/s ÷ roofline ceiling


def numpy_sum_gbps(size: int, runs: int = PROBE_RUNS) -> float:
    """A plain float64 `a.sum()` (one thread) over `size` bytes: bytes read / best time, in GB/s."""
    a = np.ones(size // 8)
    a.sum()
    best = float("inf")
    for _ in range(runs):
        t0 = time.perf_counter()
        a.sum()
        best = min(best, time.perf_counter() - t0)
    return round(a.nbytes / best / 1e9, 2)


def bandwidth_check() -> dict:
    """The bench's probe at 1 thread and at all cores, and numpy's sum, one after the other in this process."""
    size = probe_buffer_bytes()
    return {"created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "buffer_bytes": size,
            "probe_1_thread_GBps": read_bandwidth(1, size)["GBps"],
            f"probe_{cores()}_threads_GBps": read_bandwidth(cores(), size)["GBps"],
            "numpy_sum_1_thread_GBps": numpy_sum_gbps(size)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", default=["pkg:smollm2-135m-instruct"])
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--out", default="bench/results/roofline")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for model in args.models:
        runs = [run_bench(model, BenchConfig(), int(t)) for t in args.threads.split(",")]
        write_outputs(runs, out / f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', model).strip('_')}.json")
        rows += runs
    check = bandwidth_check()
    (out / "bandwidth.json").write_text(json.dumps(check, indent=2) + "\n")
    print(markdown(rows))
    print("bandwidth (GB/s, same process): " + ", ".join(f"{k} {v}" for k, v in check.items() if k.endswith("GBps")))
    wrong = [r for r in rows if r["roofline"]["above_ceiling"]]
    for r in wrong:
        print(f"measurement error: {r['model']} {r['threads']} thread(s) decoded above its ceiling "
              f"({r['roofline']['ratio']:.2f}×): the bandwidth or the byte count is wrong")
    valid = [r for r in rows if r["roofline"]["ratio"] is not None and not r["roofline"]["above_ceiling"]]
    if not valid:
        return 1
    best = max(valid, key=lambda r: r["roofline"]["ratio"])
    ratio = best["roofline"]["ratio"]
    print(f"best: {best['model']} {best['format']} {best['quant']} {best['threads']} thread(s): "
          f"{best['decode_tok_s']['mean']:.1f} tok/s = {ratio:.0%} of {best['roofline']['ceiling_tok_s']:.0f} "
          f"(target ≥ {TARGET:.0%}: {'met' if ratio >= TARGET else 'missed'})")
    return 0 if ratio >= TARGET and not wrong else 1


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except ToolkitError as exc:  # e.g. a busy machine: one line, no figures
        raise SystemExit(f"error: {exc}") from None
