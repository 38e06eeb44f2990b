"""The recipe's `deploy:` after the last round or iteration: each export of the final student built (with parity),
scored on the held-out problems in its own runtime and paired with the fp32 student, benchmarked; then the pick,
the edge bundle and the run's report. Every step is a stage whose record carries a digest of its settings, so a
resumed run redoes only the steps whose settings changed."""
from __future__ import annotations

import hashlib
import json
import math
import subprocess
from collections.abc import Callable
from pathlib import Path

from toolkit.core.errors import RecipeError, ToolkitError
from toolkit.core.jsonio import atomic_write_json, atomic_write_text
from toolkit.core.recipe import DeployConfig, DeployFormat, Recipe
from toolkit.core.stats import wilson_interval
from toolkit.data.problems import Problem
from toolkit.data.prompt_rule import read_record
from toolkit.data.strategies import is_tagged
from toolkit.eval.accuracy import evaluate
from toolkit.eval.bench import run_sweep
from toolkit.eval.config import BenchConfig
from toolkit.eval.generate import open_generator
from toolkit.eval.remote import parse_remote
from toolkit.eval.report import build_report, deploy_table
from toolkit.eval.roofline import folder_size
from toolkit.eval.rounds_report import compare, strict_scores
from toolkit.export.bundle import bundle_name, write_bundle
from toolkit.export.model_card import run_card
from toolkit.export.config import ExportConfig
from toolkit.export.run import check_request, export_model
from toolkit.pipeline.context import RunContext

BUNDLE_FORMATS = ("gguf", "genai")  # the formats with a runtime-only bundle runner (export/bundle.py)
PROBE_TIMEOUT_S = 5  # ssh ConnectTimeout of the reachability check of deploy.remote, seconds


# --- checks before the run starts ------------------------------------------------------------------------------

def bench_config(deploy: DeployConfig) -> BenchConfig:
    """deploy.bench and deploy.remote as the BenchConfig of every export's bench (the recipe's schema has already
    checked each deploy.bench key, DeployBenchConfig)."""
    return BenchConfig(**deploy.bench.model_dump(), remote=deploy.remote)


def probe_remote(url: str, ssh_options: list[str]) -> None:
    """One `ssh … true` to deploy.remote in batch mode (keys only); a RecipeError when it does not answer."""
    try:
        user, host, port = parse_remote(url)
    except ToolkitError as exc:
        raise RecipeError(f"deploy.remote: {exc}") from None
    target = f"{user}@{host}" if user else host
    where = f"ssh://{target}:{port}"  # parse_remote refuses passwords: nothing secret is echoed
    cmd = ["ssh", "-p", str(port), "-o", "BatchMode=yes", "-o", f"ConnectTimeout={PROBE_TIMEOUT_S}",
           *(x for o in ssh_options for x in ("-o", o)), "--", target, "true"]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=3 * PROBE_TIMEOUT_S)
    except FileNotFoundError:
        raise RecipeError(f"deploy.remote {where}: unreachable (no ssh client on this machine)") from None
    except subprocess.TimeoutExpired:
        raise RecipeError(f"deploy.remote {where}: unreachable (no answer in {3 * PROBE_TIMEOUT_S} s)") from None
    if proc.returncode != 0:
        why = (proc.stderr.strip().splitlines() or [f"ssh exited {proc.returncode}"])[-1]
        raise RecipeError(f"deploy.remote {where}: unreachable ({why.strip()[:200]})")


def check_deploy(recipe: Recipe) -> None:
    """Refuse impossible deploy settings before any teacher call: a quant its format does not have, a bad
    bench setting, an unreachable remote device (each one line)."""
    deploy = recipe.deploy
    if deploy is None:
        return
    for i, f in enumerate(deploy.formats):
        try:
            check_request(f.format, f.quant, bundle=False, int4_head_bits=None)
        except ToolkitError as exc:
            raise RecipeError(f"deploy.formats.{i} ({f.format} {f.quant}): {exc}") from None
    cfg = bench_config(deploy)
    if deploy.remote:
        probe_remote(deploy.remote, cfg.ssh_option)


# --- the pick ----------------------------------------------------------------------------------------------------

def within_drop(row: dict, max_drop: float) -> bool:
    """No error, and the paired interval allows at most `max_drop` points of drop. Parity is recorded but does
    not decide: its token-agreement threshold refuses every 4-bit export of a 135M model (bench/results/
    export-formats), while the held-out accuracy drop measures what a user loses."""
    drop = row.get("drop_upper_points")
    return not row.get("error") and drop is not None and drop <= max_drop


def _not_candidate(row: dict, rule: str, max_drop: float, bundle: bool) -> str | None:
    """Why `row` cannot be picked, or None."""
    name = row["name"]
    if row.get("error"):
        return f"{name} failed"
    if bundle and row["format"] not in BUNDLE_FORMATS:
        return f"{name} has no bundle runner"
    drop = row.get("drop_upper_points")
    if drop is None:
        return f"{name} is not paired with the student"
    if drop > max_drop:
        return f"{name} may drop up to {drop:.1f} points"
    if row.get("size_bytes" if rule == "smallest" else "decode_tok_s") is None:
        return f"{name} has no {'size' if rule == 'smallest' else 'decode speed'}"
    return None


def pick(rows: list[dict], rule: str, max_drop: float, bundle: bool) -> tuple[str | None, str]:
    """(name of the recommended export or None, why): among the exports within `max_drop` points (see
    within_drop; with `bundle` only gguf and genai), the smallest (least size_bytes; ties: the higher
    decode_tok_s) or the fastest (most decode_tok_s; ties: the smaller); then by name."""
    why = {r["name"]: _not_candidate(r, rule, max_drop, bundle) for r in rows}
    candidates = [r for r in rows if why[r["name"]] is None]
    skipped = [w for w in why.values() if w]
    if not candidates:
        return None, f"no export qualifies: {'; '.join(skipped) or 'none given'}"
    if rule == "smallest":
        best = min(candidates, key=lambda r: (r["size_bytes"], -(r.get("decode_tok_s") or 0.0), r["name"]))
    else:
        best = min(candidates, key=lambda r: (-r["decode_tok_s"], r.get("size_bytes") or math.inf, r["name"]))
    n = len(candidates)
    kind = "gguf/genai " if bundle else ""
    reason = (f"{rule} of {n} {kind}export{'s' if n > 1 else ''} whose drop stays within {max_drop:g} points "
              f"(upper end of the paired 95% interval)")
    return best["name"], reason + (f"; left out: {'; '.join(skipped)}" if skipped else "")


# --- the stages --------------------------------------------------------------------------------------------------

def _digest(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _stage(ctx: RunContext, name: str, title: str, settings: str, compute: Callable[[dict], object],
           read: Callable[[], object]):
    """ctx.cached_stage whose record carries `settings`: a stage done under other settings is done again."""
    if ctx.run.stage(name).get("settings") != settings:
        ctx.run.forget(name)

    def run(info: dict) -> None:
        compute(info)
        info["settings"] = settings

    return ctx.cached_stage(name, title, run, read)


def _model_path(fmt: str, model_dir: Path) -> Path:
    """What runs the export: the .gguf file, or the export folder (onnx, genai)."""
    return next(model_dir.glob("*.gguf")) if fmt == "gguf" else model_dir


def _bench_figures(row: dict) -> dict:
    """The deploy row's speed figures from one Bench JSON row (means over reps; per-token latency p50/p99)."""
    return {"decode_tok_s": round(row["decode_tok_s"]["mean"], 2), "prefill_tok_s": round(row["prefill_tok_s"]["mean"], 2),
            "ttft_ms": round(row["ttft_ms"]["mean"], 2), "decode_ms_p50": round(row["decode_ms_per_token"]["p50"], 3),
            "decode_ms_p99": round(row["decode_ms_per_token"]["p99"], 3), "peak_rss_bytes": row["peak_rss_bytes"],
            "roofline_ratio": row["roofline"]["ratio"], "threads": row["threads"], "busy": row["busy"]}


class _Export:
    """The three stages of one export (deploy/<format>-<quant>/{export,eval,bench}) and their records."""

    def __init__(self, ctx: RunContext, fmt: DeployFormat, student_dir: Path, problems: list[Problem],
                 bench: BenchConfig):
        self.ctx, self.fmt, self.student_dir, self.problems, self.bench = ctx, fmt, student_dir, problems, bench
        self.folder = ctx.run.root / "deploy" / fmt.name
        self.model_dir = self.folder / "model"
        self.stage = f"deploy/{fmt.name}"
        e = ctx.recipe.eval
        # Each digest chains the one before: a redone export redoes its eval and bench. The student's prompt rule
        # is in it: an export (and bundle) made before students carried one is made again, with it.
        prompt = read_record(student_dir)
        self.settings = {"export": _digest("export", fmt.format, fmt.quant, str(student_dir), prompt)}
        self.settings["eval"] = _digest(self.settings["export"], [p.id for p in problems], e.max_new_tokens,
                                        e.batch_size, bool(e.calculator))
        self.settings["bench"] = _digest(self.settings["export"], bench.model_dump(mode="json"))

    def records(self) -> dict[str, dict]:
        """The stages' manifest records (empty for one not done)."""
        return {step: self.ctx.run.stage(f"{self.stage}/{step}") for step in self.settings}

    def run(self) -> str | None:
        """Run (or resume) the three stages in order; the first failure's one-line message, else None."""
        ctx = self.ctx
        for step, go in (("export", self._export), ("eval", self._eval), ("bench", self._bench)):
            try:
                go(f"{self.stage}/{step}")
            except ToolkitError as exc:
                message = f"{step}: {' '.join(str(exc).split())}"
                ctx.console.print(f"[yellow]{self.fmt.name} {message}; the other exports go on[/yellow]")
                return message
        return None

    def _export(self, name: str) -> None:
        f = self.fmt

        def compute(info: dict) -> None:
            manifest = export_model(str(self.student_dir), self.model_dir,
                                    ExportConfig(format=f.format, quant=f.quant, threads=self.ctx.threads))
            path = _model_path(f.format, self.model_dir)
            greedy = manifest["parity"].get("greedy", {})
            info.update(path=str(path), size_bytes=folder_size(path),
                        parity={"passed": bool(manifest["parity"]["passed"]),
                                "first_token_match": greedy.get("first_token_match"),
                                "token_agreement": greedy.get("token_agreement")})

        _stage(self.ctx, name, f"deploy: export the student to {f.format} {f.quant} (parity checked)",
               self.settings["export"], compute, lambda: None)

    def _eval(self, name: str) -> None:
        ctx, e = self.ctx, self.ctx.recipe.eval
        out = self.folder / "eval" / "results.json"
        path = ctx.run.stage(f"{self.stage}/export")["path"]

        def compute(info: dict) -> None:
            # The round evals' settings (recipe.eval), in the export's own runtime; "both" counts as on: the
            # primary figure the student is paired on is the one with the calculator.
            gen = open_generator(path, "auto", batch_size=e.batch_size, threads=ctx.threads, seed=ctx.recipe.seed,
                                 calculator=bool(e.calculator))
            try:
                strategy = "auto" if is_tagged(ctx.recipe.distill.strategies) else "cot"
                with ctx.progress("answering held-out problems", len(self.problems)) as advance:
                    report = evaluate(gen, {"heldout": self.problems}, out, model=path,
                                      max_new_tokens=e.max_new_tokens, strategy=strategy, on_done=advance)
            finally:
                gen.close()  # one model in memory at a time
            res = report["results"]["heldout"]
            info.update(backend=report["backend"], n=res["n"], strict_match=res["strict_match"],
                        flexible_extract=res["flexible_extract"], results=str(out))

        _stage(ctx, name, f"deploy: {self.fmt.format} {self.fmt.quant} answers {len(self.problems)} held-out problems",
               self.settings["eval"], compute, lambda: None)

    def _bench(self, name: str) -> None:
        ctx = self.ctx
        out = self.folder / "bench.json"
        path = ctx.run.stage(f"{self.stage}/export")["path"]

        def compute(info: dict) -> None:
            # A bundle an earlier pick wrote into the export folder is neither measured nor copied to a device;
            # the pick that follows this stage writes it again.
            for old in self.model_dir.glob("*.tar.gz"):
                old.unlink()
            rows, _ = run_sweep(path, self.bench, out, status=lambda threads: ctx.console.status(
                f"bench {self.fmt.name}: {threads} thread(s)"))
            # Nested: the stage record has a peak_rss_bytes of its own (this process's).
            info.update(figures=_bench_figures(max(rows, key=lambda r: r["decode_tok_s"]["mean"])), bench=str(out),
                        host=rows[0]["host"])

        where = f" on {self.bench.remote}" if self.bench.remote else ""
        _stage(ctx, name, f"deploy: bench {self.fmt.format} {self.fmt.quant}{where}", self.settings["bench"], compute,
               lambda: None)


def _reference(name: str, record: dict, ids: list[str]) -> tuple[dict, dict[str, bool] | str]:
    """The fp32 student's figures on the evaluated ids, and its scores there (or why there are none)."""
    scores = strict_scores(record)
    ref = {"model": name, "format": "torch", "quant": "fp32", "results": record.get("results")}
    if isinstance(scores, str):
        return {**ref, "n": record.get("n"), "strict_match": record.get("strict_match"), "strict_ci95": None}, scores
    scores = {i: scores[i] for i in ids if i in scores}
    k, n = sum(scores.values()), len(scores)
    return {**ref, "n": n, "strict_match": k / n if n else None, "strict_ci95": list(wilson_interval(k, n))}, scores


def _row(ex: _Export, error: str | None, against: str, ref_scores: dict[str, bool] | str, max_drop: float) -> dict:
    rec = ex.records()
    row = {"name": ex.fmt.name, "format": ex.fmt.format, "quant": ex.fmt.quant, "path": rec["export"].get("path"),
           "size_bytes": rec["export"].get("size_bytes"), "parity": rec["export"].get("parity"),
           "n": None, "strict_match": None, "strict_ci95": None, "flexible_extract": None, "paired": None,
           "drop_upper_points": None, "within_drop": False, "decode_tok_s": None, "prefill_tok_s": None,
           "ttft_ms": None, "decode_ms_p50": None, "decode_ms_p99": None, "peak_rss_bytes": None,
           "roofline_ratio": None, "threads": None, "bench": None, "error": error}
    if error is None:
        res = json.loads(Path(rec["eval"]["results"]).read_text())["results"]["heldout"]
        row.update(n=res["n"], strict_match=res["strict_match"], strict_ci95=res["strict_match_ci95"],
                   flexible_extract=res["flexible_extract"])
        paired = compare(ex.fmt.name, strict_scores(rec["eval"]), against, ref_scores)
        row["paired"] = paired
        if "ci95" in paired:
            row["drop_upper_points"] = round(-100 * paired["ci95"][0], 2) + 0.0  # + 0.0: no "-0.0"
        row.update({k: v for k, v in rec["bench"]["figures"].items() if k != "busy"}, bench=rec["bench"]["bench"])
        row["within_drop"] = within_drop(row, max_drop)
    return row


def markdown(doc: dict) -> str:
    """deploy.md: what was compared, then the report's deploy table (one row per export, the pick)."""
    ref = doc["reference"]
    return "\n".join([
        "# Deploy", "",
        f"Student: `{doc['student']}`; reference: {ref['model']} ({ref['format']} {ref['quant']}) on "
        f"{ref['n']} held-out problems" + ("; calculator on" if doc["calculator"] else "") + ". Each export "
        "answers the same problems in its own runtime; the difference is export minus student in points with its "
        "paired 95% interval; speed from its bench (the fastest decode when threads were swept).", "",
        deploy_table(doc)])


def deploy(ctx: RunContext, student_dir: Path, reference: tuple[str, dict], heldout: list[Problem]) -> dict:
    """The recipe's deploy section on `student_dir`, paired with `reference` (name, eval record) of that same
    student: the stages deploy/<format>-<quant>/{export,eval,bench}, deploy/pick (deploy.json, deploy.md, the
    bundle) and deploy/report (report/report.md); returns deploy.json with the report's path."""
    d = ctx.recipe.deploy
    ctx.run.manifest["deploy"] = {"settings": d.model_dump(mode="json")}
    ctx.run.save()
    problems = heldout[: d.heldout] if d.heldout else heldout
    bench = bench_config(d)
    exports = [_Export(ctx, f, student_dir, problems, bench) for f in d.formats]
    errors = {ex.fmt.name: ex.run() for ex in exports}

    root = ctx.run.root / "deploy"
    ref_name, ref_record = reference
    pick_settings = _digest(d.pick, d.max_accuracy_drop, d.bundle, ref_name, ref_record.get("results"),
                            [(ex.fmt.name, [r.get("settings") for r in ex.records().values()]) for ex in exports])

    def compute_pick(info: dict) -> None:
        ref, ref_scores = _reference(ref_name, ref_record, [p.id for p in problems])
        rows = [_row(ex, errors[ex.fmt.name], ref_name, ref_scores, d.max_accuracy_drop) for ex in exports]
        chosen, reason = pick(rows, d.pick, d.max_accuracy_drop, d.bundle)
        for old in root.glob("*/model/*.tar.gz"):  # an earlier pick's bundle
            old.unlink()
        row = next((r for r in rows if r["name"] == chosen), None)
        bundle = (root / chosen / "model" / bundle_name(student_dir.parent.name, row["format"], row["quant"])
                  if row and d.bundle else None)
        doc = {"student": str(student_dir), "reference": ref, "calculator": bool(ctx.recipe.eval.calculator),
               "rows": rows, "pick": {"rule": d.pick, "max_accuracy_drop": d.max_accuracy_drop, "chosen": chosen,
                                      "reason": reason, "bundle": str(bundle) if bundle else None}}
        atomic_write_json(root / "deploy.json", doc)
        atomic_write_text(root / "deploy.md", markdown(doc))
        if bundle:  # after deploy.json: the bundle's model card reads the exports' figures from it
            write_bundle(bundle.parent, row["format"], row["quant"], student_dir.parent.name,
                         card=run_card(ctx.run.root, student_dir))
        info.update(chosen=chosen, reason=reason, exports=len(rows), failed=sum(bool(r["error"]) for r in rows))

    doc = _stage(ctx, "deploy/pick", f"deploy: pick the {d.pick} export within {d.max_accuracy_drop:g} points",
                 pick_settings, compute_pick, lambda: json.loads((root / "deploy.json").read_text()))
    report = ctx.run.root / "report" / "report.md"
    _stage(ctx, "deploy/report", "deploy: the run's report (report/report.md and plots)", pick_settings,
           lambda info: info.update(report=str(build_report([ctx.run.root], ctx.run.root / "report"))), lambda: None)
    if doc["pick"]["chosen"]:
        ctx.console.print(f"deploy pick: {doc['pick']['chosen']} ({doc['pick']['reason']})")
    else:
        ctx.console.print(f"[yellow]deploy pick: none ({doc['pick']['reason']})[/yellow]")
    return {**doc, "report": str(report)}
