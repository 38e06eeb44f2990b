"""Compare two distillation runs on the same held-out problems: accuracy with 95% intervals and the paired difference.

The SIKeD experiment (CoT-only twin first; both recipes share data, student and teacher budget):

    .venv/bin/toolkit distill recipes/siked-cpu-easy-cot.yaml
    .venv/bin/toolkit distill recipes/siked-cpu-easy.yaml
    .venv/bin/python bench/siked_compare.py runs/siked-cpu-easy-cot runs/siked-cpu-easy \\
        --out bench/results/siked-cpu-easy/comparison.md
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from toolkit.core.jsonio import atomic_write_text
from toolkit.core.stats import paired, wilson_of_rate
from toolkit.eval.rounds_report import run_scores


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_a", type=Path, help="the baseline run folder (e.g. the CoT-only twin)")
    ap.add_argument("run_b", type=Path, help="the run compared with it (e.g. the mixed-strategy student)")
    ap.add_argument("--out", type=Path, required=True, help="Markdown file to write")
    args = ap.parse_args()
    lines = ["| run | model | held-out n | strict match (95% CI) | teacher requests | training rows |",
             "|---|---|---:|---:|---:|---:|"]
    finals = {}
    for run in (args.run_a, args.run_b):
        manifest = json.loads((run / "manifest.json").read_text())
        requests = sum(s.get("requested", 0) for k, s in manifest["stages"].items() if k.endswith("/rationales")) \
            + sum(s.get("requests", 0) + s.get("questions", 0) * manifest["recipe"]["distill"]["label_solves"]
                  for k, s in manifest["stages"].items() if k.endswith(("/questions", "/labels")))
        for model, r in manifest["summary"]["rounds"].items():
            lo, hi = wilson_of_rate(r["strict_match"], r["n"])
            lines.append(f"| {run.name} | {model} | {r['n']} | {r['strict_match']:.1%} ({lo:.1%}–{hi:.1%}) | "
                         f"{requests} | {r.get('rationales', 0)} |")
        finals[run] = list(manifest["summary"]["rounds"])[-1]
    scores = [run_scores(run, finals[run]) for run in (args.run_a, args.run_b)]
    for run, s in zip((args.run_a, args.run_b), scores):
        if isinstance(s, str):
            sys.exit(f"{run}: {s}")
    p = paired(*scores)
    lines += ["", f"Paired on the same {p['n']} held-out problems, {args.run_b.name}/{finals[args.run_b]} minus "
              f"{args.run_a.name}/{finals[args.run_a]}: {p['difference']:+.1%} (95% bootstrap interval "
              f"{p['ci95'][0]:+.1%} to {p['ci95'][1]:+.1%}); solved only by the first {p['only_a']}, only by the "
              f"second {p['only_b']}; exact McNemar p = {p['mcnemar_p']:.3f}."]
    strategies = args.run_b / "strategies.json"
    if strategies.is_file():
        lines += ["", "Per strategy, " + args.run_b.name + " (share chosen, accuracy when chosen):", "",
                  "| model | strategy | held-out | own samples |", "|---|---|---|---|"]
        for r in json.loads(strategies.read_text()):
            cells = [("–" if c is None else f"{c['share']:.0%} ({c['chosen']}), "
                      + ("–" if c["accuracy"] is None else f"{c['accuracy']:.0%}"))
                     for c in (r["heldout"], r["self_samples"])]
            lines.append(f"| {r['model']} | {r['strategy']} | {cells[0]} | {cells[1]} |")
    atomic_write_text(args.out, "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
