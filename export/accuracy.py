"""The accuracy an export keeps: source and export answer the same math problems through `toolkit eval`'s scorer."""
from __future__ import annotations

from pathlib import Path

from toolkit.core.errors import ExportError
from toolkit.core.jsonio import read_jsonl
from toolkit.data.problems import load_suite
from toolkit.data.suites import EVAL_SUITES
from toolkit.eval.accuracy import evaluate
from toolkit.eval.generate import open_generator

METRICS = ("strict_match", "flexible_extract")
# A quantized 135M model loses a few points on 20 problems by chance alone (one problem = 5 points),
# so the default tolerance is wide; a user with a bigger suite sets it tighter.
DEFAULT_MAX_DROP_POINTS = 10.0


def _score(model: str, backend: str, suite: str, problems: list, out: Path, threads: int,
           max_new_tokens: int) -> tuple[dict, list[dict]]:
    gen = open_generator(model, backend, batch_size=8, threads=threads)
    try:
        report = evaluate(gen, {suite: problems}, out / "results.json", model=model, max_new_tokens=max_new_tokens)
    finally:
        gen.close()
    return report["results"][suite], read_jsonl(out / f"samples_{suite}.jsonl")


def eval_problems(suite: str, limit: int, data_root: str) -> list:
    """The first `limit` problems of `suite`, read before any export work so a bad request fails at once."""
    if suite not in EVAL_SUITES:
        raise ExportError(f"--eval-suite {suite!r}: choose one of {', '.join(EVAL_SUITES)}")
    if limit < 1:
        raise ExportError("--eval-limit must be at least 1")
    return load_suite(suite, data_root)[:limit]


def accuracy_delta(source_dir: Path, target: Path, suite: str, problems: list, work: Path, threads: int,
                   max_new_tokens: int = 256, max_drop_points: float | None = None) -> dict:
    """Greedy accuracy of the torch source and of the export (in its own runtime) on `problems`;
    the export's change in points and how many answers and outputs the two share.

    passed: the export's strict accuracy is at most `max_drop_points` below the source's.
    """
    source, src_rows = _score(str(source_dir), "torch", suite, problems, work / "eval-source", threads, max_new_tokens)
    export, exp_rows = _score(str(target), "auto", suite, problems, work / "eval-export", threads, max_new_tokens)
    drop = DEFAULT_MAX_DROP_POINTS if max_drop_points is None else max_drop_points
    delta = {m: round(100 * (export[m] - source[m]), 2) for m in METRICS}
    return {
        "suite": suite, "n": len(problems), "max_new_tokens": max_new_tokens,
        "source": {m: source[m] for m in METRICS}, "export": {m: export[m] for m in METRICS},
        "delta_points": delta,  # export minus source, in percentage points
        "same_strict_answer": sum(a["strict"] == b["strict"] for a, b in zip(src_rows, exp_rows)) / len(problems),
        "same_output": sum(a["output"] == b["output"] for a, b in zip(src_rows, exp_rows)) / len(problems),
        "max_drop_points": drop, "passed": -delta["strict_match"] <= drop,
    }
