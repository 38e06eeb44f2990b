"""FDD rounds after round 0: student feedback, teacher-written new problems, self-consistency labels."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from toolkit.data.answers import answers_match, normalize_number
from toolkit.data.hygiene import LeakageIndex, dedupe
from toolkit.data.problems import Problem, read_jsonl, write_jsonl
from toolkit.data.question_programs import (harder_program_messages, parse_question_programs,
                                            similar_program_messages, ungrounded_numbers)
from toolkit.data.questions import harder_messages, parse_questions, similar_messages
from toolkit.core.figures import pyplot, save_png
from toolkit.core.jsonio import atomic_write_json, atomic_write_jsonl
from toolkit.core.jsonio import read_jsonl as read_rows
from toolkit.data.strategies import (STRATEGIES, clean_solution, final_answers, is_tagged, solution_answers,
                                 teacher_messages, training_completion, training_prompt)
from toolkit.data.voting import majority_vote
from toolkit.pipeline.context import RunContext
from toolkit.pipeline.student import load_student
from toolkit.sandbox.runner import run_programs
from toolkit.teacher.teachers import OpenAITeacher


def classify(answers: list[str | None], gold: str, threshold: float) -> str:
    """"easy" when the share of the student's answers that match gold reaches `threshold`, else "hard"."""
    right = sum(answers_match(a, gold) for a in answers)
    return "easy" if answers and right / len(answers) >= threshold else "hard"


# What the committed measurement says about a generated round while original problems remain (the planner's note).
ORIGINALS_EVIDENCE = ("in bench/results/fdd-cpu-powered the same teacher requests spent on more original problems "
                      "scored 19.4 points above a feedback round (-24.4 to -14.4, McNemar p 3.5e-13), whose own gain "
                      "over round 0 was +2.0 (-2.2 to +6.2, p 0.40)")


def round_source(source: str, unused: int) -> str:
    """Where a round after round 0 takes its new problems: `generated` or `originals`; `auto` takes unused
    originals while any remain (the measured better use of a teacher request), then generated ones."""
    if source == "auto":
        return "originals" if unused else "generated"
    return source


def feedback(ctx: RunContext, k: int, problems: list[Problem], student_dir: Path,
             stage: str = "feedback", what: str = "training problems") -> tuple[list[str], list[str]]:
    """The round k-1 student answers `problems` (round-K/<stage>.jsonl): ids of (easy, hard) problems."""
    cfg = ctx.recipe.distill
    path = ctx.run.round_dir(k) / f"{stage}.jsonl"
    name = f"round-{k}/{stage}"

    def compute(info: dict) -> None:
        n = cfg.feedback_samples
        with ctx.student_sampler(lambda: load_student(student_dir), student_dir, name, info) as gen:
            prompts = [training_prompt(p.question, cfg.strategies) for p in problems for _ in range(n)]
            with ctx.progress("student answers", len(prompts)) as advance:
                outs = gen.generate(prompts, max_new_tokens=ctx.recipe.eval.max_new_tokens,
                                    temperature=cfg.feedback_temperature if n > 1 else 0.0, on_done=advance)
            parsed = [a for _, a in final_answers("auto" if is_tagged(cfg.strategies) else "cot", outs)]
            rows = []
            for i, p in enumerate(problems):
                answers = parsed[i * n:(i + 1) * n]
                rows.append({"id": p.id, "answers": answers, "gold": p.answer, "samples": n,
                             "label": classify(answers, p.answer, cfg.feedback_threshold)})
            atomic_write_jsonl(path, rows)
            info.update(easy=sum(r["label"] == "easy" for r in rows), hard=sum(r["label"] == "hard" for r in rows))

    rows = ctx.cached_stage(name, f"{stage}: round {k - 1} student answers {len(problems)} {what}",
                            compute, lambda: read_rows(path))
    return [r["id"] for r in rows if r["label"] == "easy"], [r["id"] for r in rows if r["label"] == "hard"]


# The student answers this many unused originals per problem a round takes: its cost stays bounded on a large
# pool (GSM8K's 7,473) while leaving several candidates for every pick.
CANDIDATES_PER_PICK = 4


def wrong_first(candidates: list[Problem], wrong: set[str], count: int) -> list[Problem]:
    """`count` of `candidates`: those whose id is in `wrong` first, then the others, each group in its order."""
    return ([p for p in candidates if p.id in wrong] + [p for p in candidates if p.id not in wrong])[:count]


def pick_originals(ctx: RunContext, k: int, unused: list[Problem], student_dir: Path, count: int) -> list[Problem]:
    """`count` unused original problems for round k. `seeded` (distill.originals_pick): the next ones in seeded
    order. `wrong_first`, feedback-driven selection: the round k-1 student answers the next CANDIDATES_PER_PICK x
    `count` (seeded order) and the round takes those it got wrong first (DART-Math's "hard problems get the
    budget"), then those it got right, each group in seeded order."""
    if ctx.recipe.distill.originals_pick == "seeded":
        picked = unused[:count]
        ctx.console.print(f"round {k}: the next {len(picked)} unused original problems in seeded order")
        return picked
    candidates = unused[:CANDIDATES_PER_PICK * count]
    if not candidates:
        return []
    easy, hard = feedback(ctx, k, candidates, student_dir, stage="select", what="unused original problems")
    picked = wrong_first(candidates, set(hard), count)
    ctx.console.print(f"round {k}: {len(picked)} unused original problems, {min(len(hard), len(picked))} of them "
                      f"answered wrong by the round {k - 1} student (round-{k}/select.jsonl)")
    return picked


def new_questions(ctx: RunContext, k: int, problems: list[Problem], easy: list[str], known: list[Problem],
                  leakage: LeakageIndex) -> list[Problem]:
    """m harder variants of every easy problem and m similar new ones for every hard problem, as far as
    `distill.generate` asks for each kind.

    New questions are deduplicated (exact and near) against each other and every known problem,
    and dropped when they overlap an evaluation suite; every count lands in the manifest, and the
    overlap distribution in round-k/leakage.json and leakage.png.
    """
    cfg = ctx.recipe.distill
    path = ctx.run.round_dir(k) / "questions.jsonl"
    easy_set = set(easy)
    m = cfg.new_per_problem
    # Harder variants of easy problems, similar ones for hard problems: each kind only when generated.
    kind_of = {p.id: "harder" if p.id in easy_set else "similar" for p in problems}
    asked = [(p, kind_of[p.id]) for p in problems if kind_of[p.id] in cfg.generate]

    programs = cfg.question_check == "program"
    harder, similar = (harder_program_messages, similar_program_messages) if programs else (harder_messages,
                                                                                           similar_messages)

    def compute(info: dict) -> None:
        prompts = [harder(p, m) if kind == "harder" else similar(p, m) for p, kind in asked]
        texts, sent = [], 0
        if prompts:  # a round with no problem of the asked kind starts no teacher
            # Round k samples the question writer with seed + k - 1: the seed problems' prompts repeat
            # every round, and the same seed would return round 1's cached problems again.
            with ctx.teacher(max_tokens=cfg.question_max_tokens, seed_offset=k - 1) as teacher, \
                    ctx.progress("question requests", len(prompts)) as advance:
                texts = teacher.complete(prompts, n=1, temperature=cfg.question_temperature,
                                         on_done=lambda: advance(1))
            sent = teacher.requests_sent
        generated, malformed, written_as = [], 0, {}  # written_as: generated id -> its kind
        code_of: dict[str, str] = {}  # question_check program: generated id -> the writer's program
        kinds = {kind: {"requests": 0, "parsed": 0, "kept": 0} for kind in cfg.generate}
        for (p, kind), (text,) in zip(asked, texts):
            if programs:
                pairs, bad = parse_question_programs(text, m)
            else:
                questions, bad = parse_questions(text, m)
                pairs = [(q, None) for q in questions]
            malformed += bad
            kinds[kind]["requests"] += 1
            kinds[kind]["parsed"] += len(pairs)
            for i, (q, code) in enumerate(pairs):
                generated.append(Problem(id=f"r{k}-{p.id}-{i}", question=q, answer="", source="generated",
                                         origin=f"{kind}-of:{p.id}@round-{k}"))
                written_as[generated[-1].id] = kind
                if code is not None:
                    code_of[generated[-1].id] = code
        rejected: list[dict] = []
        parsed = len(generated)
        if programs:
            generated, rejected, checks = check_programs(generated, code_of)
            atomic_write_jsonl(ctx.run.round_dir(k) / "question_programs.jsonl", checks)
        kept, dups = dedupe(generated, n=cfg.dedup_ngram, threshold=cfg.dedup_threshold, existing=known)
        clean, leaked, stats = leakage.filter(kept)
        if leakage.missing:  # every suite the check could not compare against, by name
            ctx.console.print(f"[yellow]warning: {leakage.missing_line()}[/yellow]")
        for q in clean:
            kinds[written_as[q.id]]["kept"] += 1
        write_jsonl(path, clean)
        atomic_write_jsonl(ctx.run.round_dir(k) / "dropped_questions.jsonl",
                           rejected + [{"reason": "duplicate", **x} for x in dups] +
                           [{"reason": "leakage", **x} for x in leaked])
        write_overlap_report(ctx.run.round_dir(k), k, kept, leakage, len(leaked))
        info.update(requests=len(prompts), parsed=parsed, malformed=malformed,
                    duplicates=len(dups), leaked=len(leaked), kept=len(clean), kinds=kinds,
                    teacher_requests_sent=sent,
                    **({"question_check": "program",
                        "program_failed": sum(r["reason"] == "program failed" for r in rejected),
                        "ungrounded": sum(r["reason"] == "ungrounded" for r in rejected)} if programs else {}),
                    leakage={"checked": stats["checked"], "leaked": stats["leaked"],
                             "by_suite": stats["by_suite"], "suites": stats["suites"],
                             "missing": leakage.missing})

    if programs:
        what_kept = ", each with a program whose numbers the question states"
    else:
        what_kept = ""
    if set(cfg.generate) == {"harder", "similar"}:
        what = f"{len(problems)} problems"
    else:
        what = f"{len(asked)} {'easy' if cfg.generate == ['harder'] else 'hard'} problems ({cfg.generate[0]} only)"
    return ctx.cached_stage(f"round-{k}/questions", f"teacher: {m} new problem(s) for each of {what}{what_kept}",
                            compute, lambda: read_jsonl(path))


def check_programs(generated: list[Problem], code_of: dict[str, str]) -> tuple[list[Problem], list[dict], list[dict]]:
    """question_check program: (questions kept, dropped rows, one check row per question). A question is kept
    when its writer's program runs in the sandbox to a number and uses only numbers the question states."""
    results = run_programs([code_of[q.id] for q in generated], timeout_s=3.0) if generated else []
    kept, dropped, checks = [], [], []
    for q, result in zip(generated, results):
        answer = normalize_number(result.answer) if result.answer is not None else None
        missing = ungrounded_numbers(code_of[q.id], q.question)
        row = {"id": q.id, "program": code_of[q.id], "program_answer": answer, "error": result.error_kind,
               "ungrounded": missing}
        checks.append(row)
        if answer is None:
            dropped.append({"reason": "program failed", "id": q.id, "question": q.question,
                            "error": result.error_kind})
        elif missing:
            dropped.append({"reason": "ungrounded", "id": q.id, "question": q.question, "numbers": missing})
        else:
            kept.append(q)
    return kept, dropped, checks


def program_answers(rdir: Path) -> dict[str, str]:
    """question_check program: each kept question's program answer, from round-K/question_programs.jsonl."""
    path = rdir / "question_programs.jsonl"
    rows = read_rows(path) if path.is_file() else []
    return {r["id"]: r["program_answer"] for r in rows if r.get("program_answer") is not None and not r["ungrounded"]}


def write_overlap_report(rdir: Path, k: int, questions: list[Problem], leakage: LeakageIndex,
                         leaked: int) -> dict:
    """rdir/leakage.json and leakage.png: per evaluation suite, the histogram of the questions' maximum
    n-gram overlap (LeakageIndex.overlap: the longest word sequence shared with any suite question,
    capped at the leakage n, the drop rule's bin) — FDD's Fig. 4, beside the dropped count."""
    per_suite = leakage.overlap([q.question for q in questions])
    n = leakage.n
    report = {
        "measure": f"longest word n-gram (in words, after normalize_text) a question shares with any one question "
                   f"of the suite, capped at {n}; bin {n} (also: equal to a suite question) is what the leakage "
                   f"check drops",
        "n": n, "questions": len(questions), "leaked": leaked,
        "suites": {suite: {"histogram": np.bincount(np.asarray(values, dtype=np.int64), minlength=n + 1).tolist(),
                           "mean": round(float(np.mean(values)), 3) if values else None}
                   for suite, values in per_suite.items()},
        "per_question": [{"id": q.id, "origin": q.origin, "overlap": {s: v[i] for s, v in per_suite.items()}}
                         for i, q in enumerate(questions)],
    }
    atomic_write_json(rdir / "leakage.json", report)
    if report["suites"]:
        plot_overlap(report, f"round {k}", rdir / "leakage.png")
    return report


def plot_overlap(report: dict, title: str, path: Path) -> None:
    """One line per suite: how many questions have each maximum overlap, the drop bin marked."""
    plt = pyplot()

    n = report["n"]
    x = list(range(n + 1))
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=120)
    for suite, row in report["suites"].items():
        ax.plot(x, row["histogram"], marker="o", markersize=3, label=suite)
    ax.axvline(n - 0.5, color="grey", linestyle="--", linewidth=1)
    ax.text(n - 0.6, ax.get_ylim()[1] * 0.95, "dropped →", fontsize=7, va="top", ha="right", color="grey")
    ax.set_xticks(x, [str(i) for i in x[:-1]] + [f"≥{n}"])
    ax.set_xlabel("longest word n-gram shared with the suite (words)")
    ax.set_ylabel(f"generated questions (of {report['questions']})")
    ax.set_title(f"{title}: overlap of generated questions with each evaluation suite", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=7)
    fig.tight_layout()
    save_png(fig, path)


def pot_agrees(pot_answers: list[str | None], label: str) -> bool:
    """label_check pot: a strict majority of the PoT programs' answers match the CoT / L2M majority `label`
    (a program that failed or set no answer counts against; no program at all never agrees)."""
    return 2 * sum(answers_match(a, label) for a in pot_answers) > len(pot_answers)


def _solve(teacher: OpenAITeacher, questions: list[Problem], per: dict[str, int], temperature: float,
           advance: Callable[[int], None]) -> list[list[tuple[str, str | None]]]:
    """(strategy, cleaned solution) pairs of every question: per[s] solves with each strategy s."""
    solved: list[list[tuple[str, str | None]]] = [[] for _ in questions]
    for s, count in per.items():
        if count:
            texts = teacher.complete([teacher_messages(q.question, s) for q in questions], n=count,
                                     temperature=temperature, on_done=lambda: advance(1))
            for i, outs in enumerate(texts):
                solved[i] += [(s, clean_solution(s, t)) for t in outs]
    return solved


def pseudo_label(ctx: RunContext, k: int, questions: list[Problem]) -> tuple[list[Problem], list[dict]]:
    """The teacher solves each new problem n times (the n solves spread over the recipe's strategies in
    turn); a majority answer with enough agreement becomes its label, and the solutions that reach it
    become training rows. With distill.label_check pot the vote counts the CoT / L2M solves, and a
    question that passes is kept only when its PoT programs agree (pot_agrees): pot's own solves, or one
    extra PoT request for each such question when pot has none. With distill.question_check program, a question
    is kept only when the vote's answer equals its writer's program's (round-K/question_programs.jsonl)."""
    cfg = ctx.recipe.distill
    rdir = ctx.run.round_dir(k)
    n = cfg.label_solves
    programs = cfg.question_check == "program"
    # The writer's own program already checks each question; label_check pot then adds nothing but requests,
    # unless pot is a strategy and its solves are votes of their own.
    check = cfg.label_check == "pot" and not (programs and "pot" not in cfg.strategies)

    def compute(info: dict) -> None:
        strategies = [s for s in STRATEGIES if s in cfg.strategies]
        # Solve j uses strategy j mod |strategies|: the same n requests whatever the strategy count.
        per = {s: len(range(i, n, len(strategies))) for i, s in enumerate(strategies)}
        solved: list[list[tuple[str, str | None]]] = [[] for _ in questions]
        answers: list[list[str | None]] = [[] for _ in questions]
        votes, checked = [], []  # checked: indices of the questions that got an extra PoT request
        if questions:
            temperature = ctx.recipe.teacher.temperature
            with ctx.teacher() as teacher:
                with ctx.progress("labelling requests", len(questions) * n) as advance:
                    solved = _solve(teacher, questions, per, temperature, advance)
                flat = solution_answers([pair for pairs in solved for pair in pairs])
                at = 0
                for i, pairs in enumerate(solved):
                    answers[i] = flat[at:at + len(pairs)]
                    at += len(pairs)
                    voters = [a for (s, _), a in zip(pairs, answers[i]) if not (check and s == "pot")]
                    votes.append(majority_vote(voters, cfg.vote_fraction, cfg.vote_min))
                if check and not per.get("pot"):
                    # Only questions whose vote passed are worth a program: the check can only reject.
                    checked = [i for i, v in enumerate(votes) if v.accepted]
                    if checked:
                        with ctx.progress("PoT check requests", len(checked)) as advance:
                            extra = [pairs[0] for pairs in _solve(teacher, [questions[i] for i in checked],
                                                                  {"pot": 1}, temperature, advance)]
                        for i, pair, answer in zip(checked, extra, solution_answers(extra)):
                            solved[i].append(pair)
                            answers[i].append(answer)
        accepted, rows, votes_out, check_rejected, program_rejected = [], [], [], 0, 0
        written = program_answers(rdir) if programs else {}
        for q, pairs, ans, vote in zip(questions, solved, answers, votes):
            row = {"id": q.id, "answers": ans, "strategies": [s for s, _ in pairs], "answer": vote.answer,
                   "votes": vote.votes, "agreement": vote.agreement, "accepted": vote.accepted}
            if check:
                pot_answers = [a for (s, _), a in zip(pairs, ans) if s == "pot"]
                # None: the vote failed, so the check never ran.
                passed = pot_agrees(pot_answers, vote.answer) if vote.accepted else None
                check_rejected += passed is False
                row.update(pot_answers=pot_answers, check_passed=passed, accepted=bool(passed))
            if programs:
                # None: the vote (or the PoT check) failed first.
                agrees = answers_match(written.get(q.id), vote.answer) if row["accepted"] else None
                program_rejected += agrees is False
                row.update(program_answer=written.get(q.id), program_agrees=agrees, accepted=bool(agrees))
            votes_out.append(row)
            if not row["accepted"]:
                continue
            accepted.append(Problem(q.id, q.question, vote.answer, q.source, q.origin))
            # An extra PoT program becomes a training row only when the student learns pot.
            rows += [{"problem_id": q.id, "strategy": s, "messages": training_prompt(q.question, cfg.strategies),
                      "completion": training_completion(s, c, cfg.strategies)}
                     for (s, c), a in zip(pairs, ans) if c and s in cfg.strategies and answers_match(a, vote.answer)]
        write_jsonl(rdir / "generated.jsonl", accepted)
        atomic_write_jsonl(rdir / "votes.jsonl", votes_out)
        atomic_write_jsonl(rdir / "new_train.jsonl", rows)
        info.update(questions=len(questions), accepted=len(accepted), rejected=len(questions) - len(accepted),
                    new_rationales=len(rows))
        if check:
            info.update(label_check="pot", check_rejected=check_rejected, check_requests=len(checked))
        if programs:
            info.update(question_check="program", program_rejected=program_rejected)

    title = f"teacher: {n} solutions for each of {len(questions)} new problems"
    if check:
        title += ", kept when the PoT program agrees"
    if programs:
        title += ", kept when the writer's program agrees"
    return ctx.cached_stage(f"round-{k}/labels", title, compute,
                            lambda: (read_jsonl(rdir / "generated.jsonl"), read_rows(rdir / "new_train.jsonl")))
