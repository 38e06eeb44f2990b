"""SIKeD as its paper defines it: "All" mixing concatenates all teacher and all correct own data, and the
student can be sampled with each strategy's tag forced (issue 17)."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from tests.conftest import DATA, toolkit, write_tiny_recipe
from tests.fault_teacher import FaultTeacher
from toolkit.data.problems import Problem
from toolkit.pipeline.siked import mix, sample_prompt, sampling_plan, score_samples

STRATEGIES = ["cot", "l2m", "pot"]


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_mixing_all_concatenates_and_observes_the_share():
    teacher = [{"problem_id": f"t{i}", "source": "teacher"} for i in range(100)]
    own = [{"problem_id": f"s{i}", "source": "self"} for i in range(20)]
    rows, info = mix(teacher, own, "all", None, seed=0)
    assert rows == teacher + own
    assert info == {"teacher_rows": 100, "self_rows": 20, "rows": 120, "teacher_share": 0.8333}
    # The named option keeps today's subsampling to the schedule's share.
    assert mix(teacher, own, "alpha_schedule", 0.5, seed=0)[1]["teacher_rows"] == 20


def test_forced_sampling_plan_and_prompts():
    probs = [Problem("a", "Q1", "12", "t", "seed"), Problem("b", "Q2", "7", "t", "seed")]
    assert [f for _, f in sampling_plan(probs, 2, STRATEGIES, "free")] == [None] * 4
    forced = sampling_plan(probs, 2, STRATEGIES, "forced")
    assert [(p.id, f) for p, f in forced[:6]] == [("a", s) for s in STRATEGIES for _ in range(2)] and len(forced) == 12
    both = sampling_plan(probs, 1, STRATEGIES, "both")
    assert [f for _, f in both] == [None, *STRATEGIES] * 2
    for s in STRATEGIES:
        prompt = sample_prompt("Q1", s, STRATEGIES)
        assert prompt[-1] == {"role": "assistant", "content": f"[{s}]\n"} and "strategy tag" in prompt[0]["content"]
    assert sample_prompt("Q1", None, STRATEGIES)[-1] == {"role": "user", "content": "Q1"}


def test_forced_replies_are_read_as_their_strategy_and_counted_per_strategy():
    prob = Problem("a", "Q1", "12", "t", "seed")
    plan = [(prob, None), (prob, "pot"), (prob, "l2m")]
    outs = ["[cot]\n3 * 4 = 12.\nThe answer is 12.",
            "```python\nanswer = 3 * 4\n```",  # what followed the forced [pot] tag
            "The answer is 12."]  # forced L2M without a sub-question: not well-formed
    samples, train, stats = score_samples(plan, outs, STRATEGIES)
    assert [(s["forced"], s["strategy"], s["correct"]) for s in samples] == [
        (None, "cot", True), ("pot", "pot", True), ("l2m", "l2m", False)]
    assert [r["completion"] for r in train] == ["[cot]\n3 * 4 = 12.\nThe answer is 12.",
                                                "[pot]\n```python\nanswer = 3 * 4\n```"]
    assert all(r["messages"][-1]["role"] == "user" for r in train)  # trained on the free prompt
    # Choices count the free replies only; forced ones are counted apart; kept = training rows per strategy.
    assert stats["cot"]["chosen"] == 1 and stats["pot"]["chosen"] == 0
    assert (stats["pot"]["forced_samples"], stats["pot"]["forced_correct"], stats["pot"]["kept"]) == (1, 1, 1)
    assert (stats["l2m"]["forced_samples"], stats["l2m"]["forced_correct"], stats["l2m"]["kept"]) == (1, 0, 0)


def test_all_mixing_with_forced_and_free_samples_end_to_end(tmp_path, tiny_model_dir):
    with FaultTeacher(tmp_path / "server.jsonl") as srv:
        recipe = write_tiny_recipe(tmp_path, tiny_model_dir, srv.base_url)
        r = toolkit("distill", str(recipe), f"data.root={DATA}", "distill.strategies=[cot, l2m, pot]",
                    "distill.paths_per_problem=1", "distill.self_guided.iterations=1",
                    "distill.self_guided.samples=1", "distill.self_guided.mixing=all",
                    "distill.self_guided.sampling=both", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    run = tmp_path / "runs" / "tiny"
    s = json.loads((run / "manifest.json").read_text())["stages"]["iter-1/sample"]
    problems = 6
    # Sampling `both`: one free sample per problem, and one per problem for each strategy with its tag forced.
    assert s["sampling"] == "both" and s["samples"] == problems * 4 and s["forced_samples"] == problems * 3
    samples = _rows(run / "iter-1" / "samples.jsonl")
    assert Counter(x["forced"] for x in samples) == {None: problems, "cot": problems, "l2m": problems, "pot": problems}
    assert all(x["strategy"] == x["forced"] for x in samples if x["forced"])
    assert all(s["strategies"][k]["forced_samples"] == problems for k in STRATEGIES)
    own = _rows(run / "iter-1" / "self_train.jsonl")
    assert sum(v["kept"] for v in s["strategies"].values()) == len(own) == s["self_rows"]
    # Mixing `all`: every teacher row of round 0 plus every correct own row; the share is observed.
    teacher = _rows(run / "round-0" / "train.jsonl")
    assert _rows(run / "iter-1" / "train.jsonl") == teacher + own
    assert s["mixing"] == "all" and s["alpha"] is None
    assert (s["teacher_rows"], s["rows"]) == (len(teacher), len(teacher) + len(own))
    assert s["teacher_share"] == round(len(teacher) / (len(teacher) + len(own)), 4)
    assert f"teacher share {s['teacher_share']:.2f} (mixing all)" in r.stdout


@pytest.mark.parametrize("overrides, message", [
    (["distill.self_guided.sampling=sometimes"], "distill.self_guided.sampling"),
    (["distill.self_guided.mixing=every"], "distill.self_guided.mixing"),
    (["distill.self_guided.alpha=[0.5]"], "for a fixed share per iteration write mixing: alpha_schedule"),
    (["distill.self_guided.mixing=alpha_schedule"], "mixing 'alpha_schedule' needs alpha"),
    (["distill.strategies=[cot]"], "only a student of several strategies learns"),
    (["distill.self_guided.backend=llama.cpp"], "the llama.cpp sampler cannot continue"),
])
def test_bad_self_guided_options_stop_with_one_line(tmp_path, tiny_model_dir, overrides, message):
    recipe = write_tiny_recipe(tmp_path, tiny_model_dir, "http://127.0.0.1:9/v1")  # never reached
    r = toolkit("distill", str(recipe), f"data.root={DATA}", "distill.strategies=[cot, pot]",
                "distill.self_guided.sampling=forced", *overrides, cwd=tmp_path, timeout=120)
    assert r.returncode != 0 and message in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr


def test_combined_fdd_rounds_then_self_guided_iterations(tmp_path, tiny_model_dir):
    """FDD's rounds with strategies, then SIKeD's iterations, in one recipe (recipes/combined-cpu-easy.yaml's
    shape): the iterations start from the last round's student and its whole data, teacher labels included."""
    with FaultTeacher(tmp_path / "server.jsonl") as srv:
        recipe = write_tiny_recipe(tmp_path, tiny_model_dir, srv.base_url)
        r = toolkit("distill", str(recipe), f"data.root={DATA}", "distill.strategies=[cot, pot]",
                    "distill.paths_per_problem=1", "distill.rounds=2", "distill.label_solves=2", "distill.vote_min=1",
                    "distill.self_guided.iterations=1", "distill.self_guided.samples=1",
                    "distill.self_guided.mixing=all", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    run = tmp_path / "runs" / "tiny"
    stages = json.loads((run / "manifest.json").read_text())["stages"]
    order = [name for name in stages if name.startswith(("round-", "iter-"))]
    assert order.index("round-1/labels") < order.index("round-1/train") < order.index("iter-1/sample")
    fdd_rows = _rows(run / "round-1" / "train.jsonl")
    assert len(fdd_rows) > len(_rows(run / "round-0" / "train.jsonl"))  # round 1 added teacher-labelled rows
    own = _rows(run / "iter-1" / "self_train.jsonl")
    assert _rows(run / "iter-1" / "train.jsonl") == fdd_rows + own  # "All": every teacher row, FDD's included
    # The iteration samples every labelled problem: the seeds and round 1's accepted ones.
    labelled = len(_rows(run / "round-0" / "problems.jsonl")) + stages["round-1/labels"]["accepted"]
    assert stages["iter-1/sample"]["samples"] == labelled
    assert [row["model"] for row in json.loads((run / "rounds.json").read_text())] == [
        "base", "round-0", "round-1", "iter-1"]
