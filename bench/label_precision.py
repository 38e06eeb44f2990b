"""Label precision of the teacher's self-consistency vote, on problems whose gold answer is known (issue 17).

FDD's labelling stage (toolkit/pipeline/fdd.py, pseudo_label) keeps a generated question when enough of the
teacher's n solutions agree and trains on their majority answer; nobody can check those labels, since the
question is new. Here the same teacher, prompts, answer reading and vote solve N training problems whose
answers are known: 4 CoT solutions each, and one PoT program each (run in the sandbox, as label_check pot
does). Every vote rule is then scored on the same solutions:

- accepted: problems whose majority passes the rule (votes ≥ m of the first k solutions);
- precision: accepted problems whose label matches the gold answer (answers_match), with a Wilson 95% interval;
- and the same with the PoT cross-check on top (label_check pot: the program's answer must match the label).

    python bench/label_precision.py --problems 100 --out bench/results/label_precision/qwen0.5b.json

Teacher requests go through the toolkit's request cache (`--cache`), so a rerun, or another teacher's run
on the same problems, costs only what it has not asked yet.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

from _common import emit, machine

from toolkit.core.errors import ToolkitError
from toolkit.core.recipe import TeacherConfig
from toolkit.core.stats import wilson_interval
from toolkit.data.answers import answers_match
from toolkit.data.problems import load_suite
from toolkit.data.strategies import clean_solution, solution_answers, teacher_messages
from toolkit.data.voting import majority_vote
from toolkit.pipeline.fdd import pot_agrees
from toolkit.sandbox.runner import SandboxUnavailable, prepare
from toolkit.teacher.cache import RequestCache
from toolkit.teacher.teachers import open_teacher

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
RULES = [(2, 3), (3, 3), (3, 4), (4, 4)]  # (votes needed, of the first k CoT solutions)
COT_SOLVES = max(k for _, k in RULES)


def problems(suites: str, n: int, seed: int) -> list:
    """n problems drawn (seeded) from the pooled suites, repeated questions dropped as the recipes' pools do."""
    pool, seen = [], set()
    for suite in suites.split(","):
        for p in load_suite(suite, DATA):
            if p.question not in seen:
                seen.add(p.question)
                pool.append(p)
    random.Random(seed).shuffle(pool)
    return pool[:n]


def solve(cfg: TeacherConfig, probs: list, cache: Path, seed: int) -> tuple[list[list[str | None]], list[str | None]]:
    """Each problem's CoT answers (COT_SOLVES of them) and its PoT program's answer."""
    with tempfile.TemporaryDirectory() as logs, \
            open_teacher(cfg, RequestCache(cache), base_dir=ROOT, log_dir=Path(logs), seed=seed) as teacher:
        cot = teacher.complete([teacher_messages(p.question, "cot") for p in probs], n=COT_SOLVES,
                               temperature=cfg.temperature)
        pot = teacher.complete([teacher_messages(p.question, "pot") for p in probs], n=1, temperature=cfg.temperature)
    cot_answers = solution_answers([("cot", clean_solution("cot", t)) for outs in cot for t in outs])
    pot_answers = solution_answers([("pot", clean_solution("pot", outs[0])) for outs in pot])
    return [cot_answers[i * COT_SOLVES:(i + 1) * COT_SOLVES] for i in range(len(probs))], pot_answers


def score(probs: list, cot: list[list[str | None]], pot: list[str | None]) -> list[dict]:
    """One row per rule and check: problems accepted, how many of their labels are right, precision."""
    rows = []
    for need, k in RULES:
        for check in ("none", "pot"):
            accepted = right = 0
            for p, answers, program in zip(probs, cot, pot):
                vote = majority_vote(answers[:k], need / k, need)
                if not vote.accepted or (check == "pot" and not pot_agrees([program], vote.answer)):
                    continue
                accepted += 1
                right += answers_match(vote.answer, p.answer)
            lo, hi = wilson_interval(right, accepted) if accepted else (0.0, 1.0)
            rows.append({"rule": f"{need} of {k}", "label_check": check, "problems": len(probs),
                         "accepted": accepted, "right": right,
                         "precision": round(right / accepted, 4) if accepted else None,
                         "precision_ci95": [round(lo, 4), round(hi, 4)]})
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["| vote rule | PoT check | accepted of N | right labels | precision (95% CI) |", "|---|---|---:|---:|---:|"]
    for r in rows:
        prec = "–" if r["precision"] is None else (f"{r['precision']:.1%} ({r['precision_ci95'][0]:.1%}–"
                                                   f"{r['precision_ci95'][1]:.1%})")
        lines.append(f"| {r['rule']} | {r['label_check']} | {r['accepted']} / {r['problems']} | {r['right']} | {prec} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher", default="pkg:qwen2.5-coder-0.5b-instruct")
    ap.add_argument("--suites", default="multiarith,addsub,singleeq", help="pooled training suites with gold answers")
    ap.add_argument("--problems", type=int, default=100)
    ap.add_argument("--temperature", type=float, default=0.7, help="as the CPU recipes' teacher")
    ap.add_argument("--max-tokens", type=int, default=160, help="as the CPU recipes' teacher")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "toolkit" / "teacher.sqlite")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    try:
        prepare("bwrap")  # PoT programs run confined or not at all
    except SandboxUnavailable as e:
        sys.exit(str(e))
    probs = problems(args.suites, args.problems, args.seed)
    cfg = TeacherConfig(model=args.teacher, backend="llama.cpp", temperature=args.temperature,
                        max_tokens=args.max_tokens, threads=args.threads)
    start = time.perf_counter()
    try:
        cot, pot = solve(cfg, probs, args.cache, args.seed)
    except ToolkitError as e:  # a teacher package not installed, a server that did not start: one line
        sys.exit(f"label_precision: {e}")
    rows = score(probs, cot, pot)
    print(markdown(rows), file=sys.stderr)
    emit({"bench": "label_precision", "teacher": args.teacher, "suites": args.suites, "seed": args.seed,
          "temperature": args.temperature, "max_tokens": args.max_tokens, "rows": rows,
          "per_problem": [{"id": p.id, "gold": p.answer, "cot": c, "pot": q} for p, c, q in zip(probs, cot, pot)],
          "seconds": round(time.perf_counter() - start, 1),
          "command": "python bench/label_precision.py " + " ".join(sys.argv[1:]),
          "date": time.strftime("%Y-%m-%d"), "machine": machine(args.threads)}, args.out)


if __name__ == "__main__":
    main()
