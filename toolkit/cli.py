"""The `toolkit` command line: thin subcommands over the library; user errors end in one line, exit 2."""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

from toolkit import __version__
from toolkit.core.errors import ToolkitError, redact


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

    from toolkit.pipeline.context import RunContext
    from toolkit.pipeline.distill import describe_plan, run_all
    from toolkit.core.recipe import load_recipe

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
    manifest = run_all(RunContext(recipe, console, fresh=args.fresh))
    if args.json:
        print(json.dumps(manifest["summary"], indent=2))
        return 0
    _print_summary(console, manifest, time.perf_counter() - start)
    return 0


def _print_summary(console, manifest: dict, seconds: float) -> None:
    from rich.table import Table

    from toolkit.eval.rounds_report import round_rows

    summary = manifest["summary"]
    table = Table(title="distillation result (held-out problems, greedy)")
    for col in ("student", "strict match (95% CI)", "flexible extract", "n", "training problems", "rationales"):
        table.add_column(col, justify="left" if col == "student" else "right")
    for r in round_rows(summary["rounds"]):
        lo, hi = r["strict_ci95"]
        table.add_row(r["model"], f"{r['strict_match']:.1%} ({lo:.0%}–{hi:.0%})", f"{r['flexible_extract']:.1%}",
                      str(r["n"]), str(r["problems"]), str(r["rationales"]))
    console.print(table)
    from toolkit.core.memory import gb, process_peak_bytes

    # Peak: this process's own peak RSS during the stage (VmHWM); a child (teacher server, torchrun
    # worker) that finished inside the stage with a larger peak than any earlier child is shown beside it.
    times = Table(title="stage times and peak memory (resident, this process)", show_header=False)
    for name, stage in manifest["stages"].items():
        child = stage.get("children_peak_rss_bytes")
        times.add_row(name, f"{stage['seconds']:.1f} s", gb(stage.get("peak_rss_bytes")),
                      f"child process {gb(child)}" if child else "")
    times.add_row("this invocation", f"{seconds:.1f} s", gb(process_peak_bytes()), "")
    console.print(times)
    run = Path(summary["student"]).parent.parent
    console.print(f"run folder: {run.resolve()}  (rounds.md, accuracy.png, manifest.json)")
    console.print(f"student:    {summary['student']}")


def cmd_eval(args: argparse.Namespace) -> int:
    from toolkit.eval.command import run_eval

    _quiet_libraries()
    return run_eval(args)


def cmd_export(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from toolkit.export.run import export_model

    _quiet_libraries()
    console = Console(quiet=args.quiet or args.json)
    with console.status(f"exporting {args.model} to {args.format} {args.quant}"):
        manifest = export_model(args.model, args.format, args.quant, args.out, check=args.check, bundle=args.bundle,
                                threads=args.threads, max_new_tokens=args.max_new_tokens, block_size=args.block_size,
                                min_first_token_match=args.min_first_token_match,
                                min_token_agreement=args.min_token_agreement, tokenizer_gguf=args.tokenizer_gguf,
                                eval_suite=args.eval_suite, eval_limit=args.eval_limit, data_root=args.data_root,
                                max_accuracy_drop=args.max_accuracy_drop, int4_head_bits=args.int4_head_bits)
    if args.json:
        print(json.dumps(manifest, indent=2))
        return 0
    table = Table(title=f"{args.model} → {args.format} {args.quant} ({manifest['seconds']:.0f} s)")
    for col in ("file", "MB", "sha256"):
        table.add_column(col, justify="right" if col == "MB" else "left")
    for f in manifest["files"]:
        table.add_row(f["path"], f"{f['bytes'] / 1e6:.1f}", f["sha256"][:16])
    console.print(table)
    par = manifest["parity"]
    console.print(f"tokenizer: {par['tokenizer']['agree']}/{par['tokenizer']['texts']} texts identical; greedy: "
                  f"first token {par['greedy']['first_token_match']:.0%}, token agreement "
                  f"{par['greedy']['token_agreement']:.0%} over {par['greedy']['prompts']} prompts; "
                  f"passed: {manifest['passed']}")
    if "accuracy" in par:
        acc = par["accuracy"]
        console.print(f"accuracy on {acc['n']} {acc['suite']} problems (strict): source {acc['source']['strict_match']:.1%}, "
                      f"export {acc['export']['strict_match']:.1%} ({acc['delta_points']['strict_match']:+.1f} points); "
                      f"same answer {acc['same_strict_answer']:.0%}")
    for note in manifest["notes"]:
        console.print(f"note: {note}")
    if "bundle" in manifest:
        console.print(f"bundle: {Path(args.out) / manifest['bundle']['path']}")
    console.print(f"manifest: {Path(args.out) / 'export.json'}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from contextlib import nullcontext

    from rich.console import Console

    from toolkit.eval.bench import resolve_local, run_bench, write_outputs
    from toolkit.eval.remote import RemoteExecutor

    try:
        threads = [int(t) for t in args.threads.split(",")] if args.threads else [os.cpu_count() or 1]
    except ValueError:
        raise ToolkitError(f"--threads wants N or a list like 1,2,4, got {args.threads!r}") from None
    remote = (RemoteExecutor(args.remote, resolve_local(args.model), args.remote_python, tuple(args.ssh_option))
              if args.remote else nullcontext(None))
    console = Console(stderr=True, quiet=args.quiet or args.json)
    rows: list[dict] = []
    try:
        with remote as executor:
            for t in threads:
                with console.status(f"bench {args.model}: {t} thread(s), {args.reps} reps of "
                                    f"pp {args.prompt_tokens} + tg {args.gen_tokens}"):
                    rows.append(run_bench(args.model, prompt_tokens=args.prompt_tokens, gen_tokens=args.gen_tokens,
                                          reps=args.reps, warmup=args.warmup, threads=t,
                                          allow_busy=args.allow_busy, executor=executor))
    finally:  # a sweep stopped part way (busy machine, lost device) keeps the rows it measured
        if rows:
            paths = write_outputs(rows, Path(args.out))
    if args.json:
        print(json.dumps(rows[0] if len(rows) == 1 else rows, indent=2))
    elif not args.quiet:
        print(paths[2].read_text() + f"written: {', '.join(str(p) for p in paths)}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from toolkit.eval.report import build_report

    report = build_report([Path(p) for p in args.inputs], Path(args.out))
    if not args.quiet:
        print(f"report: {report}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from toolkit.eval.command import add_eval_arguments

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
                                   "number) extraction over torch, onnxruntime, onnxruntime-genai, llama.cpp or "
                                   "an OpenAI-compatible endpoint; writes results JSON and samples_<suite>.jsonl.")
    add_eval_arguments(e)
    e.set_defaults(func=cmd_eval)

    x = sub.add_parser("export", help="export a model to ONNX, onnxruntime-genai or GGUF, checked against it",
                       description="Turn a student folder, hub model or GGUF into files a plain runtime loads "
                                   "(onnx: optimum/onnxruntime; genai: onnxruntime-genai; gguf: llama.cpp), then "
                                   "compare token ids and greedy continuations with the source; writes "
                                   "OUT/export.json.")
    x.add_argument("model", help="save_pretrained folder, hub id, .gguf file or pkg:NAME")
    x.add_argument("--format", required=True, choices=["onnx", "genai", "gguf"])
    x.add_argument("--quant", required=True,
                   help="onnx: fp32|int8|int4; genai: int4|fp32; gguf: f16|f32|q8_0|q4_k_m|q4_0|… (llama.cpp types)")
    x.add_argument("--out", required=True, help="output folder (empty, or a previous export to replace)")
    x.add_argument("--check", action="store_true", help="exit non-zero when parity is below the thresholds")
    x.add_argument("--bundle", action="store_true", help="also write a .tar.gz with a runtime-only runner (gguf, genai)")
    x.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores, at most 8)")
    x.add_argument("--max-new-tokens", type=int, default=16, help="greedy tokens compared per sample prompt")
    x.add_argument("--block-size", type=int, default=32, help="int4 block size (onnx, genai)")
    x.add_argument("--int4-head-bits", type=int, default=None, choices=[8, 4],
                   help="int4 (genai, onnx): bits of the LM head, and in genai of a tied embedding sharing it "
                        "(default 8; 4 is smaller and faster, less faithful)")
    x.add_argument("--min-first-token-match", type=float, default=None,
                   help="share of prompts whose first greedy token must match (default 1.0 unquantized, 0 else)")
    x.add_argument("--min-token-agreement", type=float, default=None,
                   help="mean matched share of the source's greedy tokens (default 0.5 quantized, 0 else)")
    x.add_argument("--eval-suite", default=None, metavar="SUITE",
                   help="also score source and export on this math suite and record the accuracy delta")
    x.add_argument("--eval-limit", type=int, default=20, help="problems of --eval-suite (its first N)")
    x.add_argument("--data-root", default=None, help="folder holding the suites (default: $TOOLKIT_DATA or ./data)")
    x.add_argument("--max-accuracy-drop", type=float, default=None, metavar="POINTS",
                   help="largest strict-accuracy drop, in points, that --check accepts (default 10)")
    x.add_argument("--tokenizer-gguf", default=None,
                   help="GGUF (or pkg:NAME) whose tokenizer metadata a gguf export carries over (default: recorded base)")
    x.add_argument("--quiet", action="store_true")
    x.add_argument("--json", action="store_true", help="print export.json")
    x.set_defaults(func=cmd_export)

    b = sub.add_parser("bench", help="latency, throughput, memory and roofline of a model or export",
                       description="Time to first token, prefill and decode tokens/s (llama-bench's pp/tg), "
                                   "per-token latency percentiles, peak RSS of the process running the model, "
                                   "file size and the memory-bandwidth roofline; JSON plus .csv and .md beside it.")
    b.add_argument("model", help=".gguf file, pkg:NAME, ONNX/genai/HF export folder or .tar.gz edge bundle")
    b.add_argument("--prompt-tokens", type=int, default=128, help="prefill length pp (synthetic tokens)")
    b.add_argument("--gen-tokens", type=int, default=128, help="decode length tg (single-token steps)")
    b.add_argument("--reps", type=int, default=5, help="timed repetitions (after --warmup untimed ones)")
    b.add_argument("--warmup", type=int, default=1)
    b.add_argument("--threads", default=None, help="N or a sweep 1,2,4 (default: all cores)")
    b.add_argument("--allow-busy", action="store_true",
                   help="report figures even when the load average leaves fewer idle cores than threads")
    b.add_argument("--remote", default=None, metavar="ssh://user@host[:port]",
                   help="copy the model and a self-contained runner to this device and bench there")
    b.add_argument("--remote-python", default="python3", help="python on the device (needs the backend runtime)")
    b.add_argument("--ssh-option", action="append", default=[], metavar="KEY=VALUE",
                   help="passed to ssh/scp as -o KEY=VALUE (repeatable), e.g. IdentityFile=~/.ssh/edge")
    b.add_argument("--out", default="bench.json", help="bench JSON path (.csv and .md are written beside it)")
    b.add_argument("--quiet", action="store_true")
    b.add_argument("--json", action="store_true", help="print the bench JSON")
    b.set_defaults(func=cmd_bench)

    r = sub.add_parser("report", help="Markdown report and plots from run folders, eval and bench results",
                       description="One row per model × format × quant (accuracy with 95%% CI, decode tok/s, "
                                   "size, roofline ratio), accuracy-vs-latency and accuracy-vs-size plots, and "
                                   "the per-round accuracy curve of a distillation run.")
    r.add_argument("inputs", nargs="+", metavar="RUN_DIR_OR_RESULTS", help="run folders, folders or JSON files")
    r.add_argument("--out", default="report", help="output folder (report.md and PNGs)")
    r.add_argument("--quiet", action="store_true")
    r.set_defaults(func=cmd_report)
    return parser


def _interrupt(signum, frame) -> None:
    """SIGTERM (a job scheduler, `kill`, a container stop) unwinds like Ctrl-C, so the teacher server,
    which runs in a session of its own, is stopped rather than left running as an orphan."""
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        return args.func(args)
    except ToolkitError as exc:
        print(f"error: {redact(str(exc))}", file=sys.stderr)  # a server's text may quote a key
        return exc.exit_code
    except OSError as exc:  # a write the stages did not expect to fail: full disk, read-only folder
        from toolkit.core.storage import write_failure

        reason = write_failure(exc)
        if reason is None:
            raise
        print(f"error: {reason}; finished stages and cached teacher requests are kept", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished stages and cached teacher requests are kept; run again to resume",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
