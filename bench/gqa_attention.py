"""Torch round evals with grouped key/value heads handed to SDPA as they are (eval/gqa_attention.py) against
transformers' own attention, which copies them per query head: seconds and identical answers.

    python bench/gqa_attention.py --problems 60 --reps 2 --out bench/results/gqa_attention.json

The base student answers the first --problems held-out problems of the recipe's split, greedy, with the
calculator as the recipe sets it, batch --batch-size: as a round eval does. One model, loaded once; the two
attentions alternate, --reps times each, so a drift in the machine's speed falls on both. The answers must be
byte for byte the same (the check the change rests on); the speed is the ratio within this run.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from _common import emit, machine, require_quiet

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="pkg:smollm2-135m-instruct")
    ap.add_argument("--recipe", type=Path, default=ROOT / "recipes" / "fdd-cpu-powered.yaml")
    ap.add_argument("--problems", type=int, default=60)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--force", action="store_true", help="time even on a busy machine")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    require_quiet(args.threads, args.force)

    # heavy optional runtime, imported on first use
    import torch

    from toolkit.runtime.models import resolve_model
    from toolkit.core.recipe import load_recipe
    from toolkit.eval.accuracy import evaluate
    from toolkit.eval.generate import TorchGenerator
    from toolkit.pipeline.distill import select_problems
    from toolkit.runtime.loading import load_model_and_tokenizer

    torch.set_num_threads(args.threads)
    recipe = load_recipe(args.recipe)
    heldout = select_problems(recipe)[1][: args.problems]
    model, tok = load_model_and_tokenizer(resolve_model(args.model))
    gen = TorchGenerator(model, tok, batch_size=args.batch_size, threads=args.threads)
    gen.calculator = gen.config["calculator"] = bool(recipe.eval.calculator)
    runs, outputs = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.reps):
            for grouped in (False, True):
                name = "grouped" if grouped else "copied"
                gen.grouped_attention = grouped
                out = Path(tmp) / f"{name}-{rep}" / "results.json"
                start = time.perf_counter()
                report = evaluate(gen, {"heldout": heldout}, out, model=args.model, max_new_tokens=
                                  recipe.eval.max_new_tokens)
                seconds = time.perf_counter() - start
                samples = [json.loads(x) for x in (out.parent / "samples_heldout.jsonl").read_text().splitlines()]
                outputs.setdefault(name, [s["output"] for s in samples])
                runs.append({"attention": name, "rep": rep, "seconds": round(seconds, 1),
                             "strict_match": report["results"]["heldout"]["strict_match"],
                             "identical_to_first_copied": sum(a == b for a, b in zip(outputs["copied"],
                                                                                   (s["output"] for s in samples))),
                             "load_avg_1m_after": round(os.getloadavg()[0], 2)})
                print(runs[-1], file=sys.stderr)
    speedups = [round(c["seconds"] / g["seconds"], 3) for c, g in zip(runs[::2], runs[1::2])]
    emit({"bench": "gqa_attention", "model": args.model, "problems": len(heldout),
          "split": f"first {len(heldout)} held-out problems of {args.recipe.relative_to(ROOT)}",
          "batch_size": args.batch_size, "max_new_tokens": recipe.eval.max_new_tokens,
          "calculator": gen.calculator, "runs": runs, "speedup_per_rep": speedups,
          "all_identical": all(r["identical_to_first_copied"] == len(heldout) for r in runs),
          "machine": machine(args.threads),
          "command": " ".join([".venv/bin/python", "bench/gqa_attention.py", *sys.argv[1:]])}, args.out)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
