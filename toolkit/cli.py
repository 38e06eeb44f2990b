"""The `toolkit` command line: thin subcommands over the library; user errors end in one line, exit 2."""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

from pydantic import BaseModel
from rich.console import Console
from rich.table import Table

from toolkit import __version__
from toolkit.core.errors import DataError, ToolkitError, redact
from toolkit.core.flags import add_flags, from_args
from toolkit.core.memory import gb, process_peak_bytes
from toolkit.core import recipe_doc
from toolkit.core.recipe import load_recipe
from toolkit.core.storage import write_failure
from toolkit.data import fetch
from toolkit.data.suites import SUITES
from toolkit.eval.bench import run_sweep
from toolkit.eval.command import run_eval
from toolkit.eval.config import BenchConfig, EvalConfig
from toolkit.eval.report import build_report, paired_cells
from toolkit.eval.rounds_report import round_rows
from toolkit.eval.student_table import compare_runs
from toolkit.export.config import ExportConfig
from toolkit.export.run import export_model
from toolkit.pipeline.context import RunContext
from toolkit.pipeline.deploy import check_deploy
from toolkit.pipeline.distill import describe_plan, run_all
from toolkit.pipeline.estimate import estimate
from toolkit.pipeline.starter import PACKAGED_STUDENT, PACKAGED_TEACHER, write_starter
from toolkit.teacher.ledger import summary_line


LOG_WIDTH = 160  # characters per line of the final tables when the output is not a terminal


def _quiet_libraries() -> None:
    """transformers/llama.cpp chatter (GGUF dequantization bars, TP notes) hides our own output."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TQDM_DISABLE", "1")  # transformers' GGUF dequantization uses bare tqdm
    # heavy optional runtime, imported on first use
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def cmd_distill(args: argparse.Namespace) -> int:
    recipe = load_recipe(args.recipe, args.overrides)
    check_deploy(recipe)  # before the dry run's plan and any teacher call: one line for a bad deploy section
    # Redirected to a file or a CI log, rich would wrap the final table at 80 columns: give it room.
    console = Console(quiet=args.quiet, width=None if sys.stdout.isatty() else LOG_WIDTH)
    if args.dry_run:
        cost = estimate(recipe)
        if args.json:
            print(json.dumps(cost, indent=2))
            return 0
        table = Table(title=f"plan for {args.recipe} (dry run: nothing is executed)", show_header=False)
        for key, value in describe_plan(recipe):
            table.add_row(key, value)
        Console().print(table)
        Console().print(_estimate_table(cost))
        return 0
    _quiet_libraries()
    start = time.perf_counter()
    manifest = run_all(RunContext(recipe, console, fresh=args.fresh))
    if args.json:
        print(json.dumps(manifest["summary"], indent=2))
        return 0
    _print_summary(console, manifest, time.perf_counter() - start)
    return 0


def _estimate_table(cost: dict) -> Table:
    """The dry run's teacher estimate: one row per stage and the total; ≤ marks an upper bound (--json adds
    how each count was made)."""
    priced = cost["price"] is not None
    table = Table(title="teacher estimate (nothing is sent; ≈ approximate, ≤ upper bound)",
                  caption=". ".join(cost["notes"]) + ".", caption_justify="left")
    for col in ("stage", "requests", "prompt tokens", "completion tokens", *(("USD",) if priced else ())):
        table.add_column(col, justify="left" if col == "stage" else "right", no_wrap=True)
    for row in (*cost["stages"], cost["total"]):
        bound = "≤ " if row["upper_bound"] else ""
        table.add_row(row["stage"], f"{bound}{row['requests']:,}", f"{'≤ ' if row['prompt_upper_bound'] else '≈ '}{row['prompt_tokens']:,}",
                      f"≤ {row['completion_tokens']:,}", *((f"≤ {row['cost_usd']:.4f}",) if priced else ()))
    return table


def _print_summary(console, manifest: dict, seconds: float) -> None:
    summary = manifest["summary"]
    dep = summary.get("deploy")
    table = Table(title="distillation result (held-out problems, greedy)")
    # With a deploy section the exports follow the rounds: paired with the final student, speed, size, the pick.
    extra = ("vs student, points (95% CI)", "decode tok/s", "size MB", "picked") if dep else ()
    rows = round_rows(summary["rounds"])
    plain = any("strict_match_no_calculator" in r for r in rows)  # eval.calculator both: with and without it
    for col in ("student", "strict match (95% CI)", *(("no calculator",) if plain else ()), "flexible extract",
                "n", "training problems", "rationales", *extra):
        table.add_column(col, justify="left" if col == "student" else "right")
    for r in rows:
        lo, hi = r["strict_ci95"]
        no_calc = ()
        if plain:
            no_calc = (f"{r['strict_match_no_calculator']:.1%} ({r['strict_no_calculator_ci95'][0]:.0%}–"
                       f"{r['strict_no_calculator_ci95'][1]:.0%})" if "strict_match_no_calculator" in r else "–",)
        table.add_row(r["model"], f"{r['strict_match']:.1%} ({lo:.0%}–{hi:.0%})", *no_calc,
                      f"{r['flexible_extract']:.1%}", str(r["n"]), str(r["problems"]), str(r["rationales"]),
                      *("" for _ in extra))
    for r in dep["rows"] if dep else []:
        cells = _export_cells(r, dep["pick"]["chosen"])
        table.add_row(*(cells.get(str(c.header), "") for c in table.columns))
    console.print(table)
    if dep:
        pick = dep["pick"]
        for r in dep["rows"]:
            if r["error"]:
                console.print(f"{r['format']} {r['quant']} failed: {r['error']}")
        console.print(f"deploy pick: {pick['chosen'] or 'none'} ({pick['reason']})"
                      + (f"; bundle: {pick['bundle']}" if pick["bundle"] else ""))
    # Peak: this process's own peak RSS during the stage (VmHWM); a child (teacher server, torchrun
    # worker) that finished inside the stage with a larger peak than any earlier child is shown beside it.
    times = Table(title="stage times and peak memory (resident, this process)", show_header=False)
    for name, stage in manifest["stages"].items():
        child = stage.get("children_peak_rss_bytes")
        times.add_row(name, f"{stage['seconds']:.1f} s", gb(stage.get("peak_rss_bytes")),
                      f"child process {gb(child)}" if child else "")
    times.add_row("this invocation", f"{seconds:.1f} s", gb(process_peak_bytes()), "")
    console.print(times)
    if "teacher" in manifest:
        console.print(summary_line(manifest["teacher"]))
    run = Path(summary["student"]).parent.parent
    files = "rounds.md, accuracy.png, manifest.json" + (", deploy/deploy.md, report/report.md" if dep else "")
    console.print(f"run folder: {run.resolve()}  ({files})")
    console.print(f"student:    {summary['student']}")


def _export_cells(r: dict, chosen: str | None) -> dict[str, str]:
    """One export's cells in the final table, by column (a column it has no figure for stays empty)."""
    name = f"{r['format']} {r['quant']}"
    if r["error"]:
        return {"student": name, "strict match (95% CI)": "failed"}
    lo, hi = r["strict_ci95"]
    diff = paired_cells(r)[0]
    return {"student": name, "strict match (95% CI)": f"{r['strict_match']:.1%} ({lo:.0%}–{hi:.0%})",
            "flexible extract": f"{r['flexible_extract']:.1%}", "n": str(r["n"]), "vs student, points (95% CI)": diff,
            "decode tok/s": "–" if r["decode_tok_s"] is None else f"{r['decode_tok_s']:.1f}",
            "size MB": f"{r['size_bytes'] / 1e6:.1f}", "picked": "✓" if r["name"] == chosen else ""}


def cmd_eval(args: argparse.Namespace) -> int:
    config = from_args(EvalConfig, args)
    _quiet_libraries()
    return run_eval(args.model, args.out, config, quiet=args.quiet, as_json=args.json)


def cmd_export(args: argparse.Namespace) -> int:
    config = from_args(ExportConfig, args)
    _quiet_libraries()
    console = Console(quiet=args.quiet or args.json)
    with console.status(f"exporting {args.model} to {args.format} {args.quant}"):
        manifest = export_model(args.model, args.out, config)
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
    config = from_args(BenchConfig, args)
    console = Console(stderr=True, quiet=args.quiet or args.json)
    rows, paths = run_sweep(args.model, config, Path(args.out), status=lambda threads: console.status(
        f"bench {args.model}: {threads} thread(s), {config.reps} reps of pp {config.prompt_tokens} + "
        f"tg {config.gen_tokens}"))
    if args.json:
        print(json.dumps(rows[0] if len(rows) == 1 else rows, indent=2))
    elif not args.quiet:
        print(paths[2].read_text() + f"written: {', '.join(str(p) for p in paths)}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    inputs = [Path(p) for p in args.inputs]
    report = compare_runs(inputs, Path(args.out)) if args.compare else build_report(inputs, Path(args.out))
    if not args.quiet:
        print(f"report: {report}")
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    if args.action == "fetch":
        names = list(SUITES) if args.suites == ["all"] else args.suites
        unknown = [n for n in names if n not in SUITES]
        if not names or unknown:
            raise DataError(f"name the suites to fetch ({', '.join(SUITES)}, or all)"
                            + (f"; unknown: {', '.join(unknown)}" if unknown else ""))
        for name in names:
            try:
                root = fetch.fetch_suite(name, args.data_root)
            except DataError as exc:
                raise DataError(f"suite {name!r}: {exc}; else point --data-root, data.root or TOOLKIT_DATA at a "
                                f"copy, or TOOLKIT_DATA_URL at a mirror") from None
            if not args.quiet:
                print(f"{name}: {root / SUITES[name].file} (sha256 checked)")
        return 0
    rows = fetch.status(args.data_root, check=args.action == "verify")
    changed = [f"{r['root']}/{f}" for r in rows for f, state in r.get("files", {}).items() if state == "changed"]
    if args.json:
        print(json.dumps(rows, indent=2))
    elif not args.quiet:
        table = Table(title="suites (looked up in: " + ", ".join(str(p) for p in fetch.data_roots(args.data_root))
                      + ")")
        for col in ("suite", "file", "found in", *(("sha256",) if args.action == "verify" else ())):
            table.add_column(col)
        for r in rows:
            files = r.get("files", {})
            check = ", ".join(f"{f}: {s}" for f, s in files.items() if s != "ok") or ("ok" if files else "–")
            table.add_row(r["suite"], r["file"], r["root"] or "nowhere (toolkit data fetch " + r["suite"] + ")",
                          *((check,) if args.action == "verify" else ()))
        Console(width=None if sys.stdout.isatty() else LOG_WIDTH).print(table)
    if changed:
        print(f"error: {len(changed)} file(s) differ from the pinned sha256: {', '.join(changed)}; "
              f"fetch a fresh copy with `toolkit data fetch SUITE`", file=sys.stderr)
        return 1
    return 0


def cmd_init(args: argparse.Namespace) -> int:
    out = write_starter(args.problems, args.out, force=args.force, question_field=args.question_field,
                        answer_field=args.answer_field, teacher_url=args.teacher_url,
                        teacher_model=args.teacher_model, api_key_env=args.api_key_env, teacher=args.teacher,
                        student=args.student, name=args.name)
    if not args.quiet:
        print(f"wrote {out}; next: toolkit distill {out} --dry-run, then without --dry-run")
    return 0


def cmd_recipe(args: argparse.Namespace) -> int:
    if args.action == "doc":
        sys.stdout.write(recipe_doc.markdown())
    else:
        print(recipe_doc.explain(args.field))
    return 0


def _model_command(sub, name: str, config: type[BaseModel], func, *, help: str, description: str, model: str,
                   out: dict, json_help: str) -> None:
    """A subcommand over one model: the model (positional), the flags of its config model, then what is not
    config: --out (`out`: its argparse settings), --quiet and --json."""
    parser = sub.add_parser(name, help=help, description=description)
    parser.add_argument("model", help=model)
    add_flags(parser, config)
    parser.add_argument("--out", **out)
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--json", action="store_true", help=json_help)
    parser.set_defaults(func=func)


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
    d.add_argument("--dry-run", action="store_true",
                   help="print the resolved plan and the teacher's estimated requests, tokens and cost, and exit "
                        "(no teacher call, no training)")
    d.add_argument("--quiet", action="store_true", help="print nothing but errors")
    d.add_argument("--json", action="store_true",
                   help="print the result summary as JSON (with --dry-run: the teacher estimate)")
    d.set_defaults(func=cmd_distill)

    _model_command(sub, "eval", EvalConfig, cmd_eval, help="accuracy of a model on math suites",
                   description="Greedy accuracy with strict (after 'The answer is') and flexible (last "
                               "number) extraction over torch, onnxruntime, onnxruntime-genai, llama.cpp or "
                               "an OpenAI-compatible endpoint; writes results JSON and samples_<suite>.jsonl.",
                   model="hub id, save_pretrained folder, ONNX or genai export folder, .gguf file, "
                         "pkg:NAME, or openai:http://HOST:PORT/v1#MODEL",
                   out={"default": "results.json", "help": "results JSON path"},
                   json_help="print the results as JSON")

    _model_command(sub, "export", ExportConfig, cmd_export,
                   help="export a model to ONNX, onnxruntime-genai or GGUF, checked against it",
                   description="Turn a student folder, hub model or GGUF into files a plain runtime loads "
                               "(onnx: optimum/onnxruntime; genai: onnxruntime-genai; gguf: llama.cpp), then "
                               "compare token ids and greedy continuations with the source; writes "
                               "OUT/export.json.",
                   model="save_pretrained folder, hub id, .gguf file or pkg:NAME",
                   out={"required": True, "help": "output folder (empty, or a previous export to replace)"},
                   json_help="print export.json")

    _model_command(sub, "bench", BenchConfig, cmd_bench,
                   help="latency, throughput, memory and roofline of a model or export",
                   description="Time to first token, prefill and decode tokens/s (llama-bench's pp/tg), "
                               "per-token latency percentiles, peak RSS of the process running the model, "
                               "file size and the memory-bandwidth roofline; JSON plus .csv and .md beside it.",
                   model=".gguf file, pkg:NAME, ONNX/genai/HF export folder or .tar.gz edge bundle",
                   out={"default": "bench.json", "help": "bench JSON path (.csv and .md are written beside it)"},
                   json_help="print the bench JSON")

    r = sub.add_parser("report", help="Markdown report and plots from run folders, eval and bench results",
                       description="One row per model × format × quant (accuracy with 95%% CI, decode tok/s, "
                                   "size, roofline ratio), accuracy-vs-decode-speed and accuracy-vs-size plots, "
                                   "the per-token latency distribution, the per-round accuracy curve of a "
                                   "distillation run, and its deploy section (each export paired with the fp32 "
                                   "student, the pick).")
    r.add_argument("inputs", nargs="+", metavar="RUN_DIR_OR_RESULTS", help="run folders, folders or JSON files")
    r.add_argument("--out", default="report", help="output folder (report.md and PNGs)")
    r.add_argument("--compare", action="store_true",
                   help="the inputs are distillation run folders: which student to ship, side by side (base and "
                        "distilled accuracy paired, training time and memory, each export's size, accuracy and "
                        "speed, Pareto plots) in compare.md, compare.json and compare-pareto.png")
    r.add_argument("--quiet", action="store_true")
    r.set_defaults(func=cmd_report)

    rc = sub.add_parser("recipe", help="the recipe reference: what each field means, its unit, type and default",
                        description="`explain [FIELD]` prints a field's meaning, unit, type and default (a section: "
                                    "its fields too); `doc` prints the whole reference as Markdown "
                                    "(docs/recipe.md).")
    rc_sub = rc.add_subparsers(dest="action", metavar="ACTION", required=True)
    ex = rc_sub.add_parser("explain", help="explain one field or section, e.g. deploy.max_accuracy_drop")
    ex.add_argument("field", nargs="?", help="a dotted field or section (default: the top level)")
    rc_sub.add_parser("doc", help="print the reference as Markdown (docs/recipe.md)")
    rc.set_defaults(func=cmd_recipe)

    dt = sub.add_parser("data", help="the built-in suites: where each is, fetch one, verify checksums",
                        description="A suite is looked up in --data-root (a recipe's data.root), then $TOOLKIT_DATA, "
                                    "then the user cache (TOOLKIT_CACHE/data); a run downloads one found nowhere. "
                                    "list: where each suite is. fetch SUITE... (or all): download into the cache "
                                    "(or --data-root) from the authors' pinned commit, refused unless its sha256 "
                                    "matches. verify: every present file against its pinned sha256 (exit 1 if any "
                                    "differs).")
    dt.add_argument("action", choices=["list", "fetch", "verify"])
    dt.add_argument("suites", nargs="*", metavar="SUITE", help=f"fetch: {', '.join(SUITES)}, or all")
    dt.add_argument("--data-root", help="the folder looked in first; fetch writes there (default: the cache)")
    dt.add_argument("--quiet", action="store_true")
    dt.add_argument("--json", action="store_true", help="list/verify: print the rows as JSON")
    dt.set_defaults(func=cmd_data)

    i = sub.add_parser("init", help="write a commented starter recipe for your own problems and teacher",
                       description="Reads your problem file (JSONL or CSV, one problem per line or row), checks every "
                                   "problem, and writes a recipe that distills from it: an OpenAI-compatible teacher "
                                   "(--teacher-url, --teacher-model, --api-key-env) or a packaged one (--teacher).")
    i.add_argument("problems", help="JSONL or CSV file of problems (a numeric answer each; an optional id field)")
    i.add_argument("--question-field", default="question", help="the field or column holding the question")
    i.add_argument("--answer-field", default="answer", help="the field or column holding the numeric answer")
    i.add_argument("--teacher-url", help="an OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1")
    i.add_argument("--teacher-model", help="the model name that endpoint serves")
    i.add_argument("--api-key-env", default="OPENAI_API_KEY",
                   help="the environment variable holding the endpoint's key (the key itself is never written)")
    i.add_argument("--teacher", default=PACKAGED_TEACHER, help="without --teacher-url: a packaged GGUF or .gguf file")
    i.add_argument("--student", default=PACKAGED_STUDENT, help="the student: packaged model, hub id or local folder")
    i.add_argument("--name", help="the run's name (default: the problem file's name)")
    i.add_argument("--out", default="recipe.yaml", help="the recipe file to write")
    i.add_argument("--force", action="store_true", help="replace --out if it exists")
    i.add_argument("--quiet", action="store_true")
    i.set_defaults(func=cmd_init)
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
