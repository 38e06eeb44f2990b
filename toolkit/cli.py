"""The `toolkit` command line: thin subcommands over the library; user errors end in one line, exit 2."""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from toolkit import __version__
from toolkit.errors import ToolkitError

SUITE_NAMES = ("gsm8k", "svamp", "asdiv", "multiarith", "addsub", "singleeq")


def _quiet_libraries() -> None:
    """transformers/llama.cpp chatter (GGUF dequantization bars, TP notes) hides our own output."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TQDM_DISABLE", "1")  # transformers' GGUF dequantization uses bare tqdm
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def cmd_distill(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from toolkit.distill import Distiller, describe_plan
    from toolkit.recipe import load_recipe

    recipe = load_recipe(args.recipe, args.overrides)
    console = Console(quiet=args.quiet)
    if args.dry_run:
        table = Table(title=f"plan for {args.recipe} (dry run: nothing is executed)", show_header=False)
        for key, value in describe_plan(recipe):
            table.add_row(key, value)
        Console().print(table)
        return 0
    _quiet_libraries()
    start = time.perf_counter()
    manifest = Distiller(recipe, console, fresh=args.fresh).run_all()
    if args.json:
        print(json.dumps(manifest["summary"], indent=2))
        return 0
    _print_summary(console, manifest, time.perf_counter() - start)
    return 0


def _print_summary(console, manifest: dict, seconds: float) -> None:
    from rich.table import Table

    from toolkit.rounds_report import round_rows

    summary = manifest["summary"]
    table = Table(title="distillation result (held-out problems, greedy)")
    for col in ("student", "strict match (95% CI)", "flexible extract", "n", "training problems", "rationales"):
        table.add_column(col, justify="left" if col == "student" else "right")
    for r in round_rows(summary["rounds"]):
        lo, hi = r["strict_ci95"]
        table.add_row(r["model"], f"{r['strict_match']:.1%} ({lo:.0%}–{hi:.0%})", f"{r['flexible_extract']:.1%}",
                      str(r["n"]), str(r["problems"]), str(r["rationales"]))
    console.print(table)
    times = Table(title="stage times", show_header=False)
    for name, stage in manifest["stages"].items():
        times.add_row(name, f"{stage['seconds']:.1f} s")
    times.add_row("this invocation", f"{seconds:.1f} s")
    console.print(times)
    run = Path(summary["student"]).parent.parent
    console.print(f"run folder: {run.resolve()}  (rounds.md, accuracy.png, manifest.json)")
    console.print(f"student:    {summary['student']}")


def cmd_eval(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    from toolkit.eval.accuracy import evaluate
    from toolkit.eval.generate import open_generator
    from toolkit.problems import load_suite

    suites = [s.strip() for s in args.suite.split(",") if s.strip()]
    unknown = [s for s in suites if s not in SUITE_NAMES]
    if unknown:
        raise ToolkitError(f"unknown suite(s) {', '.join(unknown)}; choose from {', '.join(SUITE_NAMES)}")
    data_root = args.data_root or os.environ.get("TOOLKIT_DATA") or "data"
    problems = {s: load_suite(s, data_root)[: args.limit] if args.limit else load_suite(s, data_root)
                for s in suites}
    _quiet_libraries()
    gen = open_generator(args.model, args.backend, batch_size=args.batch_size, threads=args.threads)
    console = Console(quiet=args.quiet)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True) as bar:
        task = bar.add_task(f"eval {args.model}", total=sum(len(p) for p in problems.values()))
        report = evaluate(gen, problems, Path(args.out), model=args.model, max_new_tokens=args.max_new_tokens,
                          config={"limit": args.limit, "suites": suites},
                          on_done=lambda n: bar.advance(task, n), strategy=args.strategy)
    if args.json:
        print(json.dumps(report["results"], indent=2))
        return 0
    table = Table(title=f"{args.model} ({report['backend']})")
    for col in ("suite", "n", "strict match", "flexible extract"):
        table.add_column(col)
    for name, r in report["results"].items():
        table.add_row(name, str(r["n"]), f"{r['strict_match']:.1%} ± {r['strict_match_stderr']:.1%}",
                      f"{r['flexible_extract']:.1%} ± {r['flexible_extract_stderr']:.1%}")
    console.print(table)
    console.print(f"results: {args.out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="toolkit",
        description="Distill math reasoning from a teacher LLM into a small student, then evaluate it.",
        epilog="Run `toolkit COMMAND --help` for a command's options.")
    parser.add_argument("--version", action="version", version=f"toolkit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    d = sub.add_parser("distill", help="run a distillation recipe (resumes a stopped run)",
                       description="Run the recipe's feedback-driven distillation: teacher rationales, "
                                   "student fine-tuning and evaluation (round 0), then per later round student "
                                   "feedback, teacher-written new problems with self-consistency labels and "
                                   "retraining from the base. A run that was stopped resumes where it stopped; "
                                   "teacher requests are cached, so nothing is paid for twice.")
    d.add_argument("recipe", help="the recipe YAML file (see recipes/)")
    d.add_argument("overrides", nargs="*", metavar="key.path=value",
                   help="override recipe values, e.g. train.lr=3e-4 data.train_size=32")
    d.add_argument("--fresh", action="store_true", help="delete the run folder and start over (keeps the cache)")
    d.add_argument("--dry-run", action="store_true", help="print the resolved plan and exit")
    d.add_argument("--quiet", action="store_true", help="print nothing but errors")
    d.add_argument("--json", action="store_true", help="print the result summary as JSON")
    d.set_defaults(func=cmd_distill)

    e = sub.add_parser("eval", help="accuracy of a model on math suites",
                       description="Greedy accuracy with strict (after 'The answer is') and flexible (last "
                                   "number) extraction; writes results JSON and samples_<suite>.jsonl.")
    e.add_argument("model", help="hub id, save_pretrained folder, .gguf file or pkg:NAME")
    e.add_argument("--suite", default="gsm8k", help=f"comma-separated: {','.join(SUITE_NAMES)}")
    e.add_argument("--limit", type=int, default=None, help="first N problems of each suite")
    e.add_argument("--backend", default="auto", choices=["auto", "torch", "llama.cpp"],
                   help="auto: llama.cpp for GGUF files, torch otherwise")
    e.add_argument("--strategy", default="cot", choices=["cot", "l2m", "pot", "auto"],
                   help="cot: the plain chain-of-thought prompt; l2m/pot: a multi-strategy student forced to "
                        "that strategy (its tag starts the reply; PoT programs run in the sandbox); auto: the "
                        "student picks its strategy")
    e.add_argument("--max-new-tokens", type=int, default=256)
    e.add_argument("--batch-size", type=int, default=16, help="prompts per batch (torch)")
    e.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    e.add_argument("--data-root", default=None, help="folder holding the suites (default: $TOOLKIT_DATA or ./data)")
    e.add_argument("--out", default="results.json", help="results JSON path")
    e.add_argument("--quiet", action="store_true")
    e.add_argument("--json", action="store_true", help="print the results as JSON")
    e.set_defaults(func=cmd_eval)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ToolkitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted: finished stages and cached teacher requests are kept; run again to resume",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
