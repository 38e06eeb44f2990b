"""`toolkit eval`: its options, and the run (suites, few-shot examples, backend, progress, results table)."""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from rich.progress import ProgressColumn, Task
from rich.text import Text

from toolkit.core.errors import ToolkitError

from toolkit.eval.generate import BACKENDS
from toolkit.eval.prompts import BUILDERS

SUITE_NAMES = ("gsm8k", "svamp", "asdiv", "multiarith", "addsub", "singleeq")


def add_eval_arguments(e: argparse.ArgumentParser) -> None:
    e.add_argument("model", help="hub id, save_pretrained folder, ONNX or genai export folder, .gguf file, "
                                 "pkg:NAME, or openai:http://HOST:PORT/v1#MODEL")
    e.add_argument("--suite", default="gsm8k", help=f"comma-separated: {','.join(SUITE_NAMES)}")
    e.add_argument("--limit", type=int, default=None, help="first N problems of each suite")
    e.add_argument("--backend", default="auto", choices=BACKENDS,
                   help="auto: llama.cpp for .gguf, genai for a folder with genai_config.json, onnx for a "
                        "folder with *.onnx, openai for openai:URL#MODEL, torch otherwise; llama.cpp-server "
                        "serves a GGUF on 127.0.0.1 for the run")
    e.add_argument("--strategy", default="cot", choices=sorted(BUILDERS),
                   help="cot: plain chain of thought; auto: a multi-strategy student picks its tag; l2m|pot: that tag forced")
    e.add_argument("--fewshot", type=int, default=0, metavar="N",
                   help="N worked examples before each question, drawn deterministically from the suite's "
                        "train split (GSM8K) or a fixed set, never from the evaluated problems")
    e.add_argument("--seed", type=int, default=1234, help="seed of the few-shot draw and of any sampling")
    e.add_argument("--max-new-tokens", type=int, default=256)
    e.add_argument("--calculator", action="store_true",
                   help="compute the arithmetic the model writes before '=' and force the result's tokens "
                        "(every local backend and llama.cpp-server; not a remote openai endpoint)")
    e.add_argument("--batch-size", type=int, default=16, help="prompts per batch (torch, onnx, genai)")
    e.add_argument("--concurrency", type=int, default=4, help="requests in flight (openai)")
    e.add_argument("--api-key-env", default="OPENAI_API_KEY", metavar="VAR",
                   help="environment variable holding the endpoint's API key (openai); the key is never written")
    e.add_argument("--threads", type=int, default=None, help="CPU threads (default: the cores this process may use)")
    e.add_argument("--data-root", default=None, help="folder holding the suites (default: $TOOLKIT_DATA or ./data)")
    e.add_argument("--out", default="results.json", help="results JSON path")
    e.add_argument("--quiet", action="store_true")
    e.add_argument("--json", action="store_true", help="print the results as JSON")


class RateColumn(ProgressColumn):
    """Finished problems per second (rich's own estimate, smoothed over the last updates)."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("– problems/s" if speed is None else f"{speed:.2f} problems/s", style="progress.data.speed")


def run_eval(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    from toolkit.data.problems import load_suite

    from toolkit.eval.accuracy import evaluate
    from toolkit.eval.generate import export_info, open_generator
    from toolkit.eval.prompts import fewshot_examples

    # PoT programs run in the sandbox: refuse now, before the model loads, where it cannot confine them.
    sandbox = None
    if args.strategy in ("pot", "auto"):
        from toolkit.sandbox.runner import prepare

        sandbox = "bwrap" if prepare() else "unsafe (unconfined)"
    suites = [s.strip() for s in args.suite.split(",") if s.strip()]
    unknown = [s for s in suites if s not in SUITE_NAMES]
    if unknown:
        raise ToolkitError(f"unknown suite(s) {', '.join(unknown)}; choose from {', '.join(SUITE_NAMES)}")
    if args.limit is not None and args.limit < 1:
        raise ToolkitError("--limit must be at least 1")
    data_root = args.data_root or os.environ.get("TOOLKIT_DATA") or "data"
    problems = {s: load_suite(s, data_root)[: args.limit] for s in suites}
    shots = {s: fewshot_examples(s, args.fewshot, data_root, problems[s], seed=args.seed) for s in suites}
    export = export_info(args.model) if not args.model.startswith("openai:") else None
    gen = open_generator(args.model, args.backend, batch_size=args.batch_size, threads=args.threads,
                         seed=args.seed, concurrency=args.concurrency, api_key_env=args.api_key_env,
                         calculator=args.calculator)
    console = Console(quiet=args.quiet)
    config = {"limit": args.limit, "suites": suites, "fewshot": args.fewshot, "seed": args.seed}
    if sandbox:
        config["sandbox"] = sandbox
    if export:
        config["export"] = export
    try:
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), RateColumn(),
                      TimeElapsedColumn(), console=console, transient=True) as bar:
            task = bar.add_task(f"eval {args.model} ({gen.name})", total=sum(len(p) for p in problems.values()))
            report = evaluate(gen, problems, Path(args.out), model=args.model, max_new_tokens=args.max_new_tokens,
                              strategy=args.strategy, shots=shots, config=config,
                              on_done=lambda n: bar.advance(task, n))
    finally:
        gen.close()
    if args.json:
        print(json.dumps(report["results"], indent=2))
        return 0
    calc = ", calculator" if report["calculator"] else ""
    table = Table(title=f"{args.model} ({report['backend']}{calc}, {report['duration_s']:.1f} s)")
    for col in ("suite", "n", "strict match", "flexible extract"):
        table.add_column(col)
    for name, r in report["results"].items():
        table.add_row(name, str(r["n"]), f"{r['strict_match']:.1%} ± {r['strict_match_stderr']:.1%}",
                      f"{r['flexible_extract']:.1%} ± {r['flexible_extract_stderr']:.1%}")
    console.print(table)
    console.print(f"results: {args.out}")
    return 0
