"""SIKeD end to end: three strategies and two self-guided iterations against a real llama.cpp teacher."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import DATA, toolkit, write_tiny_recipe

SIKED = [f"data.root={DATA}", "distill.strategies=[cot, l2m, pot]", "distill.paths_per_problem=1",
         "teacher.max_tokens=64", "distill.self_guided.iterations=2", "distill.self_guided.samples=2",
         "distill.self_guided.mixing=alpha_schedule", "distill.self_guided.alpha=[0.9, 0.5]"]


@pytest.fixture(scope="module")
def one_thread_teacher(smollm2_gguf, tmp_path_factory):
    """A real llama.cpp server with SmolLM2-135M on 127.0.0.1, one thread: on a shared 2-core machine a
    spinning second thread makes every reply many times slower (DESIGN.md, contention trap)."""
    from toolkit.runtime.llama_server import LlamaServer

    with LlamaServer(smollm2_gguf, tmp_path_factory.mktemp("teacher") / "server.log", n_ctx=1024,
                     threads=1) as srv:
        yield srv


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.slow
def test_three_strategies_and_two_self_guided_iterations(tmp_path, tiny_model_dir, one_thread_teacher):
    recipe = write_tiny_recipe(tmp_path, tiny_model_dir, one_thread_teacher.base_url)
    r = toolkit("distill", str(recipe), *SIKED, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    run = tmp_path / "runs" / "tiny"
    manifest = json.loads((run / "manifest.json").read_text())
    stages = manifest["stages"]
    iters = [f"iter-{t}/{s}" for t in (1, 2) for s in ("sample", "train", "eval")]
    assert list(stages) == ["data", "round-0/rationales", "eval/base", "round-0/train", "round-0/eval", *iters]

    # Round 0: one teacher request per problem and strategy, each parsed by its own strategy's parser.
    rat = stages["round-0/rationales"]
    assert rat["requested"] == 6 * 3 and set(rat["by_strategy"]) == {"cot", "l2m", "pot"}
    assert all(v["requested"] == 6 for v in rat["by_strategy"].values())
    assert rat["kept"] == sum(v["kept"] for v in rat["by_strategy"].values())
    train0 = _rows(run / "round-0" / "train.jsonl")
    assert train0 and all(t["completion"].startswith(f"[{t['strategy']}]\n") for t in train0)
    assert all("strategy tag" in t["messages"][0]["content"] for t in train0)

    # Each iteration: the previous student samples k=2 per training problem, then the mix retrains it.
    problems = 6
    teacher_rows = train0
    for t, alpha in ((1, 0.9), (2, 0.5)):
        s = stages[f"iter-{t}/sample"]
        # backend auto on a CPU: each iteration samples from a genai fp32 export of the student before it,
        # made into that student's own folder.
        assert s["samples"] == 2 * problems and s["backend"] == "genai" and s["alpha"] == alpha
        before = run / ("round-0" if t == 1 else f"iter-{t - 1}") / "student"
        export = json.loads((before.parent / "sampler-genai-fp32" / "export.json").read_text())
        assert export["format"] == "genai" and export["quant"] == "fp32" and export["passed"]
        assert export["source"]["ref"] == str(before)
        assert sum(v["chosen"] for v in s["strategies"].values()) <= s["samples"]
        samples = _rows(run / f"iter-{t}" / "samples.jsonl")
        assert len(samples) == s["samples"] and sum(x["correct"] for x in samples) == s["correct"]
        own = _rows(run / f"iter-{t}" / "self_train.jsonl")
        mixed = _rows(run / f"iter-{t}" / "train.jsonl")
        assert s["self_rows"] == len(own) and s["rows"] == len(mixed) == s["teacher_rows"] + len(own)
        assert all(m in teacher_rows for m in mixed[: s["teacher_rows"]])
        if not own:  # a tiny random student solves nothing: the teacher data is used whole
            assert mixed == teacher_rows
        assert stages[f"iter-{t}/train"]["examples"] == len(mixed)
        assert (run / f"iter-{t}" / "student" / "config.json").is_file()
        assert set(stages[f"iter-{t}/eval"]["strategies"]) == {"cot", "l2m", "pot"}

    # Per-strategy statistics land in the report; the summary names the last iteration's student.
    rounds = json.loads((run / "rounds.json").read_text())
    assert [x["model"] for x in rounds] == ["base", "round-0", "iter-1", "iter-2"]
    per = json.loads((run / "strategies.json").read_text())
    assert {(p["model"], p["strategy"]) for p in per} >= {("iter-2", s) for s in ("cot", "l2m", "pot")}
    assert all(p["self_samples"] is not None for p in per if p["model"].startswith("iter-"))
    assert "| iter-2 | pot |" in (run / "rounds.md").read_text()
    assert manifest["summary"]["student"].endswith("iter-2/student")

    # The CLI evaluates the final student with its own choice and forced to PoT (programs run in the sandbox).
    student = manifest["summary"]["student"]
    for strategy in ("auto", "pot"):
        out = tmp_path / f"eval-{strategy}" / "results.json"
        e = toolkit("eval", student, "--suite", "multiarith", "--limit", "3", "--strategy", strategy,
                    "--data-root", str(DATA), "--max-new-tokens", "16", "--threads", "1", "--out", str(out),
                    cwd=tmp_path)
        assert e.returncode == 0, e.stderr
        res = json.loads(out.read_text())
        assert res["strategy"] == strategy and res["results"]["multiarith"]["n"] == 3
        assert sum(v["chosen"] for v in res["results"]["multiarith"]["strategies"].values()) == 3
        samples = _rows(out.parent / "samples_multiarith.jsonl")
        if strategy == "pot":
            assert all(x["prompt"][-1] == {"role": "assistant", "content": "[pot]\n"} for x in samples)
            assert all(x["strategy"] == "pot" and x["strict"] == x["flexible"] for x in samples)


@pytest.mark.slow
def test_self_guided_backend_torch_samples_the_trained_folder(tmp_path, tiny_model_dir, one_thread_teacher):
    recipe = write_tiny_recipe(tmp_path, tiny_model_dir, one_thread_teacher.base_url)
    r = toolkit("distill", str(recipe), *SIKED, "distill.self_guided.iterations=1", "distill.self_guided.alpha=[0.9]",
                "distill.self_guided.backend=torch", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    run = tmp_path / "runs" / "tiny"
    s = json.loads((run / "manifest.json").read_text())["stages"]["iter-1/sample"]
    assert s["backend"] == "torch" and s["samples"] == 2 * 6 and "sampler_note" not in s
    assert not list(run.glob("**/sampler-*")) and len(_rows(run / "iter-1" / "samples.jsonl")) == 12


@pytest.mark.slow
def test_auto_backend_falls_back_to_torch_for_a_student_genai_cannot_export(tmp_path, tiny_gpt2_dir,
                                                                            one_thread_teacher):
    """`toolkit export` refuses GPT-2: `auto` notes the failed genai export and samples with torch."""
    recipe = write_tiny_recipe(tmp_path, tiny_gpt2_dir, one_thread_teacher.base_url)
    r = toolkit("distill", str(recipe), *SIKED, "distill.self_guided.iterations=1", "distill.self_guided.alpha=[0.9]",
                cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    s = json.loads((tmp_path / "runs" / "tiny" / "manifest.json").read_text())["stages"]["iter-1/sample"]
    assert s["backend"] == "torch" and s["samples"] == 2 * 6
    assert s["sampler_note"].startswith("auto: genai fp32 export failed, sampled with torch (")
