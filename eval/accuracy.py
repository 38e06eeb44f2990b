"""Accuracy on math suites: strict and flexible extraction side by side, results JSON + per-sample JSONL."""
from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from pathlib import Path

from toolkit.data.answers import answers_match, extract_flexible
from toolkit.data.problems import Problem
from toolkit.core.jsonio import atomic_write_json, atomic_write_jsonl
from toolkit.core.rundir import versions
from toolkit.core.stats import stderr, wilson_interval
from toolkit.data.strategies import final_answers, split_tag, strategy_stats

from toolkit.eval.backend import Generator
from toolkit.eval.prompts import Shot, build_messages


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def score_suite(generator: Generator, problems: list[Problem], *, max_new_tokens: int, strategy: str = "cot",
                shots: list[Shot] | None = None,
                on_done: Callable[[int], None] | None = None) -> tuple[dict, list[dict]]:
    """Greedy answers for every problem; returns (aggregate metrics, per-sample rows).

    `strategy`: cot, l2m, pot (a forced tag for a multi-strategy student) or auto (the model's
    choice); a PoT answer is its program's result in the sandbox, for strict and flexible alike.
    """
    prompts = [build_messages(p.question, strategy, shots) for p in problems]
    outputs = generator.generate(prompts, max_new_tokens=max_new_tokens, temperature=0.0, on_done=on_done)
    answers = final_answers(strategy, outputs)
    calculator = bool(getattr(generator, "calculator", False))
    counts = generator.calc_counts if calculator else [(None, None)] * len(outputs)
    rows = []
    for prob, prompt, out, (used, strict), (forced, changed) in zip(problems, prompts, outputs, answers, counts):
        body = split_tag(out)[1] if strategy == "auto" else out
        flexible = strict if used == "pot" else extract_flexible(body)
        rows.append({
            "id": prob.id, "prompt": prompt, "output": out, "strategy": used, "gold": prob.answer,
            "strict": strict, "flexible": flexible,
            "strict_match": answers_match(strict, prob.answer),
            "flexible_extract": answers_match(flexible, prob.answer),
            "prompt_hash": _sha(str(prompt)), "output_hash": _sha(out),
            "calculator": calculator, "calc_forced": forced, "calc_changed": changed,
        })
    n = len(rows)
    metrics: dict = {"n": n}
    for key in ("strict_match", "flexible_extract"):
        k = sum(r[key] for r in rows)
        p = k / n if n else 0.0
        lo, hi = wilson_interval(k, n)
        metrics.update({key: p, f"{key}_stderr": stderr(p, n), f"{key}_ci95": [lo, hi]})
    if calculator:  # results the calculator forced, and those that differed from the model's own
        metrics.update(calc_forced=sum(r["calc_forced"] for r in rows), calc_changed=sum(r["calc_changed"] for r in rows))
    if strategy != "cot":
        metrics["strategies"] = strategy_stats([r["strategy"] for r in rows], [r["strict_match"] for r in rows])
    return metrics, rows


def evaluate(generator: Generator, suites: dict[str, list[Problem]], out_path: Path, *, model: str,
             max_new_tokens: int = 256, strategy: str = "cot", shots: dict[str, list[Shot]] | None = None,
             config: dict | None = None, on_done: Callable[[int], None] | None = None) -> dict:
    """Score every suite and write `out_path` (results JSON) and `samples_<suite>.jsonl` beside it.

    `shots` maps a suite to its few-shot examples (none: zero-shot).
    """
    start = time.perf_counter()
    results = {}
    for name, problems in suites.items():
        metrics, rows = score_suite(generator, problems, max_new_tokens=max_new_tokens, strategy=strategy,
                                    shots=(shots or {}).get(name), on_done=on_done)
        results[name] = metrics
        atomic_write_jsonl(out_path.parent / f"samples_{name}.jsonl", rows)
    report = {
        "model": model, "backend": generator.name, "strategy": strategy,
        "calculator": bool(getattr(generator, "calculator", False)), "results": results,
        "config": {"max_new_tokens": max_new_tokens, "temperature": 0.0, **getattr(generator, "config", {}),
                   **(config or {})},
        "versions": versions(), "duration_s": round(time.perf_counter() - start, 2),
    }
    atomic_write_json(out_path, report)
    return report
