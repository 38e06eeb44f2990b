"""The recipe's eval.calculator: validated, and on in the distill loop's round evals and feedback sampler."""
from __future__ import annotations

import json

import pytest

from tests.conftest import write_tiny_recipe

from toolkit.core.errors import RecipeError
from toolkit.data.problems import Problem
from toolkit.core.recipe import load_recipe


def test_calculator_refuses_the_vllm_sampler_in_one_line(tmp_path, tiny_model_dir):
    path = write_tiny_recipe(tmp_path, tiny_model_dir, "http://127.0.0.1:9/v1")
    assert load_recipe(path).eval.calculator is False
    assert load_recipe(path, ["eval.calculator=true"]).eval.calculator is True
    with pytest.raises(RecipeError, match="eval.calculator steers decoding"):
        load_recipe(path, ["eval.calculator=true", "student.sampler=vllm"])


def test_round_evals_decode_with_the_calculator(tmp_path, tiny_model_dir):
    from rich.console import Console

    from toolkit.pipeline.context import RunContext
    from toolkit.pipeline.student import evaluate_student
    from toolkit.training.loading import load_model_and_tokenizer
    from toolkit.core.models import resolve_model

    recipe = load_recipe(write_tiny_recipe(tmp_path, tiny_model_dir, "http://127.0.0.1:9/v1"),
                         ["eval.calculator=true", "eval.max_new_tokens=8"])
    d = RunContext(recipe, Console(quiet=True))
    model_and_tok = load_model_and_tokenizer(resolve_model(str(tiny_model_dir)))
    out = d.run.root / "eval-base" / "results.json"
    out.parent.mkdir(parents=True)
    evaluate_student(d, "eval/base", "eval", model_and_tok, [Problem("p1", "What is 12 * 3?", 36, "test")], out)
    res = json.loads(out.read_text())
    assert res["calculator"] is True and res["config"]["calculator"] is True
    sample = json.loads((out.parent / "samples_heldout.jsonl").read_text().splitlines()[0])
    assert sample["calculator"] is True and sample["calc_forced"] is not None
    with d.student_sampler(model_and_tok, None, "round-1/feedback") as gen:  # FDD feedback's generator
        assert gen.calculator is True
