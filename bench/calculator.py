"""Calculator in the loop: strict accuracy without and with it on the same held-out problems, paired.

    nice -n 19 .venv/bin/python bench/calculator.py /tmp/genai-fp32 --label base-smollm2-135m \\
        --out-dir bench/results/calculator
    .venv/bin/python bench/calculator.py --rationales tests/data/*.jsonl ...   # `a op b = c` in teacher text

Problems: MultiArith + AddSub + SingleEq pooled (../shared/data), minus the quickstart's 30 training
problems, a seeded draw of --n. Both conditions decode the same chunks one after the other (off, on,
off, on, ...), so a neighbour's load hits both alike; tok/s counts generated tokens over wall time.
"""
from __future__ import annotations

import argparse
import gzip
import json
import re
import sys
import time
from fractions import Fraction
from pathlib import Path

from _common import machine

from toolkit.core.stats import paired, wilson_interval
from toolkit.data.calculator import result_for
from toolkit.eval.accuracy import score_suite
from toolkit.eval.generate import open_generator
from toolkit.data.problems import load_suite, split_problems

SUITES = ("multiarith", "addsub", "singleeq")
_WRITTEN = re.compile(r"=\s*(-?\d[\d,]*(?:\.\d+)?)")


def written_results(text: str) -> list[tuple[str, bool]]:
    """(expression, correct) for every `arithmetic = number` in a text: the number written after the `=`
    against the calculator's value of the arithmetic before it (what the calculator would have forced)."""
    out = []
    for m in _WRITTEN.finditer(text):
        found = result_for(text[:m.start() + 1])
        if found is None:
            continue
        try:
            written = Fraction(m.group(1).replace(",", ""))
        except ValueError:
            continue
        out.append((found.expression, abs(written - found.value) <= Fraction(1, 10 ** 4)))
    return out


def heldout(data_root: str, n: int, seed: int) -> list:
    quickstart_train = split_problems(load_suite("multiarith", data_root), {"heldout": 40, "train": 30}, 0)["train"]
    banned = {" ".join(p.question.lower().split()) for p in quickstart_train}
    pool, seen = [], set()
    for suite in SUITES:
        for p in load_suite(suite, data_root):
            key = " ".join(p.question.lower().split())
            if key not in banned and key not in seen:  # AddSub and SingleEq share some problems
                seen.add(key)
                pool.append(p)
    return split_problems(pool, {"eval": n}, seed)["eval"]


def measure(args) -> dict:
    problems = heldout(args.data_root, args.n, args.seed)
    gens = {flag: open_generator(args.model, "genai", batch_size=args.batch_size, threads=args.threads,
                                 calculator=flag) for flag in (False, True)}
    rows = {False: [], True: []}
    tokens = {False: 0, True: 0}
    wall = {False: 0.0, True: 0.0}
    try:
        for start in range(0, len(problems), args.chunk):
            chunk = problems[start:start + args.chunk]
            for flag, gen in gens.items():
                t0 = time.perf_counter()
                _, r = score_suite(gen, chunk, max_new_tokens=args.max_new_tokens)
                wall[flag] += time.perf_counter() - t0
                tokens[flag] += sum(len(gen.tok(x["output"], add_special_tokens=False)["input_ids"]) for x in r)
                rows[flag] += r
            print(f"{start + len(chunk)}/{len(problems)} problems", file=sys.stderr, flush=True)
    finally:
        for gen in gens.values():
            gen.close()
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    result = {"model": args.model, "label": args.label, "backend": "genai", "n": len(problems),
              "max_new_tokens": args.max_new_tokens, "batch_size": args.batch_size, "suites": list(SUITES),
              "machine": machine(args.threads)}
    for flag, name in ((False, "off"), (True, "on")):
        with gzip.open(out / f"samples_{args.label}_{name}.jsonl.gz", "wt") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows[flag])
        k = sum(r["strict_match"] for r in rows[flag])
        written = [c for r in rows[flag] for _, c in written_results(r["output"])]
        result[name] = {"strict_match": k / len(problems), "strict_ci95": wilson_interval(k, len(problems)),
                        "tokens": tokens[flag], "wall_s": round(wall[flag], 1),
                        "tok_s": round(tokens[flag] / wall[flag], 1),
                        "expressions": len(written), "expressions_wrong": written.count(False)}
        if flag:
            result[name].update(calc_forced=sum(r["calc_forced"] for r in rows[flag]),
                                calc_changed=sum(r["calc_changed"] for r in rows[flag]))
    result["paired"] = paired({r["id"]: r["strict_match"] for r in rows[False]},
                              {r["id"]: r["strict_match"] for r in rows[True]})
    result["tok_s_ratio_on_off"] = round(result["on"]["tok_s"] / result["off"]["tok_s"], 3)
    (out / f"{args.label}.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def rationales(paths: list[str], origin: str, kept: bool) -> dict:
    """`a op b = c` in teacher text: JSONL rows with a `completion`, `rationale` or `output`, whose `origin`
    holds `origin`; with `kept`, only rows marked correct (`correct`: true)."""
    total = wrong = texts = with_any = 0
    for path in paths:
        opener = gzip.open if path.endswith(".gz") else open
        with opener(path, "rt") as f:
            for line in f:
                row = json.loads(line)
                text = row.get("completion") or row.get("rationale") or row.get("output") or ""
                if not text or origin not in row.get("origin", "") or kept and row.get("correct") is not True:
                    continue
                texts += 1
                found = written_results(text)
                total += len(found)
                with_any += bool(found)
                wrong += sum(not c for _, c in found)
    return {"files": paths, "origin": origin, "kept_only": kept, "texts": texts, "expressions": total,
            "correct": total - wrong, "correct_share": round((total - wrong) / total, 3) if total else None,
            "texts_with_an_expression": with_any}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", nargs="?", help="a genai export folder")
    ap.add_argument("--label", default="model")
    ap.add_argument("--n", type=int, default=600)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--chunk", type=int, default=64, help="problems per alternation of the two conditions")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--data-root", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    ap.add_argument("--out-dir", default="bench/results/calculator")
    ap.add_argument("--rationales", nargs="+", metavar="JSONL", help="only count `a op b = c` in these files")
    ap.add_argument("--origin", default="", help="with --rationales: rows whose origin contains this")
    ap.add_argument("--kept", action="store_true", help="with --rationales: only rows marked correct")
    args = ap.parse_args()
    if args.rationales:
        print(json.dumps(rationales(args.rationales, args.origin, args.kept), indent=2))
    elif args.model:
        print(json.dumps(measure(args), indent=2))
    else:
        ap.error("give a genai export folder, or --rationales FILES")


if __name__ == "__main__":
    main()
