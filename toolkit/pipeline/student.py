"""The student's stages that every round and self-guided iteration repeats: fine-tune from the base, evaluate."""
from __future__ import annotations

from pathlib import Path

from toolkit.runtime.models import resolve_model
from toolkit.core.recipe import TrainConfig
from toolkit.core.jsonio import atomic_write_json, atomic_write_jsonl
from toolkit.data.problems import Problem
from toolkit.data.prompt_rule import PROMPT_FILE, prompt_record, read_record, record_for
from toolkit.data.strategies import is_tagged
from toolkit.eval.accuracy import evaluate
from toolkit.pipeline.context import RunContext, progress_bar
from toolkit.runtime.loading import load_model_and_tokenizer
from toolkit.training.train_job import launch, launch_cmd, write_job


def load_student(path: Path):
    """(model, tokenizer) of a trained student folder."""
    return load_model_and_tokenizer(resolve_model(str(path)))


def evaluate_student(ctx: RunContext, name: str, title: str, model_and_tok, heldout: list[Problem], out: Path,
                     path: Path | None = None) -> dict:
    """The stage `name`: the student (`model_and_tok`, or a callable that loads it; `path`, its folder, for
    a vLLM sampler or an export under eval.backend; None: the base student) answers the held-out problems
    into `out`; returns the stage's manifest record (with the backend it decoded with). With
    eval.calculator "both" it answers them again without the calculator into `<out.parent>/no-calculator/`."""
    def compute(info: dict) -> None:
        with ctx.student_sampler(model_and_tok, path, name, info) as gen:
            strategy = "auto" if is_tagged(ctx.recipe.distill.strategies) else "cot"
            with ctx.progress("answering held-out problems", len(heldout)) as advance:
                report = evaluate(gen, {"heldout": heldout}, out, model=str(out.parent),
                                  max_new_tokens=ctx.recipe.eval.max_new_tokens, on_done=advance,
                                  strategy=strategy)
            res = report["results"]["heldout"]
            info.update(n=res["n"], strict_match=res["strict_match"], flexible_extract=res["flexible_extract"],
                        results=str(out))
            if "strategies" in res:
                info["strategies"] = res["strategies"]
            if ctx.recipe.eval.calculator == "both":
                # The same loaded model, calculator off: the second figure, shown beside the first.
                gen.calculator = gen.config["calculator"] = False
                plain = out.parent / "no-calculator" / out.name
                with ctx.progress("answering held-out problems without the calculator", len(heldout)) as advance:
                    report = evaluate(gen, {"heldout": heldout}, plain, model=str(out.parent),
                                      max_new_tokens=ctx.recipe.eval.max_new_tokens, on_done=advance,
                                      strategy=strategy)
                res = report["results"]["heldout"]
                info.update(strict_match_no_calculator=res["strict_match"],
                            flexible_extract_no_calculator=res["flexible_extract"], results_no_calculator=str(plain))

    return ctx.cached_stage(name, title, compute, lambda: ctx.run.stage(name))


def train_student(ctx: RunContext, folder: str, rows: list[dict]) -> Path:
    """The stage `<folder>/train`: fine-tune the base student on `rows` into `<folder>/student`."""
    (ctx.run.root / folder).mkdir(parents=True, exist_ok=True)
    out = ctx.run.root / folder / "student"

    def compute(info: dict) -> None:
        # torch: heavy optional runtime, imported on first use
        from toolkit.training.train import pack, planned_steps, tokenize_example, train

        # Loaded inside the stage: the load's own peak (a GGUF is dequantized) is this stage's.
        model, tok = ctx.base_student()
        examples = [tokenize_example(tok, r["messages"], r["completion"], ctx.recipe.train.seq_len) for r in rows]
        prompt = record_for(tok, ctx.recipe.distill.strategies)  # how they were rendered: the student's prompt.json
        cfg = ctx.recipe.train.model_copy(update={"threads": ctx.threads})
        with progress_bar(ctx.console) as bar:
            total = planned_steps(len(pack(examples, cfg.seq_len, ctx.recipe.seed)), cfg)
            task = bar.add_task("training steps", total=total)

            def log(row: dict) -> None:
                bar.update(task, completed=row["step"], description=f"training (loss {row['loss']:.3f})")

            if cfg.processes > 1 or cfg.nodes > 1:  # torchrun workers; this process only waits and reports
                del model  # each worker loads its own copy; free this one
                stats = _train_processes(ctx, folder, cfg, examples, out, log, prompt)
            else:
                stats = train(model, tok, examples, cfg, out, seed=ctx.recipe.seed, log=log, prompt=prompt)
                # The base's weights changed in place: drop every reference so the next stage
                # starts without this model (one model in memory at a time); it is reloaded if needed again.
                ctx.forget_base_student()
                del model
        if stats.get("resumed_from_step"):
            ctx.console.print(f"  resumed from step {stats['resumed_from_step']} of {stats['steps']}")
        atomic_write_jsonl(ctx.run.root / folder / "train_log.jsonl", stats.pop("curve"))
        info.update(stats, prompt_format=prompt["format"])

    def trained() -> Path:
        # A student trained before students carried their prompt rule was trained on its chat template (training
        # needed one then): its record is written now, so that its exports and bundles ask it that way too.
        if read_record(out) is None:
            atomic_write_json(out / PROMPT_FILE, prompt_record(ctx.recipe.distill.strategies, chat=True))
        return out

    return ctx.cached_stage(f"{folder}/train", f"train: fine-tune the student on {len(rows)} rationales",
                            compute, trained)


def _train_processes(ctx: RunContext, folder: str, cfg: TrainConfig, examples: list, out: Path, log,
                     prompt: dict) -> dict:
    """Training under torchrun: this process writes the job, launches the workers and reports their steps."""
    rdir = ctx.run.root / folder
    job = write_job(rdir / "train-job.json", student=ctx.recipe.student.model, base_dir=str(ctx.recipe.base_dir),
                    examples=examples, cfg=cfg, out=out, seed=ctx.recipe.seed, prompt=prompt)
    ctx.forget_base_student()  # each worker loads its own copy; free this one
    if cfg.nodes > 1:
        others = " ".join(launch_cmd(job.path, cfg, node_rank=1)).replace("--node-rank 1", "--node-rank R")
        ctx.console.print(f"  waiting for {cfg.nodes - 1} more machine(s); on each, with R = 1..{cfg.nodes - 1}:"
                          f"\n  {others}")
    return launch(job, max(1, ctx.threads // cfg.processes), on_step=log)
