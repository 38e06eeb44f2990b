"""The run context: one run's recipe, run folder, console, teacher, student samplers and stages."""
from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from toolkit.core.errors import ExportError, ToolkitError
from toolkit.eval.machine import cpu_features, cpu_model
from toolkit.runtime.loading import check_model
from toolkit.core.memory import PeakRSS, gb, release_memory
from toolkit.core import defaults
from toolkit.runtime.models import resolve_model
from toolkit.core.recipe import Recipe
from toolkit.core.rundir import RunDir
from toolkit.core.storage import write_failure
from toolkit.data.strategies import student_strategies
from toolkit.eval.generate import TorchGenerator, open_generator
from toolkit.export.config import ExportConfig
from toolkit.export.manifest import MANIFEST
from toolkit.export.run import export_model
from toolkit.sandbox.runner import cgroup_status, confinement_problem, prepare
from toolkit.teacher.cache import RequestCache
from toolkit.teacher.ledger import Ledger, merge_records, price_record
from toolkit.teacher.teachers import open_teacher
from toolkit.teacher.vllm_sampler import vllm_generator
from toolkit.runtime.loading import load_model_and_tokenizer, load_tokenizer

T = TypeVar("T")

# Student backends that decode an export of the student (eval.backend, self_guided.backend):
# backend -> (export format, quant, the runtime that decodes it).
SAMPLER_EXPORTS = {"genai": ("genai", "fp32", "genai"), "genai-int4": ("genai", "int4", "genai"),
                   "llama.cpp": ("gguf", "q8_0", "llama.cpp")}


def auto_backend() -> str:
    """What a student backend `auto` decodes with: torch on a GPU (batched, on the device); on a CPU
    the onnxruntime-genai fp32 export, 3.4x torch's tokens/s on SmolLM2-135M (bench/README.md,
    "Student self-sampling") for a ~10 s export, with the same weights (fp32: no quantization drift)."""
    import torch  # heavy optional runtime, imported on first use

    return "torch" if torch.cuda.is_available() else "genai"


def progress_bar(console: Console) -> Progress:
    """A bar with a count and the elapsed time, on the run's console, gone when its block ends."""
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=console, transient=True)


def data_root(recipe: Recipe) -> Path:
    """The folder of the built-in suites: $TOOLKIT_DATA, else the recipe's data.root."""
    return defaults.data_root(default=recipe.resolve(recipe.data.root))


class RunContext:
    """One run of a recipe, handed to every stage: the recipe, the run folder, the console, the teacher and
    the student's samplers, and `stage()`, which records a finished stage so that a resume skips it."""

    def __init__(self, recipe: Recipe, console: Console | None = None, fresh: bool = False):
        self.recipe = recipe
        self.console = console or Console()
        sandbox = self._check_sandbox()
        self._check_models()
        self.run = RunDir(Path(recipe.output_dir) / recipe.name)
        self.run.open(recipe.digest(), recipe.model_dump(mode="json"), recipe.seed, fresh, extends=recipe.extends)
        # The rlimits hold per program; whether a cgroup caps the sandbox as a whole, and why not, is recorded too.
        self.run.manifest["sandbox"] = sandbox | cgroup_status()
        # Speed and peak memory move with the CPU model and its kernel flags: every figure names them.
        self.run.manifest["machine"].update(cpu=cpu_model(), cpu_features=cpu_features())
        self.run.save()
        self.threads = recipe.train.threads or defaults.default_threads()
        self.cache_path = defaults.cache_root(recipe.cache_dir)
        self._base = None  # (model, tokenizer) of the base student while it is in memory
        self._ledger: Ledger | None = None  # the teacher requests of the stage that is running

    def _check_sandbox(self) -> dict:
        """With PoT (a strategy, or distill.label_check pot) or question_check program, fail before any teacher
        call when its programs cannot run confined and the recipe did not choose `sandbox: unsafe` (one line
        naming the fix). Returns what the manifest always records: `mode`, `confined` (whether programs run, or
        would run, under bubblewrap here) and `pot_allowed` (the student's [pot] replies are executed: pot is a
        strategy; otherwise they get no answer, see strategies.student_strategies)."""
        dc = self.recipe.distill
        mode, pot_allowed = dc.sandbox, "pot" in dc.strategies
        if not pot_allowed and dc.label_check != "pot" and dc.question_check != "program":
            return {"mode": mode, "confined": confinement_problem() is None, "pot_allowed": False}
        confined = prepare(mode)
        if not confined:
            self.console.print("[bold red]WARNING: distill.sandbox: unsafe and no bubblewrap sandbox here: "
                               "PoT programs written by the model run unconfined (see the line above)[/bold red]")
        return {"mode": mode, "confined": confined, "pot_allowed": pot_allowed}

    def _check_models(self) -> None:
        """Fail before any work when a model reference cannot be resolved (clear error, no run folder)."""
        check_model(resolve_model(self.recipe.student.model, self.recipe.base_dir))
        if self.recipe.teacher.backend == "llama.cpp":
            check_model(resolve_model(self.recipe.teacher.model, self.recipe.base_dir))

    def data_root(self) -> Path:
        return data_root(self.recipe)

    @contextmanager
    def progress(self, what: str, total: int):
        """A progress bar; yields `advance(n)`."""
        with progress_bar(self.console) as bar:
            task = bar.add_task(what, total=total)
            yield lambda n=1: bar.advance(task, n)

    @contextmanager
    def teacher(self, max_tokens: int | None = None, seed_offset: int = 0):
        """The recipe's teacher behind the request cache, for one stage (a local server stops after).

        `seed_offset` shifts the sampling seeds, and with them the cache keys: a stage that sends the
        same prompt as an earlier round gets fresh samples instead of the cached ones.
        """
        cfg = self.recipe.teacher
        if max_tokens:
            cfg = cfg.model_copy(update={"max_tokens": max_tokens})
        cache = RequestCache(self.cache_path / "teacher.sqlite")
        try:
            with open_teacher(cfg, cache, base_dir=self.recipe.base_dir, log_dir=self.run.root / "logs",
                              seed=self.recipe.seed + seed_offset) as teacher:
                try:
                    yield teacher
                finally:
                    if self._ledger is not None:
                        self._ledger.merge(teacher.ledger)
        finally:
            cache.close()

    @contextmanager
    def stage(self, name: str, title: str):
        """Time a stage, measure its peak memory (toolkit/core/memory.py) and record it as done with the counts
        the block put in `info`."""
        info: dict = {}
        self.console.print(f"[bold]▶ {title}[/bold]")
        release_memory()  # what the previous stage freed is not counted against this one
        start = time.perf_counter()
        peak = PeakRSS()
        self._ledger = Ledger()
        try:
            with peak, student_strategies(self.recipe.distill.strategies):
                yield info
        except Exception as exc:
            reason = write_failure(exc)
            if reason is None:
                raise
            self.run.sweep_temporaries()  # no half-written file stays behind
            raise ToolkitError(f"{name}: {reason}; finished stages and cached teacher requests are kept, "
                               f"free space (or fix the folder) and run again to resume") from None
        seconds = time.perf_counter() - start
        if not self._ledger.empty():
            info["teacher"] = price_record(self._ledger.record(), self.recipe.teacher.price)
        self._ledger = None
        self.run.finish(name, seconds, **peak.record(), **info)
        if "teacher" in info:
            self.record_teacher_total()
        self.console.print(f"  done in {seconds:.1f} s, peak {gb(peak.peak_bytes)} " + " ".join(f"{k}={v}" for k, v in info.items()
                                                                 if not isinstance(v, (dict, list))))

    def record_teacher_total(self) -> None:
        """The run's teacher ledger at the manifest's top level: every stage's requests and tokens summed,
        each stage's and the total's cost at the recipe's current `teacher.price` (none without one)."""
        stages = [s for s in self.run.manifest["stages"].values() if "teacher" in s]
        if not stages:
            return
        price = self.recipe.teacher.price
        for stage in stages:
            stage["teacher"] = price_record(stage["teacher"], price)
        self.run.manifest["teacher"] = price_record(merge_records([s["teacher"] for s in stages]), price)
        self.run.save()

    def cached_stage(self, name: str, title: str, compute: Callable[[dict], object], read: Callable[[], T]) -> T:
        """Every stage's idiom: unless the manifest records `name` as done, run `compute(info)` (which writes
        the stage's files and puts its counts in `info`) inside `stage()`; then return `read()`, the result
        read back from those files, so that a resumed run continues from the same values as a whole one."""
        if not self.run.done(name):
            with self.stage(name, title) as info:
                compute(info)
        return read()

    def base_student(self):
        """(model, tokenizer) of the recipe's student before any training, loaded once and kept."""
        if self._base is None:
            self._base = load_model_and_tokenizer(resolve_model(self.recipe.student.model, self.recipe.base_dir))
        return self._base

    def forget_base_student(self) -> None:
        """Drop the kept base student: training changed its weights, or a worker process loads its own."""
        self._base = None

    def sampler_model(self, student: str, folder: Path, chosen: str,
                      base_dir: Path | None = None) -> tuple[str, str, str | None]:
        """(model, backend, note) to decode `student` (a model reference, relative paths resolved against
        `base_dir`, or a trained folder) with the backend `chosen`: the student itself, or for a backend
        that runs exports its export, made once into `folder/sampler-FORMAT-QUANT` and kept (for a resume,
        and for later stages on the same student). Under `auto`, a student the exporter cannot handle is
        decoded with torch, and the note says why."""
        backend = auto_backend() if chosen == "auto" else chosen
        if backend not in SAMPLER_EXPORTS:
            return student, backend, None
        fmt, quant, runtime = SAMPLER_EXPORTS[backend]
        out = folder / f"sampler-{fmt}-{quant}"
        if not (out / MANIFEST).is_file():  # a stopped export has none yet; export_model replaces its folder
            with self.console.status(f"exporting the student to {fmt} {quant} for sampling"):
                try:
                    export_model(student, out, ExportConfig(format=fmt, quant=quant, threads=self.threads),
                                 base_dir=base_dir)
                except ExportError as exc:
                    if chosen != "auto":
                        raise
                    note = f"auto: {fmt} {quant} export failed, sampled with torch ({exc})"
                    self.console.print(f"[yellow]{note}[/yellow]")
                    return student, "torch", note
        return str(next(out.glob("*.gguf")) if fmt == "gguf" else out), runtime, None

    @contextmanager
    def student_sampler(self, model_and_tok, path: Path | None, stage: str, info: dict | None = None):
        """The generator for the student's answers (round evals, feedback): a vLLM server on `path`
        (None: the base student) that runs only inside the block (student.sampler), else eval.backend in
        this process: `model_and_tok` (or a callable that loads it) in transformers, or the student's
        export in its runtime, made once into the student's folder (`path`'s parent; the base student's:
        eval-base/). `info` (the stage's record) gets the backend used, the export it decoded
        (`sampler_export`) and the note of a fallback."""
        st = self.recipe.student
        if st.sampler == "vllm":
            ref = resolve_model(st.model, self.recipe.base_dir) if path is None else resolve_model(str(path))
            if path is None:
                path = ref.path if ref.path is not None else ref.hub_id
            log = self.run.root / "logs" / f"vllm-{stage.replace('/', '-')}.log"
            max_len = self.recipe.train.seq_len + self.recipe.eval.max_new_tokens
            with vllm_generator(path, load_tokenizer(ref), log, seed=self.recipe.seed, max_model_len=max_len,
                                concurrency=st.sampler_concurrency, extra_args=st.vllm_args) as gen:
                if info is not None:
                    info["backend"] = "vllm"
                yield gen
            return
        # eval.calculator "both" decodes with it too; the round evals add their run without it themselves.
        calculator = bool(self.recipe.eval.calculator)
        backend, note = "torch", None
        if self.recipe.eval.backend != "torch":
            # One model in memory at a time: the kept base student goes before the export loads its copies
            # (a later training stage loads it again).
            self.forget_base_student()
            if path is None:  # the recipe's student: a reference relative to the recipe file
                model, backend, note = self.sampler_model(st.model, self.run.root / "eval-base",
                                                          self.recipe.eval.backend, base_dir=self.recipe.base_dir)
            else:  # a trained folder in the run
                model, backend, note = self.sampler_model(str(path), path.parent, self.recipe.eval.backend)
        if backend == "torch":
            loaded, tok = model_and_tok() if callable(model_and_tok) else model_and_tok
            gen = TorchGenerator(loaded, tok, batch_size=self.recipe.eval.batch_size, threads=self.threads)
            gen.calculator = gen.config["calculator"] = calculator
        else:
            gen = open_generator(model, backend, batch_size=self.recipe.eval.batch_size, threads=self.threads,
                                 seed=self.recipe.seed, calculator=calculator)
        if info is not None:
            info.update(backend=gen.name, **({"sampler_export": model} if backend != "torch" else {}),
                        **({"sampler_note": note} if note else {}))
        try:
            yield gen
        finally:
            gen.close()
