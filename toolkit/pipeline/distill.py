"""The distillation run: the recipe's steps in order (data, teacher rationales, FDD rounds, self-guided
iterations, reports), and the plan a dry run prints."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

from toolkit.data.answers import answers_match
from toolkit.data.hygiene import LeakageIndex, dedupe
from toolkit.core.errors import DataError
from toolkit.core import defaults
from toolkit.core.memory import process_peak_bytes
from toolkit.runtime.models import ALIASES, PACKAGED
from toolkit.data.problems import Problem, load_file, load_hf, load_suite, read_jsonl, split_problems, write_jsonl
from toolkit.core.recipe import DataSource, Recipe
from toolkit.core.jsonio import atomic_write_jsonl
from toolkit.core.jsonio import read_jsonl as read_rows
from toolkit.data.strategies import (clean_solution, is_tagged, solution_answers, teacher_messages, training_completion,
                                 training_prompt)
from toolkit.eval.rounds_report import write_round_report
from toolkit.export.model_card import run_card, write_card
from toolkit.pipeline import fdd, siked
from toolkit.pipeline.context import RunContext, data_root
from toolkit.pipeline.deploy import bench_config, deploy
from toolkit.pipeline.student import evaluate_student, load_student, train_student


def _load_source(src: DataSource, recipe: Recipe) -> list[Problem]:
    if src.suite:
        root = data_root(recipe)
        names = [s.strip() for s in src.suite.split(",") if s.strip()]
        problems = [p for name in names for p in load_suite(name, root)]
        # Suites overlap (AddSub and SingleEq share questions): keep each question once.
        return dedupe(problems)[0] if len(names) > 1 else problems
    if src.path:
        return load_file(recipe.resolve(src.path), src.format, src.question_field, src.answer_field)
    return load_hf(src.hf, src.hf_config, src.hf_split, src.question_field, src.answer_field)


def _split(recipe: Recipe) -> dict[str, list[Problem]]:
    """The training source's problems split, seeded and disjoint, into heldout, train (the recipe's sizes) and
    unused (the rest, in the same seeded order: a larger train_size takes its extra problems from its front)."""
    d = recipe.data
    train_pool = _load_source(d.train, recipe)
    if d.heldout is None:
        rest = len(train_pool) - d.heldout_size - d.train_size
        return split_problems(train_pool, {"heldout": d.heldout_size, "train": d.train_size,
                                           "unused": max(rest, 0)}, recipe.seed)
    heldout_pool = _load_source(d.heldout, recipe)
    heldout = split_problems(heldout_pool, {"heldout": d.heldout_size}, recipe.seed)["heldout"]
    # Never train on a question we evaluate on, even when two sources overlap.
    seen = {" ".join(p.question.lower().split()) for p in heldout}
    train_pool = [p for p in train_pool if " ".join(p.question.lower().split()) not in seen]
    parts = split_problems(train_pool, {"train": d.train_size, "unused": max(len(train_pool) - d.train_size, 0)},
                           recipe.seed)
    return parts | {"heldout": heldout}


def select_problems(recipe: Recipe) -> tuple[list[Problem], list[Problem]]:
    """(train, heldout) problems: seeded, disjoint, of the recipe's sizes."""
    parts = _split(recipe)
    return parts["train"], parts["heldout"]


def unused_originals(recipe: Recipe) -> list[Problem]:
    """The training source's problems with gold answers that neither round 0 nor the held-out set took, in
    seeded order."""
    return _split(recipe)["unused"]


def data(ctx: RunContext) -> tuple[list[Problem], list[Problem]]:
    """The stage `data`: the recipe's (training, held-out) problems, selected once and kept in the run folder."""
    train_path, heldout_path = ctx.run.root / "round-0" / "problems.jsonl", ctx.run.root / "heldout.jsonl"

    def compute(info: dict) -> None:
        train, heldout = select_problems(ctx.recipe)
        write_jsonl(heldout_path, heldout)
        write_jsonl(train_path, train)
        info.update(train=len(train), heldout=len(heldout))

    return ctx.cached_stage("data", "data: select training and held-out problems", compute,
                            lambda: (read_jsonl(train_path), read_jsonl(heldout_path)))


def rationales(ctx: RunContext, k_round: int, problems: list[Problem], out: str = "train.jsonl") -> list[dict]:
    """k teacher solutions per problem and strategy; those whose answer matches gold become training rows,
    written to round-K/`out` (a later round's originals: new_train.jsonl, beside the round's whole train.jsonl)."""
    rdir = ctx.run.round_dir(k_round)
    k = ctx.recipe.distill.paths_per_problem
    strategies = ctx.recipe.distill.strategies

    def compute(info: dict) -> None:
        pairs = [(p, s) for p in problems for s in strategies]
        with ctx.teacher() as teacher, ctx.progress("teacher requests", len(pairs) * k) as advance:
            texts = teacher.complete([teacher_messages(p.question, s) for p, s in pairs], n=k,
                                     temperature=ctx.recipe.teacher.temperature,
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
        atomic_write_jsonl(rdir / out, train)
        info.update(requested=len(rows), kept=len(train),
                    problems_covered=len({r["problem_id"] for r in train}),
                    teacher_requests_sent=teacher.requests_sent, by_strategy=by_strategy)
        if not train:
            raise DataError(f"the teacher got no training problem right ({len(rows)} rationales in "
                            f"{rdir / 'rationales.jsonl'}); check the teacher model and prompt")

    return ctx.cached_stage(f"round-{k_round}/rationales",
                            f"teacher: {k} solutions for each of {len(problems)} problems and "
                            f"{len(strategies)} strateg{'y' if len(strategies) == 1 else 'ies'}",
                            compute, lambda: read_rows(rdir / out))


def run_all(ctx: RunContext) -> dict:
    """The recipe's steps in order: data, round 0's rationales, the base student's eval, the FDD rounds
    (each later round first grows the training set from the previous student's feedback; every round
    retrains from the base checkpoint), the self-guided iterations, the reports, then the deploy section's
    exports, pick and report. Returns the manifest."""
    import torch  # heavy optional runtime, imported on first use

    torch.set_num_threads(ctx.threads)
    cfg = ctx.recipe.distill
    unused = unused_originals(ctx.recipe) if cfg.rounds > 1 else []
    if unused and cfg.round_source == "generated":
        ctx.console.print(f"[yellow]note: rounds 1-{cfg.rounds - 1} write new questions while {len(unused)} original "
                          f"problems with gold answers are unused; {fdd.ORIGINALS_EVIDENCE} (distill.round_source: "
                          f"auto spends the rounds on them)[/yellow]")
    seeds, heldout = data(ctx)
    rows = rationales(ctx, 0, seeds)  # the teacher server stops before torch starts
    rounds = {}
    if ctx.recipe.eval.base:
        rounds["base"] = evaluate_student(ctx, "eval/base", "eval: base student on held-out problems",
                                          ctx.base_student, heldout, ctx.run.root / "eval-base" / "results.json")
        rounds["base"].update(problems=0, rationales=0)
    problems = seeds  # the labelled training problems; grows by the accepted new ones each round
    student_dir = None
    for k in range(ctx.recipe.distill.rounds):
        taken = {p.id for p in problems}
        unused = [p for p in unused if p.id not in taken]
        if k > 0 and fdd.round_source(cfg.round_source, len(unused)) == "originals":
            picked = fdd.pick_originals(ctx, k, unused, student_dir,
                                        cfg.originals_per_round or cfg.new_per_problem * len(problems))
            new_rows = rationales(ctx, k, picked, out="new_train.jsonl")
            problems, rows = problems + picked, rows + new_rows
            atomic_write_jsonl(ctx.run.round_dir(k) / "train.jsonl", rows)
        elif k > 0:
            easy, hard = fdd.feedback(ctx, k, problems, student_dir)
            # The n-gram index of every evaluation suite (5,906 questions: 57 MB, 0.14 GB once overlap() has run;
            # built in 0.3 s) serves the question stage alone and is dropped before the round trains, where the
            # process peaks: held, it put the quickstart's round-1 training 0.09 GB above round 0's.
            # Our own training problems may come from an eval suite: they are not leakage.
            leakage = LeakageIndex.from_suites(ctx.data_root(), n=ctx.recipe.distill.leakage_ngram,
                                               exclude=[p.id for p in seeds])
            new = fdd.new_questions(ctx, k, problems, easy, known=problems + heldout, leakage=leakage)
            del leakage
            accepted, new_rows = fdd.pseudo_label(ctx, k, new)
            problems, rows = problems + accepted, rows + new_rows
            atomic_write_jsonl(ctx.run.round_dir(k) / "train.jsonl", rows)
        student_dir = train_student(ctx, f"round-{k}", rows)
        rounds[f"round-{k}"] = evaluate_student(
            ctx, f"round-{k}/eval", f"eval: round {k} student on held-out problems",
            lambda d=student_dir: load_student(d), heldout, ctx.run.round_dir(k) / "eval" / "results.json",
            path=student_dir)
        rounds[f"round-{k}"].update(problems=len(problems), rationales=len(rows))
    if ctx.recipe.distill.self_guided:
        student_dir = siked.iterate(ctx, problems, rows, heldout, student_dir, rounds)
    ctx.record_teacher_total()  # a resumed run prices every stage at the recipe's current teacher.price
    ctx.run.manifest["summary"] = {"rounds": rounds, "student": str(student_dir)}
    # This invocation's own peak over every stage and the work between them (a resumed run: this part only).
    ctx.run.manifest["peak_rss_bytes"] = process_peak_bytes()
    ctx.run.save()
    write_round_report(ctx.run.root, rounds)
    if is_tagged(ctx.recipe.distill.strategies):
        siked.write_strategy_report(ctx.run.root, rounds)
    if ctx.recipe.deploy:
        # The final student (last round or iteration), paired with its own fp32 eval on the same problems.
        final = list(rounds)[-1]
        ctx.run.manifest["summary"]["deploy"] = deploy(ctx, student_dir, (final, rounds[final]), heldout)
        ctx.run.save()
    # A Hugging Face model card in every student folder (the final one's lists its exports); cheap, so
    # written again on every invocation from the run's current files.
    for folder in sorted(ctx.run.root.glob("*/student")):
        write_card(folder, run_card(ctx.run.root, folder))
    return ctx.run.manifest


def _sources(problems: list[Problem]) -> str:
    """The suites a pooled split was drawn from, most frequent first (a split mixes them)."""
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
        ("rounds", f"{dc.rounds}" + (_describe_rounds(dc, len(unused_originals(recipe)))
                                     if dc.rounds > 1 else " (round 0 only)")),
        ("strategies", ", ".join(dc.strategies) + (" (the student tags its replies and picks one)"
                                                   if is_tagged(dc.strategies) else "")),
        ("self-guided", _describe_self_guided(dc)),
        ("training", (f"{t.max_steps} steps" if t.max_steps else f"{t.epochs} epochs")
         + f", batch {t.batch_size} × {t.seq_len} packed tokens, lr {t.lr}"
         + (f", LoRA r={t.lora}" if t.lora else "")),
        ("evaluation", f"{'base and distilled' if recipe.eval.base else 'distilled (not the base)'} student, "
                       f"greedy, {len(heldout)} problems, "
                       f"max {recipe.eval.max_new_tokens} new tokens"),
        ("deploy", _describe_deploy(recipe)),
        ("run folder", str(run.resolve())),
        ("teacher cache", str(defaults.cache_root(recipe.cache_dir) / "teacher.sqlite")),
    ]


def _describe_rounds(dc, unused: int) -> str:
    """The later rounds' plan: where each takes its new problems, and the evidence note when a generated round
    is planned while unused originals remain."""
    generated = (f"the student's feedback, {dc.new_per_problem} new problem(s) per training problem"
                 + (" written with a program whose numbers the question states" if dc.question_check == "program"
                    else "")
                 + f", kept when {dc.label_solves} teacher solutions agree (≥ {dc.vote_min} votes, "
                   f"≥ {dc.vote_fraction:.0%})"
                 + (" and the PoT program gives the same answer" if dc.label_check == "pot" else "")
                 + (" and the writer's program gives the same answer" if dc.question_check == "program" else ""))
    order = "those the student gets wrong first" if dc.originals_pick == "wrong_first" else "in seeded order"
    originals = (f"{dc.originals_per_round or f'{dc.new_per_problem} per training problem'} of the {unused} unused "
                 f"original problems, {order}, {dc.paths_per_problem} teacher paths each")
    if dc.round_source == "originals":
        return f": each later round takes {originals}"
    if dc.round_source == "auto":
        return f": each later round takes {originals}; once they run out, {generated}"
    text = f": each later round takes {generated}"
    if unused:
        text += (f". NOTE: {unused} original problems with gold answers stay unused; {fdd.ORIGINALS_EVIDENCE}; "
                 f"distill.round_source: auto spends the rounds on them")
    return text


def _describe_deploy(recipe: Recipe) -> str:
    d = recipe.deploy
    if d is None:
        return "none (the run ends at the torch checkpoint)"
    b = bench_config(d)
    threads = f"{','.join(map(str, b.threads))} thread(s)" if b.threads else "all cores"
    return (f"{', '.join(f'{f.format} {f.quant}' for f in d.formats)} from the final student; each answers "
            f"{f'the first {d.heldout}' if d.heldout else 'all'} held-out problems, paired with the fp32 student; "
            f"bench pp {b.prompt_tokens} + tg {b.gen_tokens}, {b.reps} reps, {threads}"
            f"{f' on {d.remote}' if d.remote else ''}; pick the {d.pick} within {d.max_accuracy_drop:g} "
            f"points" + (", packed as the edge bundle" if d.bundle else ""))


def _describe_self_guided(dc) -> str:
    sg = dc.self_guided
    if sg is None:
        return "none"
    mixing = {"all": "all teacher data plus all correct own data (teacher share observed)",
              "alpha_schedule": f"teacher share alpha {' → '.join(f'{a:g}' for a in sg.alpha or [])}",
              "adaptive": "adaptive (teacher data only for problems the student still fails)"}[sg.mixing]
    per = {"free": "per problem", "forced": "per problem and strategy (tag forced)",
           "both": "per problem free plus as many per strategy (tag forced)"}[sg.sampling]
    return (f"{sg.iterations} iteration(s) after the last round: {sg.samples} student samples {per} at "
            f"temperature {sg.temperature} ({sg.backend} backend), correct ones kept; {mixing}; retrain from the base")
