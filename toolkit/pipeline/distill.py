"""The distillation engine: data, teacher rationales, student training and evaluation, stage by stage."""
from __future__ import annotations

import os
import time
from contextlib import contextmanager
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from toolkit.data.answers import answers_match
from toolkit.teacher.cache import RequestCache
from toolkit.core.errors import DataError, ToolkitError
from toolkit.core.models import PACKAGED, cache_root
from toolkit.data.problems import Problem, load_file, load_hf, load_suite, read_jsonl, split_problems, write_jsonl
from toolkit.core.recipe import DataSource, Recipe
from toolkit.core.rundir import RunDir, atomic_write_jsonl
from toolkit.core.rundir import read_jsonl as read_rows
from toolkit.data.strategies import (clean_solution, is_tagged, solution_answers, teacher_messages, training_completion,
                                 training_prompt)


def _progress(console: Console) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=console, transient=True)


def data_root(recipe: Recipe) -> Path:
    """The folder of the built-in suites: $TOOLKIT_DATA, else the recipe's data.root."""
    return Path(os.environ.get("TOOLKIT_DATA") or recipe.resolve(recipe.data.root))


def _load_source(src: DataSource, recipe: Recipe) -> list[Problem]:
    if src.suite:
        from toolkit.data.hygiene import dedupe

        root = data_root(recipe)
        names = [s.strip() for s in src.suite.split(",") if s.strip()]
        problems = [p for name in names for p in load_suite(name, root)]
        # Suites overlap (AddSub and SingleEq share questions): keep each question once.
        return dedupe(problems)[0] if len(names) > 1 else problems
    if src.path:
        return load_file(recipe.resolve(src.path), src.format, src.question_field, src.answer_field)
    return load_hf(src.hf, src.hf_config, src.hf_split, src.question_field, src.answer_field)


def select_problems(recipe: Recipe) -> tuple[list[Problem], list[Problem]]:
    """(train, heldout) problems: seeded, disjoint, of the recipe's sizes."""
    d = recipe.data
    train_pool = _load_source(d.train, recipe)
    if d.heldout is None:
        parts = split_problems(train_pool, {"heldout": d.heldout_size, "train": d.train_size}, recipe.seed)
        return parts["train"], parts["heldout"]
    heldout_pool = _load_source(d.heldout, recipe)
    heldout = split_problems(heldout_pool, {"heldout": d.heldout_size}, recipe.seed)["heldout"]
    # Never train on a question we evaluate on, even when two sources overlap.
    seen = {" ".join(p.question.lower().split()) for p in heldout}
    train_pool = [p for p in train_pool if " ".join(p.question.lower().split()) not in seen]
    return split_problems(train_pool, {"train": d.train_size}, recipe.seed)["train"], heldout


class Distiller:
    """Runs a recipe stage by stage; every finished stage is recorded and skipped on resume."""

    def __init__(self, recipe: Recipe, console: Console | None = None, fresh: bool = False):
        self.recipe = recipe
        self.console = console or Console()
        sandbox = self._check_sandbox()
        self._check_models()
        self.run = RunDir(Path(recipe.output_dir) / recipe.name)
        self.run.open(recipe.digest(), recipe.model_dump(mode="json"), recipe.seed, fresh)
        if sandbox:
            self.run.manifest["sandbox"] = sandbox
            self.run.save()
        self.threads = recipe.train.threads or os.cpu_count() or 1
        self.cache_path = Path(recipe.cache_dir).expanduser() if recipe.cache_dir else cache_root()
        self._model = None  # (model, tokenizer) of the base student while it is in memory

    def _check_sandbox(self) -> dict | None:
        """With PoT, fail before any teacher call when its programs cannot run confined and the recipe did
        not choose `sandbox: unsafe` (one line naming the fix); returns what the manifest records."""
        if "pot" not in self.recipe.distill.strategies:
            return None
        from toolkit.sandbox.runner import prepare

        mode = self.recipe.distill.sandbox
        confined = prepare(mode)
        if not confined:
            self.console.print("[bold red]WARNING: distill.sandbox: unsafe and no bubblewrap sandbox here: "
                               "PoT programs written by the model run unconfined (see the line above)[/bold red]")
        return {"mode": mode, "confined": confined}

    def _check_models(self) -> None:
        """Fail before any work when a model reference cannot be resolved (clear error, no run folder)."""
        from toolkit.core.models import resolve_model

        from toolkit.core.integrity import check_model

        check_model(resolve_model(self.recipe.student.model, self.recipe.base_dir))
        if self.recipe.teacher.backend == "llama.cpp":
            check_model(resolve_model(self.recipe.teacher.model, self.recipe.base_dir))

    @contextmanager
    def progress(self, what: str, total: int):
        """A progress bar; yields `advance(n)`."""
        with _progress(self.console) as bar:
            task = bar.add_task(what, total=total)
            yield lambda n=1: bar.advance(task, n)

    @contextmanager
    def teacher(self, max_tokens: int | None = None, seed_offset: int = 0):
        """The recipe's teacher behind the request cache, for one stage (a local server stops after).

        `seed_offset` shifts the sampling seeds, and with them the cache keys: a stage that sends the
        same prompt as an earlier round gets fresh samples instead of the cached ones.
        """
        from toolkit.teacher.teachers import open_teacher

        cfg = self.recipe.teacher
        if max_tokens:
            cfg = cfg.model_copy(update={"max_tokens": max_tokens})
        cache = RequestCache(self.cache_path / "teacher.sqlite")
        try:
            with open_teacher(cfg, cache, base_dir=self.recipe.base_dir, log_dir=self.run.root / "logs",
                              seed=self.recipe.seed + seed_offset) as teacher:
                yield teacher
        finally:
            cache.close()

    @contextmanager
    def stage(self, name: str, title: str):
        """Time a stage, measure its peak memory (toolkit/core/memory.py) and record it as done with the counts
        the block put in `info`."""
        from toolkit.core.memory import PeakRSS, gb, release_memory

        info: dict = {}
        self.console.print(f"[bold]▶ {title}[/bold]")
        release_memory()  # what the previous stage freed is not counted against this one
        start = time.perf_counter()
        peak = PeakRSS()
        try:
            with peak:
                yield info
        except Exception as exc:
            from toolkit.core.storage import write_failure

            reason = write_failure(exc)
            if reason is None:
                raise
            self.run.sweep_temporaries()  # no half-written file stays behind
            raise ToolkitError(f"{name}: {reason}; finished stages and cached teacher requests are kept, "
                               f"free space (or fix the folder) and run again to resume") from None
        seconds = time.perf_counter() - start
        self.run.finish(name, seconds, **peak.record(), **info)
        self.console.print(f"  done in {seconds:.1f} s, peak {gb(peak.peak_bytes)} " + " ".join(f"{k}={v}" for k, v in info.items()
                                                                 if not isinstance(v, (dict, list))))

    # -- stages -------------------------------------------------------------------------------
    def data(self) -> tuple[list[Problem], list[Problem]]:
        train_path, heldout_path = self.run.root / "round-0" / "problems.jsonl", self.run.root / "heldout.jsonl"
        if not self.run.done("data"):
            with self.stage("data", "data: select training and held-out problems") as info:
                train, heldout = select_problems(self.recipe)
                write_jsonl(heldout_path, heldout)
                write_jsonl(train_path, train)
                info.update(train=len(train), heldout=len(heldout))
        return read_jsonl(train_path), read_jsonl(heldout_path)

    def rationales(self, k_round: int, problems: list[Problem]) -> list[dict]:
        """k teacher solutions per problem and strategy; those whose answer matches gold become training rows."""
        rdir = self.run.round_dir(k_round)
        name = f"round-{k_round}/rationales"
        if not self.run.done(name):
            k = self.recipe.distill.paths_per_problem
            strategies = self.recipe.distill.strategies
            pairs = [(p, s) for p in problems for s in strategies]
            with self.stage(name, f"teacher: {k} solutions for each of {len(problems)} problems and "
                                  f"{len(strategies)} strateg{'y' if len(strategies) == 1 else 'ies'}") as info:
                with self.teacher() as teacher, self.progress("teacher requests", len(pairs) * k) as advance:
                    texts = teacher.complete([teacher_messages(p.question, s) for p, s in pairs], n=k,
                                             temperature=self.recipe.teacher.temperature,
                                             on_done=lambda: advance(1))
                flat = [(prob, s, j, text) for (prob, s), outs in zip(pairs, texts) for j, text in enumerate(outs)]
                cleaned = [clean_solution(s, text) for _, s, _, text in flat]
                answers = solution_answers([(s, c) for (_, s, _, _), c in zip(flat, cleaned)])
                rows, train = [], []
                by_strategy = {s: {"requested": 0, "kept": 0} for s in strategies}
                for (prob, s, j, text), body, pred in zip(flat, cleaned, answers):
                    ok = answers_match(pred, prob.answer)
                    rows.append({"problem_id": prob.id, "strategy": s, "sample": j, "text": text, "answer": pred,
                                 "gold": prob.answer, "correct": ok})
                    by_strategy[s]["requested"] += 1
                    if ok:
                        by_strategy[s]["kept"] += 1
                        train.append({"problem_id": prob.id, "strategy": s,
                                      "messages": training_prompt(prob.question, strategies),
                                      "completion": training_completion(s, body, strategies)})
                atomic_write_jsonl(rdir / "rationales.jsonl", rows)
                atomic_write_jsonl(rdir / "train.jsonl", train)
                info.update(requested=len(rows), kept=len(train),
                            problems_covered=len({r["problem_id"] for r in train}),
                            teacher_requests_sent=teacher.requests_sent, by_strategy=by_strategy)
                if not train:
                    raise DataError(f"the teacher got no training problem right ({len(rows)} rationales in "
                                    f"{rdir / 'rationales.jsonl'}); check the teacher model and prompt")
        return read_rows(rdir / "train.jsonl")

    def base_student(self):
        if self._model is None:
            from toolkit.training.loading import load_model_and_tokenizer
            from toolkit.core.models import resolve_model

            ref = resolve_model(self.recipe.student.model, self.recipe.base_dir)
            self._model = load_model_and_tokenizer(ref)
        return self._model

    @contextmanager
    def student_sampler(self, model_and_tok, path: Path | None, stage: str):
        """The generator for the student's answers: transformers here, or a vLLM server on `path`
        (None: the base student) that runs only inside the block (student.sampler)."""
        st = self.recipe.student
        if st.sampler == "vllm":
            from toolkit.core.models import resolve_model
            from toolkit.teacher.vllm_sampler import vllm_generator

            if path is None:
                ref = resolve_model(st.model, self.recipe.base_dir)
                path = ref.path if ref.path is not None else ref.hub_id
            log = self.run.root / "logs" / f"vllm-{stage.replace('/', '-')}.log"
            max_len = self.recipe.train.seq_len + self.recipe.eval.max_new_tokens
            with vllm_generator(path, log, seed=self.recipe.seed, max_model_len=max_len,
                                concurrency=st.sampler_concurrency, extra_args=st.vllm_args) as gen:
                yield gen
            return
        from toolkit.eval.generate import TorchGenerator

        model, tok = model_and_tok() if callable(model_and_tok) else model_and_tok
        gen = TorchGenerator(model, tok, batch_size=self.recipe.eval.batch_size, threads=self.threads)
        gen.calculator = gen.config["calculator"] = self.recipe.eval.calculator
        yield gen

    def evaluate(self, name: str, title: str, model_and_tok, heldout: list[Problem], out: Path,
                 path: Path | None = None) -> dict:
        from toolkit.eval.accuracy import evaluate

        if not self.run.done(name):
            with self.stage(name, title) as info, self.student_sampler(model_and_tok, path, name) as gen:
                strategy = "auto" if is_tagged(self.recipe.distill.strategies) else "cot"
                with self.progress("answering held-out problems", len(heldout)) as advance:
                    report = evaluate(gen, {"heldout": heldout}, out, model=str(out.parent),
                                      max_new_tokens=self.recipe.eval.max_new_tokens, on_done=advance,
                                      strategy=strategy)
                res = report["results"]["heldout"]
                info.update(n=res["n"], strict_match=res["strict_match"], flexible_extract=res["flexible_extract"],
                            results=str(out))
                if "strategies" in res:
                    info["strategies"] = res["strategies"]
        return self.run.stage(name)

    def train(self, k_round: int, rows: list[dict], folder: str | None = None) -> Path:
        """Fine-tune the base student on `rows` into `<folder>/student` (folder: round-K by default)."""
        from toolkit.training.train import pack, planned_steps, tokenize_example, train

        folder = folder or f"round-{k_round}"
        (self.run.root / folder).mkdir(parents=True, exist_ok=True)
        out = self.run.root / folder / "student"
        name = f"{folder}/train"
        if not self.run.done(name):
            with self.stage(name, f"train: fine-tune the student on {len(rows)} rationales") as info:
                # Loaded inside the stage: the load's own peak (a GGUF is dequantized) is this stage's.
                model, tok = self.base_student()
                examples = [tokenize_example(tok, r["messages"], r["completion"], self.recipe.train.seq_len)
                            for r in rows]
                cfg = self.recipe.train.model_copy(update={"threads": self.threads})
                with _progress(self.console) as bar:
                    total = planned_steps(len(pack(examples, cfg.seq_len, self.recipe.seed)), cfg)
                    task = bar.add_task("training steps", total=total)

                    def log(row: dict) -> None:
                        bar.update(task, completed=row["step"], description=f"training (loss {row['loss']:.3f})")

                    if cfg.processes > 1 or cfg.nodes > 1:  # torchrun workers; this process only waits and reports
                        del model  # each worker loads its own copy; free this one
                        stats = self._train_processes(folder, cfg, out, log)
                    else:
                        stats = train(model, tok, examples, cfg, out, seed=self.recipe.seed, log=log)
                        # The base's weights changed in place: drop every reference so the next stage
                        # starts without this model (one model in memory at a time).
                        self._model = model = None
                if stats.get("resumed_from_step"):
                    self.console.print(f"  resumed from step {stats['resumed_from_step']} of {stats['steps']}")
                atomic_write_jsonl(self.run.root / folder / "train_log.jsonl", stats.pop("curve"))
                info.update(stats)
            self._model = None  # the weights changed: the base must be reloaded if needed again
        return out

    def _train_processes(self, folder: str, cfg, out: Path, log) -> dict:
        from toolkit.training.train_job import launch, write_job

        rdir = self.run.root / folder
        job = write_job(rdir / "train-job.json", student=self.recipe.student.model,
                        base_dir=str(self.recipe.base_dir),
                        rows=rdir / "train.jsonl", cfg=cfg, out=out, seed=self.recipe.seed)
        self._model = None  # each worker loads its own copy; free this one
        if cfg.nodes > 1:
            from toolkit.training.train_job import launch_cmd

            others = " ".join(launch_cmd(job, cfg, node_rank=1)).replace("--node-rank 1", "--node-rank R")
            self.console.print(f"  waiting for {cfg.nodes - 1} more machine(s); on each, with R = 1..{cfg.nodes - 1}:"
                               f"\n  {others}")
        return launch(job, max(1, self.threads // cfg.processes), on_step=log)

    # -- the whole run ------------------------------------------------------------------------
    def run_all(self) -> dict:
        """Round 0, then `rounds - 1` feedback rounds; each round retrains from the base checkpoint."""
        import torch

        from toolkit.pipeline import fdd
        from toolkit.data.hygiene import LeakageIndex

        torch.set_num_threads(self.threads)
        seeds, heldout = self.data()
        rows = self.rationales(0, seeds)  # the teacher server stops before torch starts
        rounds = {"base": self.evaluate("eval/base", "eval: base student on held-out problems",
                                        self.base_student, heldout, self.run.root / "eval-base" / "results.json")}
        rounds["base"].update(problems=0, rationales=0)
        problems = seeds  # the labelled training problems; grows by the accepted new ones each round
        student_dir = None
        leakage = None
        for k in range(self.recipe.distill.rounds):
            if k > 0:
                easy, hard = fdd.feedback(self, k, problems, student_dir)
                if leakage is None:
                    # Our own training problems may come from an eval suite: they are not leakage.
                    leakage = LeakageIndex.from_suites(self.data_root(), n=self.recipe.distill.leakage_ngram,
                                                       exclude=[p.id for p in seeds])
                new = fdd.new_questions(self, k, problems, easy, known=problems + heldout, leakage=leakage)
                accepted, new_rows = fdd.pseudo_label(self, k, new)
                problems, rows = problems + accepted, rows + new_rows
                atomic_write_jsonl(self.run.round_dir(k) / "train.jsonl", rows)
            student_dir = self.train(k, rows)
            rounds[f"round-{k}"] = self.evaluate(
                f"round-{k}/eval", f"eval: round {k} student on held-out problems",
                lambda d=student_dir: load_student(d), heldout, self.run.round_dir(k) / "eval" / "results.json",
                path=student_dir)
            rounds[f"round-{k}"].update(problems=len(problems), rationales=len(rows))
        if self.recipe.distill.self_guided:
            from toolkit.pipeline import siked

            student_dir = siked.iterate(self, problems, rows, heldout, student_dir, rounds)
        self.run.manifest["summary"] = {"rounds": rounds, "student": str(student_dir)}
        from toolkit.core.memory import process_peak_bytes

        # This invocation's own peak over every stage and the work between them (a resumed run: this part only).
        self.run.manifest["peak_rss_bytes"] = process_peak_bytes()
        self.run.save()
        from toolkit.eval.rounds_report import write_round_report

        write_round_report(self.run.root, rounds)
        if is_tagged(self.recipe.distill.strategies):
            from toolkit.pipeline.siked import write_strategy_report

            write_strategy_report(self.run.root, rounds)
        return self.run.manifest

    def data_root(self) -> Path:
        return data_root(self.recipe)


def load_student(path: Path):
    """(model, tokenizer) of a trained student folder."""
    from toolkit.training.loading import load_model_and_tokenizer
    from toolkit.core.models import resolve_model

    return load_model_and_tokenizer(resolve_model(str(path)))


def _sources(problems: list[Problem]) -> str:
    """The suites a pooled split was drawn from, most frequent first (a split mixes them)."""
    from collections import Counter

    return ", ".join(name for name, _ in Counter(p.source for p in problems).most_common())


def describe_plan(recipe: Recipe) -> list[tuple[str, str]]:
    """The resolved plan for --dry-run: what would run, on what, and where it would write."""
    train, heldout = select_problems(recipe)
    dc = recipe.distill
    k = dc.paths_per_problem
    t = recipe.train
    run = Path(recipe.output_dir) / recipe.name

    def model_line(ref: str) -> str:
        if ref.startswith("pkg:"):
            from toolkit.core.models import ALIASES

            key = ALIASES.get(ref[4:], ref[4:])
            parts = PACKAGED.get(key)
            return f"{ref} ({parts.filename}, from {len(parts.parts)} package(s))" if parts else ref
        return ref

    return [
        ("recipe", f"{recipe.name} (sha256 {recipe.digest()[:12]}), seed {recipe.seed}"),
        ("teacher", f"{model_line(recipe.teacher.model)} via {recipe.teacher.backend}, "
                    f"temperature {recipe.teacher.temperature}, max {recipe.teacher.max_tokens} tokens"),
        ("student", model_line(recipe.student.model)),
        ("data", f"{len(train)} training problems ({_sources(train)}), {len(heldout)} held-out ({_sources(heldout)})"),
        ("teacher requests", f"{len(train) * k * len(dc.strategies)} in round 0 ({k} "
                             + ("per problem and strategy" if is_tagged(dc.strategies) else "rationales per problem")
                             + "; cached requests are free)"),
        ("rounds", f"{dc.rounds}" + (f": each later round asks the student for feedback, writes {dc.new_per_problem} "
                                      f"new problem(s) per training problem and keeps those whose {dc.label_solves} "
                                      f"teacher solutions agree (≥ {dc.vote_min} votes, ≥ {dc.vote_fraction:.0%})"
                                      if dc.rounds > 1 else " (round 0 only)")),
        ("strategies", ", ".join(dc.strategies) + (" (the student tags its replies and picks one)"
                                                   if is_tagged(dc.strategies) else "")),
        ("self-guided", _describe_self_guided(dc)),
        ("training", (f"{t.max_steps} steps" if t.max_steps else f"{t.epochs} epochs")
         + f", batch {t.batch_size} × {t.seq_len} packed tokens, lr {t.lr}"
         + (f", LoRA r={t.lora}" if t.lora else "")),
        ("evaluation", f"base and distilled student, greedy, {len(heldout)} problems, "
                       f"max {recipe.eval.max_new_tokens} new tokens"),
        ("run folder", str(run.resolve())),
        ("teacher cache", str((Path(recipe.cache_dir).expanduser() if recipe.cache_dir else cache_root())
                              / "teacher.sqlite")),
    ]


def _describe_self_guided(dc) -> str:
    sg = dc.self_guided
    if sg is None:
        return "none"
    mixing = (f"teacher share alpha {' → '.join(f'{a:g}' for a in sg.alpha)}" if sg.mixing == "all"
              else "adaptive (teacher data only for problems the student still fails)")
    return (f"{sg.iterations} iteration(s) after the last round: {sg.samples} student samples per problem at "
            f"temperature {sg.temperature} ({sg.backend} backend), correct ones kept; {mixing}; retrain from the base")
