"""Question writers compared on the same easy/hard problems with the same teacher (issue 30, item 1).

Round 1 of a recipe's FDD loop, its two teacher stages only: the questions stage (harder variants of the problems
the round-0 student solved, similar ones for those it failed; the verdicts are read from a committed feedback file,
so no student runs) and the labels stage, once with today's writer (question_check none) and once with the
program writer (question_check program: each question comes with a program; kept when the program runs to a
number, uses only numbers the question states, and the CoT vote agrees). Each writer runs in its own run folder
through the toolkit's own stage code, so its manifest holds the ledger; this script reads both ledgers and writes
the comparison (requests per accepted question and per training row, what each test dropped) and a sample of
accepted questions to read by hand.

    python bench/question_writer.py recipes/fdd-cpu-powered.yaml \\
        --feedback bench/results/fdd-cpu-powered/run-files/round-1/feedback.jsonl \\
        --out bench/results/question_writer

Where both writers already ran as round 1 of a whole run (the same recipe, seed and round-0 student), `--from
WRITER=MANIFEST,FOLDER` reads that run's ledger and round-1 files (FOLDER/round-1/) instead of running the stages.

Teacher requests go through the recipe's request cache: today's writer on fdd-cpu-powered's problems is answered
entirely from the committed cache of that run (bench/results/fdd-cpu-powered/teacher-cache, copied to the cache
folder first), so only the program writer costs teacher time.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

from _common import machine
from rich.console import Console

from toolkit.core.errors import ToolkitError
from toolkit.core.jsonio import atomic_write_json, atomic_write_text, read_jsonl
from toolkit.core.recipe import load_recipe
from toolkit.data.hygiene import LeakageIndex
from toolkit.pipeline import distill, fdd
from toolkit.pipeline.context import RunContext

WRITERS = ("none", "program")
SAMPLE = 40  # accepted questions per writer to read by hand


def run_writer(recipe_path: Path, writer: str, easy: list[str], name: str) -> dict:
    """Round 1's questions and labels stages of `recipe_path` under question_check `writer`; the two stages'
    manifest entries and the run folder."""
    recipe = load_recipe(recipe_path, [f"name={name}-{writer}", "distill.rounds=2", f"distill.question_check={writer}"])
    ctx = RunContext(recipe, Console(stderr=True))
    seeds, heldout = distill.data(ctx)
    leakage = LeakageIndex.from_suites(ctx.data_root(), n=recipe.distill.leakage_ngram, exclude=[p.id for p in seeds])
    new = fdd.new_questions(ctx, 1, seeds, easy, known=seeds + heldout, leakage=leakage)
    fdd.pseudo_label(ctx, 1, new)
    stages = ctx.run.manifest["stages"]
    return {"run": str(ctx.run.root), "questions": stages["round-1/questions"], "labels": stages["round-1/labels"]}


def _requests(stage: dict) -> int:
    t = stage.get("teacher") or {}
    return t.get("requests_sent", 0) + t.get("cached", {}).get("requests", 0)


def _tokens(stage: dict) -> int:
    t = stage.get("teacher") or {}
    return t.get("completion_tokens", 0) + t.get("cached", {}).get("completion_tokens", 0)


def summary(result: dict) -> dict:
    """The writer's ledger: teacher requests of both stages, and what they bought."""
    q, lab = result["questions"], result["labels"]
    requests = _requests(q) + _requests(lab)
    rows = lab["new_rationales"]
    return {"writing_requests": _requests(q), "label_requests": _requests(lab), "requests": requests,
            "parsed": q["parsed"], "program_failed": q.get("program_failed", 0), "ungrounded": q.get("ungrounded", 0),
            "duplicates": q["duplicates"], "leaked": q["leaked"], "voted_on": lab["questions"],
            "accepted": lab["accepted"], "vote_or_check_rejected": lab["rejected"],
            "program_rejected": lab.get("program_rejected", 0), "pot_check_rejected": lab.get("check_rejected", 0),
            "training_rows": rows, "requests_per_row": round(requests / rows, 2) if rows else None,
            "requests_per_accepted_question": round(requests / lab["accepted"], 2) if lab["accepted"] else None,
            "completion_tokens": sum(_tokens(s) for s in (q, lab))}


def from_run(spec: str) -> dict:
    """A writer's round 1 as a finished run recorded it: 'MANIFEST,FOLDER' (FOLDER holds round-1/)."""
    manifest, folder = spec.split(",")
    stages = json.loads(Path(manifest).read_text())["stages"]
    return {"run": folder, "questions": stages["round-1/questions"], "labels": stages["round-1/labels"]}


def sample_for_reading(run: Path, writer: str, seed: int = 0) -> list[dict]:
    """SAMPLE accepted questions (seeded), each with its label and, for the program writer, its program."""
    accepted = read_jsonl(run / "round-1" / "generated.jsonl")
    programs = {}
    if writer == "program":
        programs = {r["id"]: r["program"] for r in read_jsonl(run / "round-1" / "question_programs.jsonl")}
    picked = random.Random(seed).sample(accepted, min(SAMPLE, len(accepted)))
    return [{"id": p["id"], "origin": p["origin"], "question": p["question"], "label": p["answer"],
             **({"program": programs[p["id"]]} if writer == "program" else {})} for p in picked]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("recipe", type=Path)
    ap.add_argument("--feedback", type=Path, required=True, help="round-1/feedback.jsonl of the recipe's run")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--name", default="question-writer", help="run folder prefix (one folder per writer)")
    ap.add_argument("--from", dest="done", action="append", default=[], metavar="WRITER=MANIFEST,FOLDER",
                    help="take this writer's round 1 from a finished run instead of running it")
    args = ap.parse_args()
    done = dict(item.split("=", 1) for item in args.done)
    easy = [r["id"] for r in read_jsonl(args.feedback) if r["label"] == "easy"]
    out = {"recipe": str(args.recipe), "feedback": str(args.feedback), "easy": len(easy),
           "machine": machine(0), "writers": {}}
    try:
        for writer in WRITERS:
            result = from_run(done[writer]) if writer in done else run_writer(args.recipe, writer, easy, args.name)
            out["writers"][writer] = summary(result)
            sample = sample_for_reading(Path(result["run"]), writer)
            atomic_write_text(args.out / f"accepted-sample-{writer}.jsonl",
                              "".join(json.dumps(r) + "\n" for r in sample))
    except ToolkitError as exc:
        sys.exit(f"error: {exc}")
    atomic_write_json(args.out / "question_writer.json", out)
    print(json.dumps(out["writers"], indent=2))


if __name__ == "__main__":
    main()
