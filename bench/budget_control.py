"""FDD rounds against an equal-teacher-budget control, paired on the same held-out problems (issue 17).

The control is round 0 alone with the teacher requests FDD spent on new questions and their labels spent on
more original training problems instead. `size` prints the control's data.train_size: the FDD run's teacher
requests (sent and cached, every stage, from the manifest's ledger) over the requests one original problem
costs at round 0 (paths_per_problem per strategy). `compare` pairs every evaluated model of both runs and
writes, into --out:

- comparison.md / comparison.json: accuracy with Wilson 95% intervals, teacher requests and completion
  tokens, training rows per model; paired differences (95% bootstrap interval, exact McNemar p) of FDD's
  last round against its round 0, and of each FDD round against the control;
- samples/<run>--<model>.jsonl.gz: every model's per-problem answers, to recompute any pairing;
- rounds.md: the FDD run's rounds.md with the comparison appended; the leakage histogram and manifests of both
  runs.

    .venv/bin/python bench/budget_control.py size runs/fdd-cpu-powered
    # the control, with that train_size and eval.base=false (the FDD run scored the same base): see the recipe
    .venv/bin/python bench/budget_control.py compare runs/fdd-cpu-powered runs/fdd-cpu-powered-control \\
        --out bench/results/fdd-cpu-powered
"""
from __future__ import annotations

import argparse
import gzip
import json
import shutil
import sys
from pathlib import Path

from toolkit.core.jsonio import atomic_write_json, atomic_write_text, read_jsonl
from toolkit.core.stats import wilson_of_rate
from toolkit.eval.rounds_report import SAMPLES, compare, difference_text, eval_dir, run_scores


def _manifest(run: Path) -> dict:
    path = run / "manifest.json"
    if not path.is_file():
        sys.exit(f"{run}: no manifest.json (not a run folder)")
    return json.loads(path.read_text())


def _round_of(stage: str) -> int | None:
    head = stage.split("/", 1)[0]
    return int(head.removeprefix("round-")) if head.startswith("round-") else None


def teacher_spend(manifest: dict, through_round: int | None = None) -> dict:
    """Requests (sent to the server, and answered from the cache) and completion tokens (sent) the run's teacher
    cost: all of it, or what its rounds up to `through_round` cost (the model of that round was trained on it)."""
    requests = tokens = 0
    for name, stage in manifest["stages"].items():
        t = stage.get("teacher")
        k = _round_of(name)
        if t and (through_round is None or (k is not None and k <= through_round)):
            requests += t.get("requests_sent", 0) + t.get("cached", {}).get("requests", 0)
            tokens += t.get("completion_tokens", 0)
    return {"requests": requests, "completion_tokens_sent": tokens}


def paired_lines(paired: list[dict], noun: str) -> list[str]:
    """The Markdown table of paired differences (`compare` rows carrying "model"), its columns naming `noun`."""
    lines = [f"Paired on the same held-out problems ({noun} minus against, points, 95% bootstrap interval; exact "
             "two-sided McNemar p):", "", f"| {noun} | against | difference | right only in {noun} | right only in "
             "against | McNemar p |", "|---|---|---:|---:|---:|---:|"]
    for p in paired:
        cells = ["–", "–", "–"] if "refused" in p else [str(p["only_model"]), str(p["only_against"]),
                                                        f"{p['mcnemar_p']:.3g}"]
        lines.append(f"| {p['model']} | {p['against']} | {difference_text(p)} | " + " | ".join(cells) + " |")
    return lines


def control_size(manifest: dict) -> int:
    d = manifest["recipe"]["distill"]
    per_problem = d["paths_per_problem"] * len(d.get("strategies") or ["cot"])
    return round(teacher_spend(manifest)["requests"] / per_problem)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("size", help="print the control's data.train_size")
    s.add_argument("fdd_run", type=Path)
    c = sub.add_parser("compare", help="pair the two runs and write the result folder")
    c.add_argument("fdd_run", type=Path)
    c.add_argument("control_run", type=Path)
    c.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    fdd = _manifest(args.fdd_run)
    if args.cmd == "size":
        print(control_size(fdd))
        return
    control = _manifest(args.control_run)
    runs = {"fdd": (args.fdd_run, fdd), "control": (args.control_run, control)}
    heldouts = {name: [p["id"] for p in read_jsonl(run / "heldout.jsonl")] for name, (run, _) in runs.items()}
    if heldouts["fdd"] != heldouts["control"]:
        sys.exit("the two runs were not evaluated on the same held-out problems (same seed and heldout_size?)")

    out = args.out
    (out / "samples").mkdir(parents=True, exist_ok=True)
    models, scores = [], {}
    for name, (run, manifest) in runs.items():
        for model, r in manifest["summary"]["rounds"].items():
            if name == "control" and model == "base":
                continue  # the same base student on the same problems as the FDD run's
            key = f"{name}/{model}"
            scores[key] = run_scores(run, model)
            lo, hi = wilson_of_rate(r["strict_match"], r["n"])
            spend = teacher_spend(manifest, _round_of(model) if model != "base" else -1)
            models.append({"model": key, "n": r["n"], "strict_match": r["strict_match"], "ci95": [lo, hi],
                           "training_rows": r.get("rationales", 0), "training_problems": r.get("problems", 0),
                           "teacher_requests": spend["requests"],
                           "teacher_completion_tokens": spend["completion_tokens_sent"]})
            samples = eval_dir(run, model) / SAMPLES
            if samples.is_file():
                # mtime 0: the same answers give the same bytes, so a rerun leaves git nothing to commit
                with gzip.GzipFile(out / "samples" / f"{name}--{model}.jsonl.gz", "wb", mtime=0) as f:
                    f.write(samples.read_bytes())
    last = list(fdd["summary"]["rounds"])[-1]
    control_last = list(control["summary"]["rounds"])[-1]
    pairs = [(f"fdd/{last}", "fdd/round-0")] if last != "round-0" else []
    pairs += [(f"fdd/{m}", f"control/{control_last}") for m in fdd["summary"]["rounds"] if m != "base"]
    paired = [compare(a, scores[a], b, scores[b]) | {"model": a} for a, b in pairs]

    lines = ["| model | held-out n | strict match (95% CI) | training problems | training rows | teacher requests "
             "| teacher completion tokens sent |", "|---|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {m['model']} | {m['n']} | {m['strict_match']:.1%} ({m['ci95'][0]:.1%}–{m['ci95'][1]:.1%}) | "
              f"{m['training_problems']} | {m['training_rows']} | {m['teacher_requests']} | "
              f"{m['teacher_completion_tokens']} |" for m in models]
    lines += ["", *paired_lines(paired, "model")]
    atomic_write_text(out / "comparison.md", "\n".join(lines) + "\n")
    atomic_write_json(out / "comparison.json", {"models": models, "paired": paired,
                                                "control_train_size": control["recipe"]["data"]["train_size"],
                                                "control_size_rule": control_size(fdd)})
    # rounds.md: the FDD run's own table (base and every round, each paired against round 0 and the round
    # before), then the control beside them, so one file holds every model of the experiment.
    fdd_rounds = args.fdd_run / "rounds.md"
    head = fdd_rounds.read_text().rstrip("\n") + "\n\n" if fdd_rounds.is_file() else ""
    atomic_write_text(out / "rounds.md", head + "## Against the equal-teacher-budget control\n\n"
                      f"The control: round 0 alone on {control['recipe']['data']['train_size']} original problems, "
                      "the FDD run's teacher requests spent on them (bench/budget_control.py).\n\n"
                      + "\n".join(lines) + "\n")
    for src, dst in ((args.fdd_run / "manifest.json", "manifest.json"),
                     (args.control_run / "manifest.json", "manifest-control.json")):
        if src.is_file():
            shutil.copyfile(src, out / dst)
    for leak in sorted(args.fdd_run.glob("round-*/leakage.*")):
        shutil.copyfile(leak, out / f"{leak.parent.name}-{leak.name}")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
