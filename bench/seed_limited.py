"""Arms of a distillation experiment paired on the same held-out problems, each with its teacher ledger (issue 30).

An arm is one evaluated model: its per-sample file (a run's round-K/eval/samples_heldout.jsonl, or a committed
.jsonl.gz) and the manifest of the run that made it, read up to that model's round for the teacher requests and
completion tokens it cost (sent or answered from the cache) and the training problems and rows it learned from.
Every arm is paired with the reference arm (round 0) and with the control arm (the equal-budget rival), and --pair
adds any other pairing (an arm against the rival given its own budget): difference in strict match with its 95%
bootstrap interval and the exact McNemar p. Writes into --out: rounds.md (the tables), comparison.json, and
samples/<arm>.jsonl.gz for every arm, so that any pairing can be recomputed.

    python bench/seed_limited.py --out bench/results/fdd-seed-limited \\
        --arm "round 0=bench/results/fdd-cpu-powered/samples/fdd--round-0.jsonl.gz,bench/results/fdd-cpu-powered/manifest.json,round-0" \\
        --arm "FDD round 1=bench/results/fdd-cpu-powered/samples/fdd--round-1.jsonl.gz,bench/results/fdd-cpu-powered/manifest.json,round-1" \\
        --arm "more paths=runs/fdd-seed-limited-paths6/round-0/eval/samples_heldout.jsonl,runs/fdd-seed-limited-paths6/manifest.json,round-0" \\
        --reference "round 0" --control "more paths"
"""
from __future__ import annotations

import argparse
import gzip
import json
import re
import sys
from pathlib import Path

from budget_control import _round_of, paired_lines

from toolkit.core.jsonio import atomic_write_json, atomic_write_text
from toolkit.core.stats import wilson_of_rate
from toolkit.eval.rounds_report import compare


def _read_samples(path: Path) -> list[dict]:
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    return [json.loads(line) for line in raw.decode().splitlines() if line.strip()]


def teacher_cost(manifest: dict, through_round: int) -> dict:
    """Teacher requests and completion tokens of the run's stages up to `through_round`, sent or answered from
    the cache alike (a cached answer was paid for once, by whichever run asked first)."""
    requests = tokens = 0
    for name, stage in manifest["stages"].items():
        t, k = stage.get("teacher"), _round_of(name)
        if t and k is not None and k <= through_round:
            cached = t.get("cached", {})
            requests += t.get("requests_sent", 0) + cached.get("requests", 0)
            tokens += t.get("completion_tokens", 0) + cached.get("completion_tokens", 0)
    return {"requests": requests, "completion_tokens": tokens}


def load_arm(label: str, spec: str) -> dict:
    """One arm from 'SAMPLES,MANIFEST,MODEL': its per-problem strict scores and its ledger up to MODEL's round."""
    try:
        samples, manifest_path, model = spec.split(",")
    except ValueError:
        sys.exit(f"--arm {label}: expected SAMPLES,MANIFEST,MODEL, got {spec!r}")
    rows = _read_samples(Path(samples))
    manifest = json.loads(Path(manifest_path).read_text())
    k = int(model.removeprefix("round-")) if model.startswith("round-") else -1
    spend = teacher_cost(manifest, k)
    summary = manifest["summary"]["rounds"][model]
    return {"label": label, "samples": samples, "manifest": manifest_path, "model": model,
            "scores": {r["id"]: bool(r["strict_match"]) for r in rows}, "raw": rows,
            "training_problems": summary.get("problems", 0), "training_rows": summary.get("rationales", 0),
            "teacher_requests": spend["requests"], "completion_tokens": spend["completion_tokens"]}


def _slug(label: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arm", action="append", required=True, help="LABEL=SAMPLES,MANIFEST,MODEL")
    ap.add_argument("--reference", required=True, help="the arm every other is paired against first (round 0)")
    ap.add_argument("--control", required=True, help="the equal-budget rival every feedback arm is paired against")
    ap.add_argument("--pair", action="append", default=[], metavar="ARM=AGAINST",
                    help="one more pairing, e.g. an arm against the rival given its own budget")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    arms = {}
    for item in args.arm:
        label, _, spec = item.partition("=")
        arms[label] = load_arm(label, spec)
    extra = [tuple(p.split("=", 1)) for p in args.pair]
    for name in (args.reference, args.control, *(n for pair in extra for n in pair)):
        if name not in arms:
            sys.exit(f"no arm named {name!r}")
    (args.out / "samples").mkdir(parents=True, exist_ok=True)
    models, paired = [], []
    for label, arm in arms.items():
        n, right = len(arm["scores"]), sum(arm["scores"].values())
        lo, hi = wilson_of_rate(right / n, n)
        models.append({k: arm[k] for k in ("label", "model", "samples", "manifest", "training_problems",
                                           "training_rows", "teacher_requests", "completion_tokens")}
                      | {"n": n, "strict_match": right / n, "ci95": [lo, hi]})
        for against in (args.reference, args.control):
            # base is the floor, not an arm: its own pairing with round 0 is in the run's rounds.md
            if label != "base" and against != label and not (label == args.reference and against == args.control):
                paired.append(compare(label, arm["scores"], against, arms[against]["scores"]) | {"model": label})
        for arm_label, against in extra:
            if arm_label == label:
                paired.append(compare(label, arm["scores"], against, arms[against]["scores"]) | {"model": label})
        with gzip.GzipFile(args.out / "samples" / f"{_slug(label)}.jsonl.gz", "wb", mtime=0) as f:
            f.write("".join(json.dumps(r) + "\n" for r in arm["raw"]).encode())
    lines = ["| arm | n | strict match (95% CI) | training problems | training rows | teacher requests | "
             "teacher completion tokens |", "|---|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {m['label']} | {m['n']} | {m['strict_match']:.1%} ({m['ci95'][0]:.1%}–{m['ci95'][1]:.1%}) | "
              f"{m['training_problems']} | {m['training_rows']} | {m['teacher_requests']} | "
              f"{m['completion_tokens']:,} |" for m in models]
    lines += ["", *paired_lines(paired, "arm")]
    atomic_write_text(args.out / "rounds.md", "\n".join(lines) + "\n")
    atomic_write_json(args.out / "comparison.json", {"models": models, "paired": paired,
                                                     "reference": args.reference, "control": args.control})
    print("\n".join(lines))


if __name__ == "__main__":
    main()
