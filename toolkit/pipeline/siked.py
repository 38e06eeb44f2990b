"""SIKeD self-guided iterations: the student samples its own solutions, keeps the correct ones and mixes them with teacher data."""
from __future__ import annotations

import random
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

from toolkit.data.answers import answers_match
from toolkit.data.problems import Problem
from toolkit.core.jsonio import atomic_write_json, atomic_write_jsonl, atomic_write_text
from toolkit.core.jsonio import read_jsonl as read_rows
from toolkit.data.strategies import (STRATEGIES, clean_solution, is_tagged, solution_answers, split_tag, strategy_stats,
                                 tagged_messages, training_completion, training_prompt)
from toolkit.eval.generate import open_generator
from toolkit.pipeline.context import RunContext
from toolkit.pipeline.student import evaluate_student, load_student, train_student


def sampling_plan(problems: list[Problem], k: int, strategies: list[str],
                  mode: str) -> list[tuple[Problem, str | None]]:
    """One (problem, forced strategy) per sample to draw, None where the student chooses freely.

    free: k free samples per problem; forced: k per problem and strategy, its tag forced; both: the
    free ones, then the forced ones. A problem's samples stay together.
    """
    forced: list[str | None] = {"free": [None], "forced": list(strategies), "both": [None, *strategies]}[mode]
    return [(p, f) for p in problems for f in forced for _ in range(k)]


def sample_prompt(question: str, forced: str | None, strategies: list[str]) -> list[dict]:
    """The student's prompt for one sample: its training prompt, with the forced strategy's tag as the
    start of its reply (tagged_messages) when one is forced."""
    return tagged_messages(question, forced, strategies) if forced else training_prompt(question, strategies)


def score_samples(plan: list[tuple[Problem, str | None]], outputs: list[str],
                  strategies: list[str]) -> tuple[list[dict], list[dict], dict]:
    """The student's replies, one per (problem, forced strategy) of the plan, read and checked against gold.

    Returns (one row per reply, the training rows of the correct ones, per-strategy statistics: the free
    replies' choices and accuracy, the forced replies' count and correct ones, and `kept`, the training
    rows each strategy gave).
    A reply counts as correct when it is a well-formed solution of the strategy it chose (an untagged
    free reply is read as CoT) or was forced to (the reply is what followed the forced tag) whose answer
    matches gold; a strategy outside the recipe's never counts. Identical correct solutions to one problem
    are kept once; a correct forced reply trains like a free one that chose its strategy.
    """
    tagged = is_tagged(strategies)
    chosen, bodies = [], []
    for (_, forced), text in zip(plan, outputs):
        strategy, body = (forced, text) if forced else split_tag(text) if tagged else ("cot", text)
        strategy = strategy or "cot"
        chosen.append(strategy)
        bodies.append(clean_solution(strategy, body) if strategy in strategies else None)
    answers = solution_answers(list(zip(chosen, bodies)))
    samples, train, seen, drawn = [], [], set(), Counter()
    for (prob, forced), text, strategy, body, answer in zip(plan, outputs, chosen, bodies, answers):
        ok = body is not None and answers_match(answer, prob.answer)
        samples.append({"problem_id": prob.id, "sample": drawn[prob.id, forced], "forced": forced,
                        "strategy": strategy, "text": text, "answer": answer, "gold": prob.answer, "correct": ok})
        drawn[prob.id, forced] += 1
        if ok and (prob.id, body) not in seen:
            seen.add((prob.id, body))
            train.append({"problem_id": prob.id, "strategy": strategy, "source": "self",
                          "messages": training_prompt(prob.question, strategies),
                          "completion": training_completion(strategy, body, strategies)})
    free = [s for s in samples if s["forced"] is None]
    stats = strategy_stats([s["strategy"] for s in free], [s["correct"] for s in free])
    forced = Counter(s["forced"] for s in samples if s["forced"])
    forced_ok = Counter(s["forced"] for s in samples if s["forced"] and s["correct"])
    kept = Counter(r["strategy"] for r in train)
    return samples, train, {s: {**v, "forced_samples": forced[s], "forced_correct": forced_ok[s], "kept": kept[s]}
                            for s, v in stats.items()}


def mix(teacher: list[dict], own: list[dict], mode: str, alpha: float | None, seed: int) -> tuple[list[dict], dict]:
    """One iteration's training set: teacher rows mixed with the student's own correct rows.

    all: every teacher row and every own row, concatenated (SIKeD's "All" as its reference code builds
        it); the teacher share is what it comes to.
    alpha_schedule: every own row, plus teacher rows subsampled so that they make up a share `alpha` of
        the set (all of them when the student solved nothing, or when alpha asks for more than there are).
    adaptive: every own row, plus the teacher rows of problems with no correct own row.
    """
    if mode == "adaptive":
        solved = {r["problem_id"] for r in own}
        kept = [r for r in teacher if r["problem_id"] not in solved]
    elif mode == "all" or not own or alpha is None or alpha >= 1:
        kept = teacher
    else:
        want = min(len(teacher), round(alpha / (1 - alpha) * len(own)))
        picked = sorted(random.Random(seed).sample(range(len(teacher)), want))
        kept = [teacher[i] for i in picked]
    rows = kept + own
    return rows, {"teacher_rows": len(kept), "self_rows": len(own), "rows": len(rows),
                  "teacher_share": round(len(kept) / len(rows), 4) if rows else 0.0}


@contextmanager
def own_sampler(ctx: RunContext, t: int, student_dir: Path, stage: str):
    """(generator, note) for iteration t's on-policy samples: a vLLM server on the student when the
    recipe samples the student with vLLM (student.sampler), else self_guided.backend in this process."""
    if ctx.recipe.student.sampler == "vllm":
        with ctx.student_sampler(None, student_dir, stage) as gen:
            yield gen, None
        return
    import torch

    # Exported once into the sampled student's own folder (round-K/ or iter-(t-1)/sampler-FORMAT-QUANT), kept
    # for a resume, and the same export its eval under eval.backend genai made (never iter-t/: iter-t's eval
    # puts the export of iter-t's own student there).
    model, backend, note = ctx.sampler_model(str(student_dir), student_dir.parent,
                                             ctx.recipe.distill.self_guided.backend)
    torch.manual_seed(ctx.recipe.seed + t)  # the torch backend's sampling, reproducible per iteration
    gen = open_generator(model, backend, batch_size=ctx.recipe.eval.batch_size, threads=ctx.threads,
                         seed=ctx.recipe.seed + t)
    try:
        yield gen, note
    finally:
        gen.close()


def sample(ctx: RunContext, t: int, problems: list[Problem], teacher_rows: list[dict],
           student_dir: Path) -> list[dict]:
    """Iteration t's on-policy step: the current student samples k solutions per training problem;
    the correct ones are mixed with the teacher rows into `iter-t/train.jsonl`."""
    cfg = ctx.recipe.distill.self_guided
    strategies = ctx.recipe.distill.strategies
    folder = ctx.run.root / f"iter-{t}"
    name = f"iter-{t}/sample"
    k = cfg.samples

    def compute(info: dict) -> None:
        with own_sampler(ctx, t, student_dir, name) as (gen, note):
            plan = sampling_plan(problems, k, strategies, cfg.sampling)
            prompts = [sample_prompt(p.question, forced, strategies) for p, forced in plan]
            with ctx.progress("student samples", len(prompts)) as advance:
                outputs = gen.generate(prompts, max_new_tokens=cfg.max_new_tokens or ctx.recipe.eval.max_new_tokens,
                                       temperature=cfg.temperature, on_done=advance)
            samples, own, stats = score_samples(plan, outputs, strategies)
            alpha = cfg.alpha[t - 1] if cfg.alpha else None
            rows, mixing = mix(teacher_rows, own, cfg.mixing, alpha, ctx.recipe.seed + t)
            atomic_write_jsonl(folder / "samples.jsonl", samples)
            atomic_write_jsonl(folder / "self_train.jsonl", own)
            atomic_write_jsonl(folder / "train.jsonl", rows)
            ctx.console.print(f"iteration {t}: {mixing['teacher_rows']} teacher + {mixing['self_rows']} own rows, "
                              f"teacher share {mixing['teacher_share']:.2f} (mixing {cfg.mixing})")
            info.update(backend=gen.name, sampling=cfg.sampling, samples=len(samples),
                        forced_samples=sum(s["forced"] is not None for s in samples),
                        correct=sum(s["correct"] for s in samples),
                        problems_solved=len({r["problem_id"] for r in own}), mixing=cfg.mixing, alpha=alpha,
                        **mixing, strategies=stats, **({"sampler_note": note} if note else {}))

    per = {"free": f"{k}", "forced": f"{k} per strategy ({len(strategies)}, tag forced)",
           "both": f"{k} free plus {k} per strategy ({len(strategies)}, tag forced)"}[cfg.sampling]
    return ctx.cached_stage(name, f"student: {per} own solutions for each of {len(problems)} training problems",
                            compute, lambda: read_rows(folder / "train.jsonl"))


def iterate(ctx: RunContext, problems: list[Problem], teacher_rows: list[dict], heldout: list[Problem],
            student_dir: Path, rounds: dict[str, dict]) -> Path:
    """All self-guided iterations after the last round; each retrains from the base and is evaluated.
    Adds `iter-t` entries to `rounds` and returns the last student."""
    for t in range(1, ctx.recipe.distill.self_guided.iterations + 1):
        rows = sample(ctx, t, problems, teacher_rows, student_dir)
        student_dir = train_student(ctx, f"iter-{t}", rows)
        rounds[f"iter-{t}"] = evaluate_student(
            ctx, f"iter-{t}/eval", f"eval: iteration {t} student on held-out problems",
            lambda s=student_dir: load_student(s), heldout, ctx.run.root / f"iter-{t}" / "eval" / "results.json",
            path=student_dir)
        info = ctx.run.stage(f"iter-{t}/sample")
        rounds[f"iter-{t}"].update(problems=len(problems), rationales=len(rows), sampling=info["strategies"],
                                   teacher_rows=info["teacher_rows"], self_rows=info["self_rows"])
    return student_dir


def strategy_rows(rounds: dict[str, dict]) -> list[dict]:
    """One row per (model, strategy): held-out choice share and accuracy, and for self-guided
    iterations the same on the student's own training samples that fed it."""
    out = []
    for model, r in rounds.items():
        for s in STRATEGIES:
            held = r.get("strategies", {}).get(s)
            own = r.get("sampling", {}).get(s)
            if held is None and own is None:
                continue
            out.append({"model": model, "strategy": s, "heldout": held, "self_samples": own})
    return out


def _cell(stats: dict | None) -> str:
    if stats is None:
        return "–"
    acc = "–" if stats["accuracy"] is None else f"{stats['accuracy']:.0%}"
    return f"{stats['share']:.0%} chosen ({stats['chosen']}), {acc} right"


def write_strategy_report(run_root: Path, rounds: dict[str, dict]) -> list[dict]:
    """strategies.json, and a per-strategy table appended to rounds.md."""
    rows = strategy_rows(rounds)
    atomic_write_json(run_root / "strategies.json", rows)
    lines = ["", "Per strategy (held-out: greedy, the student's own choice; self samples: the on-policy samples "
             "of the student before that iteration):", "",
             "| model | strategy | held-out | self samples |", "|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['strategy']} | {_cell(r['heldout'])} | {_cell(r['self_samples'])} |" for r in rows]
    md = run_root / "rounds.md"
    atomic_write_text(md, (md.read_text() if md.is_file() else "") + "\n".join(lines) + "\n")
    return rows
