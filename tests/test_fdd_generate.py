"""FDD's generation switches (`distill.generate`) and its leakage analysis (Fig. 4) on the real round code:
a tiny student, the fault-free fake teacher, the real evaluation suites."""
from __future__ import annotations

import json

import pytest
from rich.console import Console

from tests.conftest import DATA, DEAD, EASY, one_line_error, toolkit, write_tiny_recipe
from tests.fault_teacher import FaultTeacher
from toolkit.core.recipe import load_recipe
from toolkit.data.hygiene import LeakageIndex
from toolkit.data.problems import Problem, load_suite
from toolkit.pipeline import fdd
from toolkit.pipeline.context import RunContext

SEEDS = [Problem(f"e{i}", q, str(a), "easy") for i, (q, a) in enumerate(EASY[:6])]
EASY_IDS = ["e0", "e1", "e2"]  # the feedback verdict, fixed here: e3..e5 are hard


@pytest.fixture(scope="module")
def leakage(data_root):
    return LeakageIndex.from_suites(data_root)


def _round_one(tmp_path, tiny_model_dir, leakage, generate: str) -> tuple[list[Problem], dict, list[dict]]:
    """Round 1's question stage for SEEDS under `distill.generate=generate`: (kept questions, the stage's
    manifest entry, the teacher's request bodies)."""
    with FaultTeacher(tmp_path / "server.jsonl") as srv:
        recipe = load_recipe(write_tiny_recipe(tmp_path, tiny_model_dir, srv.base_url),
                             [f"data.root={DATA}", "distill.rounds=2", "distill.new_per_problem=2",
                              f"distill.generate={generate}"])
        ctx = RunContext(recipe, Console(quiet=True))
        kept = fdd.new_questions(ctx, 1, SEEDS, EASY_IDS, known=SEEDS, leakage=leakage)
        asked = [json.loads(line) for line in (tmp_path / "server.jsonl").read_text().splitlines()]
    return kept, ctx.run.manifest["stages"]["round-1/questions"], asked


@pytest.mark.parametrize("generate, kinds", [("[harder]", ["harder"]), ("[similar]", ["similar"]),
                                             ("[harder, similar]", ["harder", "similar"])])
def test_generate_writes_only_the_asked_kinds(tmp_path, tiny_model_dir, leakage, generate, kinds):
    kept, stage, asked = _round_one(tmp_path, tiny_model_dir, leakage, generate)
    seeds = {"harder": set(EASY_IDS), "similar": {"e3", "e4", "e5"}}
    assert len(asked) == stage["requests"] == stage["teacher_requests_sent"] == 3 * len(kinds)
    assert kept and {q.origin.split("-of:")[0] for q in kept} == set(kinds)
    for q in kept:
        kind, seed = q.origin.removesuffix("@round-1").split("-of:")
        assert seed in seeds[kind]
    # The manifest's counts per kind: requests, parsed and kept questions of each.
    assert list(stage["kinds"]) == kinds
    assert all(stage["kinds"][k]["requests"] == 3 and stage["kinds"][k]["parsed"] == 6 for k in kinds)
    assert sum(v["kept"] for v in stage["kinds"].values()) == stage["kept"] == len(kept)
    assert sum(v["parsed"] for v in stage["kinds"].values()) == stage["parsed"]


def test_leakage_report_counts_every_checked_question_per_suite(tmp_path, tiny_model_dir, leakage):
    _, stage, _ = _round_one(tmp_path, tiny_model_dir, leakage, "[harder, similar]")
    rdir = tmp_path / "runs" / "tiny" / "round-1"
    report = json.loads((rdir / "leakage.json").read_text())
    checked = stage["leakage"]["checked"]
    assert report["questions"] == checked > 0 and report["n"] == 13
    assert list(report["suites"]) == stage["leakage"]["suites"] == leakage.suites and len(leakage.suites) == 6
    for row in report["suites"].values():
        assert len(row["histogram"]) == 14 and sum(row["histogram"]) == checked
    assert len(report["per_question"]) == checked
    assert (rdir / "leakage.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_question_copied_from_a_suite_lands_in_the_top_bin(tmp_path, leakage, data_root):
    gsm8k = load_suite("gsm8k", data_root)
    copied = Problem("r1-x-0", gsm8k[5].question, "", "generated", "similar-of:x@round-1")
    words = gsm8k[7].question.split()
    # 8 words of a suite question inside new text: bin 8 in gsm8k, not dropped.
    partial = Problem("r1-x-1", "Zorblat quibbles " + " ".join(words[:8]) + " zorblat?", "", "generated", "")
    unrelated = Problem("r1-x-2", "Zorblat quibbles frobnicate 7 wuggles, how many?", "", "generated", "")
    report = fdd.write_overlap_report(tmp_path, 1, [copied, partial, unrelated], leakage, 1)
    overlap = {row["id"]: row["overlap"] for row in report["per_question"]}
    assert overlap["r1-x-0"]["gsm8k"] == 13 and report["suites"]["gsm8k"]["histogram"][13] >= 1
    assert overlap["r1-x-1"]["gsm8k"] >= 8 > 0 and leakage.check(partial.question) is None
    assert max(overlap["r1-x-2"].values()) <= 3
    assert all(sum(row["histogram"]) == 3 for row in report["suites"].values())


def test_overlap_is_the_longest_shared_word_run_and_matches_the_drop_rule(leakage, data_root):
    small = LeakageIndex([Problem("s-1", "Ann has 3 red apples and 4 green pears today", "7", "s"),
                          Problem("t-1", "Bo sells 5 blue cars", "5", "t")], n=5, suites=["s", "t"])
    texts = ["Today Ann has 3 red kites",         # "ann has 3 red": 4 words in s
             "We saw Bo sells 5 blue cars again",  # all 5 of t: the cap n, shares a 5-gram
             "Bo sells 5 blue cars",               # equal to t's question
             "Nothing here matches at all"]
    assert small.overlap(texts) == {"s": [4, 0, 0, 0], "t": [0, 5, 5, 0]}
    assert [small.check(t) is not None for t in texts] == [False, True, True, False]
    # On real suites: the top bin in some suite is exactly what check() drops.
    questions = [p.question for p in load_suite("svamp", data_root)[:40]]
    questions += [" ".join(q.split()[: len(q.split()) // 2] + ["zorblat"] + q.split()[len(q.split()) // 2:])
                  for q in questions]
    per_suite = leakage.overlap(questions)
    top = [any(v[i] == 13 for v in per_suite.values()) for i in range(len(questions))]
    assert top == [leakage.check(q) is not None for q in questions] and 40 <= sum(top) < 80


@pytest.mark.parametrize("value, needle", [("[]", "distill.generate"), ("[hardest]", "distill.generate"),
                                           ("[harder, harder]", "distill.generate")])
def test_a_bad_generate_value_is_one_line(tmp_path, tiny_model_dir, value, needle):
    recipe = write_tiny_recipe(tmp_path, tiny_model_dir, DEAD)
    one_line_error(toolkit("distill", str(recipe), f"distill.generate={value}", cwd=tmp_path, timeout=120), needle)


def test_the_leakage_index_is_not_held_while_a_round_trains(tmp_path, tiny_model_dir, monkeypatch):
    """Issue 19: the evaluation suites' n-gram index (0.14 GB once used) is built for each question stage and freed
    before that round's training, where the distill process peaks; three rounds through the real run_all."""
    import gc
    import weakref

    from toolkit.pipeline import distill

    built, alive_at_training = [], []
    real_from_suites, real_train = LeakageIndex.from_suites, distill.train_student

    def from_suites(cls, *args, **kwargs):
        index = real_from_suites(*args, **kwargs)
        built.append(weakref.ref(index))
        return index

    def train_student(ctx, folder, rows):
        gc.collect()
        alive_at_training.append((folder, sum(ref() is not None for ref in built)))
        return real_train(ctx, folder, rows)

    monkeypatch.setattr(LeakageIndex, "from_suites", classmethod(from_suites))
    monkeypatch.setattr(distill, "train_student", train_student)
    with FaultTeacher(tmp_path / "server.jsonl") as srv:
        recipe = load_recipe(write_tiny_recipe(tmp_path, tiny_model_dir, srv.base_url),
                             [f"data.root={DATA}", "distill.rounds=3", "distill.new_per_problem=1"])
        distill.run_all(RunContext(recipe, Console(quiet=True)))
    assert [folder for folder, _ in alive_at_training] == ["round-0", "round-1", "round-2"]
    assert [alive for _, alive in alive_at_training] == [0, 0, 0]
    assert len(built) == 2  # one index per question stage


def test_the_question_stage_names_every_suite_the_leakage_check_missed(tmp_path, tiny_model_dir, monkeypatch):
    import shutil

    monkeypatch.delenv("TOOLKIT_DATA", raising=False)
    partial = tmp_path / "data"
    shutil.copytree(DATA / "multiarith", partial / "multiarith")
    index = LeakageIndex.from_suites(partial)
    assert index.suites == ["multiarith"] and "gsm8k" in index.missing
    with FaultTeacher(tmp_path / "server.jsonl") as srv:
        recipe = load_recipe(write_tiny_recipe(tmp_path, tiny_model_dir, srv.base_url),
                             [f"data.root={DATA}", "distill.rounds=2"])
        ctx = RunContext(recipe, Console(quiet=True))
        fdd.new_questions(ctx, 1, SEEDS, EASY_IDS, known=SEEDS, leakage=index)
    leak = ctx.run.manifest["stages"]["round-1/questions"]["leakage"]
    assert leak["missing"] == index.missing and leak["suites"] == ["multiarith"]
