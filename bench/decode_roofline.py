"""Decode speed against the memory-bandwidth roofline; target: the best export of SmolLM2-135M at ≥ 50%.

    .venv/bin/python bench/decode_roofline.py [MODEL ...] [--threads 1,2] [--out bench/results/roofline]

MODEL defaults to the packaged SmolLM2-135M Q4_1 GGUF; pass export folders (e.g. an
onnxruntime-genai int4 folder from `toolkit export --format genai --quant int4`) to compare.
pp 128 / tg 128, 5 reps after 1 warm-up, like `toolkit bench`'s defaults. Refuses to measure on
a busy machine (DESIGN.md, contention trap); exit status 1 when no model reaches the target, 1 with
one error line when the machine is busy.
"""
from __future__ import annotations

import argparse
import re
from pathlib import Path

from toolkit.errors import ToolkitError
from toolkit.eval.bench import markdown, run_bench, write_outputs

TARGET = 0.5  # measured decode tok/s ÷ roofline ceiling


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
        runs = [run_bench(model, threads=int(t)) for t in args.threads.split(",")]
        write_outputs(runs, out / f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', model).strip('_')}.json")
        rows += runs
    print(markdown(rows))
    best = max(rows, key=lambda r: r["roofline"]["ratio"] or 0.0)
    ratio = best["roofline"]["ratio"] or 0.0
    print(f"best: {best['model']} {best['format']} {best['quant']} {best['threads']} thread(s): "
          f"{best['decode_tok_s']['mean']:.1f} tok/s = {ratio:.0%} of {best['roofline']['ceiling_tok_s']:.0f} "
          f"(target ≥ {TARGET:.0%}: {'met' if ratio >= TARGET else 'missed'})")
    return 0 if ratio >= TARGET else 1


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except ToolkitError as exc:  # e.g. a busy machine: one line, no figures
        raise SystemExit(f"error: {exc}") from None
