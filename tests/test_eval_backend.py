"""eval.backend: the round evals and FDD feedback decode the student with torch, or with its onnxruntime-genai
fp32 export (issues 17 and 19); the recipe digest of runs made before the field existed is unchanged."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import DATA, build_export_model, toolkit, write_tiny_recipe
from tests.fault_teacher import FaultTeacher
from toolkit.core.errors import RecipeError
from toolkit.core.recipe import load_recipe
from toolkit.data.problems import Problem

RECIPES = Path(__file__).resolve().parent.parent / "recipes"
# The digests of these recipes at release 09bea21, before eval.backend existed: a recipe that leaves it at its
# default must hash the same (Recipe.digest's LATE_FIELDS), or those runs' folders would refuse to resume.
BEFORE_BACKEND = {"quickstart.yaml": "705bd528c2cead048e6189260e255ff4cfd8ae0d5bd2e061a220d840649c32ca",
                  "fdd-cpu-easy.yaml": "4831f5bff1c2e3a93d934d449dddca6c729b81653088566dd624894595c2c4d6"}
# The overrides that give each recipe back the values it had at that release (the quickstart's evals have since
# gone from calculator both to true, and its job from 30 problems, 3 epochs and 128 eval tokens to 20, 2 and 96),
# so that only the hashing is under test, not later edits of the recipes.
AT_RELEASE = {"quickstart.yaml": ["eval.calculator=both", "data.train_size=30", "train.epochs=3",
                                  "eval.max_new_tokens=128"], "fdd-cpu-easy.yaml": []}


def at_release(name: str, *overrides: str):
    return load_recipe(RECIPES / name, [*AT_RELEASE[name], *overrides])

# Two FDD rounds (round 1's feedback samples the round-0 student greedily), then a self-guided iteration
# (sampling the round-1 student from its genai export in both runs: self_guided.backend auto on a CPU), and
# eval.calculator both (each eval decodes with the calculator, then again without it), against the fault
# teacher without faults.
# Batches of 8: genai never pads (a left-padded genai row decoded differently from the same prompt alone, which
# this test caught at batch 2 before eval/genai_backend.py batched only prompts of equal length).
TWO_ROUNDS = [f"data.root={DATA}", "distill.rounds=2", "distill.new_per_problem=1", "distill.label_solves=2",
              "distill.vote_min=1", "distill.feedback_samples=1", "eval.calculator=both", "eval.max_new_tokens=12",
              "eval.batch_size=8", "distill.self_guided.iterations=1", "distill.self_guided.samples=1"]
EVALS = {"eval/base": "eval-base", "round-0/eval": "round-0/eval", "round-1/eval": "round-1/eval",
         "iter-1/eval": "iter-1/eval"}


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_recipes_without_the_backend_hash_as_before_and_genai_differently():
    for name, digest in BEFORE_BACKEND.items():
        recipe = at_release(name)
        assert recipe.eval.backend == "torch" and recipe.digest() == digest
        assert at_release(name, "eval.backend=torch").digest() == digest  # the default, written out
        others = {at_release(name, f"eval.backend={b}").digest() for b in ("genai", "auto")}
        assert len(others) == 2 and digest not in others


def test_genai_with_the_vllm_sampler_is_refused_in_one_line(tmp_path, tiny_model_dir):
    path = write_tiny_recipe(tmp_path, tiny_model_dir, "http://127.0.0.1:9/v1")
    with pytest.raises(RecipeError, match="eval.backend genai decodes the student in this process") as err:
        load_recipe(path, ["eval.backend=genai", "student.sampler=vllm"])
    assert "\n" not in str(err.value)
    with pytest.raises(RecipeError, match="eval.backend: must be one of|eval.backend: Input should be"):
        load_recipe(path, ["eval.backend=onnx"])


def _distill(tmp_path: Path, student: Path, backend: str) -> Path:
    tmp_path.mkdir()
    with FaultTeacher(tmp_path / "teacher.jsonl") as teacher:  # no faults: instant right answers
        recipe = write_tiny_recipe(tmp_path, student, teacher.base_url)
        r = toolkit("distill", str(recipe), *TWO_ROUNDS, f"eval.backend={backend}", cwd=tmp_path)
        assert r.returncode == 0, r.stderr
    return tmp_path / "runs" / "tiny"


def test_round_evals_and_feedback_decode_the_genai_export_as_torch_does(tmp_path):
    # Weights large enough (std 0.3) that greedy replies vary: the default tiny student answers only newlines.
    (tmp_path / "student").mkdir()
    student = build_export_model(tmp_path / "student", "llama")
    genai = _distill(tmp_path / "genai", student, "genai")
    torch = _distill(tmp_path / "torch", student, "torch")
    g_stages = json.loads((genai / "manifest.json").read_text())["stages"]
    t_stages = json.loads((torch / "manifest.json").read_text())["stages"]

    # Each student is exported once, into its own folder: round 0's serves its eval and round 1's feedback;
    # round 1's its eval and the self-guided iteration's samples.
    exports = {"eval/base": genai / "eval-base" / "sampler-genai-fp32",
               "round-0/eval": genai / "round-0" / "sampler-genai-fp32",
               "round-1/feedback": genai / "round-0" / "sampler-genai-fp32",
               "round-1/eval": genai / "round-1" / "sampler-genai-fp32",
               "iter-1/eval": genai / "iter-1" / "sampler-genai-fp32"}
    for stage, folder in exports.items():
        info = g_stages[stage]
        assert info["backend"] == "genai" and Path(info["sampler_export"]) == folder, (stage, info)
        export = json.loads((folder / "export.json").read_text())
        assert export["format"] == "genai" and export["quant"] == "fp32"
        if folder.parent.name != "eval-base":
            assert export["source"]["ref"] == str(folder.parent / "student")
        assert t_stages[stage]["backend"] == "torch" and "sampler_export" not in t_stages[stage]
    assert g_stages["iter-1/sample"]["backend"] == t_stages["iter-1/sample"]["backend"] == "genai"
    assert sorted(p.parent.name for p in genai.glob("*/sampler-*")) == ["eval-base", "iter-1", "round-0", "round-1"]
    assert [p.parent.name for p in torch.glob("*/sampler-*")] == ["round-1"]  # the iteration's samples only
    assert _rows(genai / "iter-1" / "train.jsonl") == _rows(torch / "iter-1" / "train.jsonl")

    # fp32 both: the same greedy answers, so the same feedback and the same scores, with and without the
    # calculator (`both` flips it off on the genai generator for the second pass).
    assert _rows(genai / "round-1" / "feedback.jsonl") == _rows(torch / "round-1" / "feedback.jsonl")
    for stage, folder in EVALS.items():
        for sub in ("", "no-calculator/"):
            g = json.loads((genai / folder / sub / "results.json").read_text())
            t = json.loads((torch / folder / sub / "results.json").read_text())
            assert g["backend"] == "genai" and t["backend"] == "torch"
            assert g["calculator"] is t["calculator"] is (sub == "")
            texts = [[x["output"] for x in _rows(run / folder / sub / "samples_heldout.jsonl")] for run in (genai, torch)]
            assert texts[0] == texts[1] and all(t.strip() for t in texts[0]), (stage, sub, texts)
        for key in ("strict_match", "strict_match_no_calculator", "flexible_extract"):
            assert g_stages[stage][key] == t_stages[stage][key], (stage, key)

    # A resumed finished run redoes nothing and exports nothing again (and needs no teacher).
    again = toolkit("distill", str(tmp_path / "genai" / "tiny.yaml"), *TWO_ROUNDS, "eval.backend=genai",
                    cwd=tmp_path / "genai")
    assert again.returncode == 0 and "▶" not in again.stdout, again.stderr


def test_auto_decodes_with_torch_when_the_export_fails_and_says_why(tmp_path, tiny_gpt2_dir):
    """`toolkit export` refuses GPT-2: under auto (genai on this CPU machine) the base eval notes the
    failed export and decodes with torch."""
    from rich.console import Console

    from toolkit.pipeline.context import RunContext
    from toolkit.pipeline.student import evaluate_student

    recipe = load_recipe(write_tiny_recipe(tmp_path, tiny_gpt2_dir, "http://127.0.0.1:9/v1"), ["eval.backend=auto"])
    ctx = RunContext(recipe, Console(quiet=True))
    out = ctx.run.root / "eval-base" / "results.json"
    out.parent.mkdir(parents=True)
    info = evaluate_student(ctx, "eval/base", "eval", ctx.base_student, [Problem("p1", "What is 2 + 3?", 5, "test")],
                            out)
    assert info["backend"] == "torch" and json.loads(out.read_text())["backend"] == "torch"
    assert info["sampler_note"].startswith("auto: genai fp32 export failed, sampled with torch (")
