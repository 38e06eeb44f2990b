"""`toolkit eval`: the run as EvalConfig says (suites, few-shot examples, backend, progress, results table)."""
from __future__ import annotations

import json
from contextlib import nullcontext
from pathlib import Path

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, Task, TextColumn,
                           TimeElapsedColumn)
from rich.table import Table
from rich.text import Text

from toolkit.core import defaults
from toolkit.core.errors import ToolkitError
from toolkit.data.problems import load_suite
from toolkit.data.strategies import student_strategies
from toolkit.data.suites import EVAL_SUITES
from toolkit.sandbox.runner import prepare
from toolkit.eval.accuracy import evaluate
from toolkit.eval.config import EvalConfig
from toolkit.eval.generate import export_info, open_generator, prompt_info
from toolkit.eval.prompts import fewshot_examples


class RateColumn(ProgressColumn):
    """Finished problems per second (rich's own estimate, smoothed over the last updates)."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("– problems/s" if speed is None else f"{speed:.2f} problems/s", style="progress.data.speed")


def run_eval(model: str, out: str | Path, config: EvalConfig, *, quiet: bool = False, as_json: bool = False) -> int:
    """Score `model` on the suites of `config`, write the results JSON `out` (and samples_<suite>.jsonl beside
    it) and print its table, or with `as_json` the results as JSON."""
    # PoT programs run in the sandbox: refuse now, before the model loads, where it cannot confine them.
    sandbox = None
    if config.strategy in ("pot", "auto"):
        sandbox = "bwrap" if prepare() else "unsafe (unconfined)"
    suites = [s.strip() for s in config.suite.split(",") if s.strip()]
    unknown = [s for s in suites if s not in EVAL_SUITES]
    if unknown:
        raise ToolkitError(f"unknown suite(s) {', '.join(unknown)}; choose from {', '.join(EVAL_SUITES)}")
    if config.limit is not None and config.limit < 1:
        raise ToolkitError("--limit must be at least 1")
    if model.startswith((".", "/", "~")) and not Path(model).expanduser().exists():
        # A mistyped path is named before any suite is read, or fetched from the network.
        raise ToolkitError(f"model {model!r} not found")
    data_root = defaults.data_root(config.data_root)
    problems = {s: load_suite(s, data_root)[: config.limit] for s in suites}
    shots = {s: fewshot_examples(s, config.fewshot, data_root, problems[s], seed=config.seed) for s in suites}
    export = export_info(model) if not model.startswith("openai:") else None
    # A student (or its export) is asked with the strategies it was trained on: a tagged prompt offers only those.
    prompt = prompt_info(config.tokenizer or model)
    gen = open_generator(model, config.backend, batch_size=config.batch_size, threads=config.threads,
                         seed=config.seed, concurrency=config.concurrency, api_key_env=config.api_key_env,
                         calculator=config.calculator, tokenizer=config.tokenizer)
    console = Console(quiet=quiet)
    recorded = {"limit": config.limit, "suites": suites, "fewshot": config.fewshot, "seed": config.seed}
    if sandbox:
        recorded["sandbox"] = sandbox
    if export:
        recorded["export"] = export
    if prompt:
        recorded["prompt_strategies"] = prompt["strategies"]
    try:
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), RateColumn(),
                      TimeElapsedColumn(), console=console, transient=True) as bar:
            task = bar.add_task(f"eval {model} ({gen.name})", total=sum(len(p) for p in problems.values()))
            with student_strategies(prompt["strategies"]) if prompt else nullcontext():
                report = evaluate(gen, problems, Path(out), model=model, max_new_tokens=config.max_new_tokens,
                                  strategy=config.strategy, shots=shots, config=recorded,
                                  on_done=lambda n: bar.advance(task, n))
    finally:
        gen.close()
    if as_json:
        print(json.dumps(report["results"], indent=2))
        return 0
    calc = ", calculator" if report["calculator"] else ""
    table = Table(title=f"{model} ({report['backend']}{calc}, {report['duration_s']:.1f} s)")
    for col in ("suite", "n", "strict match", "flexible extract"):
        table.add_column(col)
    for name, r in report["results"].items():
        table.add_row(name, str(r["n"]), f"{r['strict_match']:.1%} ± {r['strict_match_stderr']:.1%}",
                      f"{r['flexible_extract']:.1%} ± {r['flexible_extract_stderr']:.1%}")
    console.print(table)
    console.print(f"results: {out}")
    return 0
