"""A run's picked edge bundle, asked through its own run.py, against what the run's deploy table reports for it.

The deploy stage scores each export in its own runtime through toolkit's eval; the bundle a user unpacks asks
through run.py, which builds its prompt from the bundle's prompt.json (issue 33: it used to ask the question
alone, so SmolLM2's template put in its own default system prompt). This script unpacks the run's picked bundle,
runs its run.py (isolated Python, no toolkit on the path) on the first `--limit` held-out problems of the run, with
the run's token limit and calculator setting, scores the answers with the eval's scorer, and reports them beside
the deploy eval of the same export on the same problems and the deploy table's figure. Accuracy, not speed: it
needs no quiet machine.

    .venv/bin/python bench/bundle_prompt.py runs/quickstart --limit 40 --out bench/results/bundle_prompt.json
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import emit, machine

from toolkit.core.jsonio import read_jsonl as read_rows
from toolkit.core.stats import wilson_interval
from toolkit.data.answers import answers_match
from toolkit.data.problems import read_jsonl
from toolkit.data.strategies import final_answers, is_tagged, student_strategies
from toolkit.eval.safetar import safe_extract
from toolkit.sandbox.runner import prepare


def run_bundle(runner: Path, question: str, args: list[str], timeout_s: float) -> str:
    """run.py's stdout for `question`: its answer and the newline print adds, or with --print-prompt the prompt."""
    proc = subprocess.run([sys.executable, "-I", str(runner), question, *args], capture_output=True, text=True,
                          timeout=timeout_s)
    if proc.returncode != 0:
        sys.exit(f"{runner} failed on {question!r}: {proc.stderr.strip()[-500:]}")
    return proc.stdout


def rate(k: int, n: int) -> dict:
    return {"correct": k, "n": n, "strict_match": k / n if n else None, "ci95": list(wilson_interval(k, n))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path, help="a run folder whose deploy section picked and bundled an export")
    ap.add_argument("--limit", type=int, default=40, help="the first N held-out problems")
    ap.add_argument("--threads", type=int, default=2, help="llama.cpp threads (GGUF bundles)")
    ap.add_argument("--timeout-s", type=float, default=600, help="per question")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    deploy = json.loads((args.run / "deploy" / "deploy.json").read_text())
    chosen, bundle = deploy["pick"]["chosen"], deploy["pick"]["bundle"]
    if not bundle:
        sys.exit(f"{args.run}: the deploy stage bundled nothing ({deploy['pick']['reason']})")
    row = next(r for r in deploy["rows"] if r["name"] == chosen)
    recipe = json.loads((args.run / "manifest.json").read_text())["recipe"]
    strategies, max_tokens = recipe["distill"]["strategies"], recipe["eval"]["max_new_tokens"]
    problems = read_jsonl(args.run / "heldout.jsonl")[: args.limit]
    deployed = {s["id"]: s for s in read_rows(args.run / "deploy" / chosen / "eval" / "samples_heldout.jsonl")}
    flags = ["--max-tokens", str(max_tokens)] + ([] if deploy["calculator"] else ["--no-calculator"])
    flags += ["--threads", str(args.threads)] if row["format"] == "gguf" else []
    strategy = "auto" if is_tagged(strategies) else "cot"
    if "pot" in strategies:
        prepare()  # PoT answers run in the sandbox, as in the run's evals
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bundle-prompt-") as tmp:
        safe_extract(Path(bundle), Path(tmp))
        (folder,) = Path(tmp).iterdir()
        runner = folder / "run.py"
        if not (folder / "prompt.json").is_file():
            sys.exit(f"{bundle} has no prompt.json: it predates issue 33's prompt rule; resume the run with this "
                     f"toolkit (`toolkit distill RECIPE`), which exports and bundles the student again")
        record = json.loads((folder / "prompt.json").read_text())
        example = run_bundle(runner, problems[0].question, ["--print-prompt", *flags], args.timeout_s)
        outputs = []
        for i, p in enumerate(problems, 1):
            outputs.append(run_bundle(runner, p.question, flags, args.timeout_s).removesuffix("\n"))
            print(f"{i}/{len(problems)} {p.id}", file=sys.stderr, flush=True)
    with student_strategies(strategies):  # the run's evals offer (and score) only its strategies
        answers = final_answers(strategy, outputs)
    samples = []
    for p, out, (used, strict) in zip(problems, outputs, answers):
        ref = deployed.get(p.id)
        samples.append({"id": p.id, "gold": p.answer, "output": out, "strategy": used, "strict": strict,
                        "correct": answers_match(strict, p.answer),
                        "deploy_correct": ref["strict_match"] if ref else None,
                        "same_output_as_deploy_eval": ref["output"] == out if ref else None})
    paired = [s for s in samples if s["deploy_correct"] is not None]
    result = {
        "bench": "bundle_prompt", "run": str(args.run), "export": chosen, "bundle": bundle, "prompt": record,
        "example_prompt": example, "limit": args.limit, "max_new_tokens": max_tokens,
        "calculator": deploy["calculator"], "strategy": strategy,
        "bundle_run_py": rate(sum(s["correct"] for s in samples), len(samples)),
        "deploy_eval_same_problems": rate(sum(s["deploy_correct"] for s in paired), len(paired)),
        "deploy_table": {"n": row["n"], "strict_match": row["strict_match"], "ci95": row["strict_ci95"]},
        "paired_problems": len(paired),
        "same_output_as_deploy_eval": sum(bool(s["same_output_as_deploy_eval"]) for s in paired),
        "bundle_only_correct": sum(s["correct"] and not s["deploy_correct"] for s in paired),
        "deploy_only_correct": sum(s["deploy_correct"] and not s["correct"] for s in paired),
        "seconds": round(time.perf_counter() - start, 1), "machine": machine(args.threads), "samples": samples,
    }
    emit(result, args.out)


if __name__ == "__main__":
    main()
