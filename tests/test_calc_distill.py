"""The recipe's eval.calculator: validated, and on in the distill loop's round evals and feedback sampler;
`both` adds each round eval without the calculator beside it."""
from __future__ import annotations

import json

import pytest

from tests.conftest import toolkit, write_tiny_recipe
from tests.fault_teacher import FaultTeacher
from tests.test_eval_backend import at_release

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
    from toolkit.runtime.loading import load_model_and_tokenizer
    from toolkit.runtime.models import resolve_model

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


# recipes/quickstart.yaml's digest on main before eval.calculator could be "both": a recipe with calculator
# false or true must hash as before, or every existing run folder would refuse to resume.
QUICKSTART_SHA256 = {False: "c97206dd6763d58a4383c2a0b3757a5e8a1d644b658606909c35705a85f1a145",
                     True: "071e859ea324cd463cd2c84a0dc4fe7a563f8d67a0ca198e28bbaf57adb04517"}


def test_calculator_both_is_accepted_and_other_words_refused_in_one_line(tmp_path, tiny_model_dir):
    path = write_tiny_recipe(tmp_path, tiny_model_dir, "http://127.0.0.1:9/v1")
    assert load_recipe(path, ["eval.calculator=both"]).eval.calculator == "both"
    for word in ("maybe", "Both", "2"):
        with pytest.raises(RecipeError) as err:
            load_recipe(path, [f"eval.calculator={word}"])
        assert str(err.value).startswith("command-line override: eval.calculator: must be true, false or both")
        assert "\n" not in str(err.value) and ";" not in str(err.value)  # one error, not one per union member
    with pytest.raises(RecipeError, match="eval.calculator steers decoding"):
        load_recipe(path, ["eval.calculator=both", "student.sampler=vllm"])


def test_recipes_with_calculator_false_or_true_hash_as_before():
    for value in (False, True):
        # at_release: the quickstart's job as it was then; the calculator set after it
        recipe = at_release("quickstart.yaml", f"eval.calculator={str(value).lower()}")
        assert recipe.digest() == QUICKSTART_SHA256[value]
    assert at_release("quickstart.yaml", "eval.calculator=both").digest() not in QUICKSTART_SHA256.values()


def test_feedback_decodes_with_the_calculator_under_both(tmp_path, tiny_model_dir):
    from rich.console import Console

    from toolkit.runtime.models import resolve_model
    from toolkit.pipeline.context import RunContext
    from toolkit.runtime.loading import load_model_and_tokenizer

    recipe = load_recipe(write_tiny_recipe(tmp_path, tiny_model_dir, "http://127.0.0.1:9/v1"), ["eval.calculator=both"])
    d = RunContext(recipe, Console(quiet=True))
    model_and_tok = load_model_and_tokenizer(resolve_model(str(tiny_model_dir)))
    with d.student_sampler(model_and_tok, None, "round-1/feedback") as gen:  # FDD feedback's generator
        assert gen.calculator is True and gen.config["calculator"] is True


def test_distill_with_calculator_both_reports_both_figures(tmp_path, tiny_model_dir):
    with FaultTeacher(tmp_path / "teacher.jsonl") as teacher:  # no faults: instant right answers
        recipe = write_tiny_recipe(tmp_path, tiny_model_dir, teacher.base_url)
        r = toolkit("distill", str(recipe), "eval.calculator=both", cwd=tmp_path)
        assert r.returncode == 0, r.stderr
    run = tmp_path / "runs" / "tiny"
    stages = json.loads((run / "manifest.json").read_text())["stages"]
    rows = {x["model"]: x for x in json.loads((run / "rounds.json").read_text())}
    assert list(rows) == ["base", "round-0"]
    for name, folder in (("base", run / "eval-base"), ("round-0", run / "round-0" / "eval")):
        info = stages["eval/base" if name == "base" else "round-0/eval"]
        with_calc = json.loads((folder / "results.json").read_text())
        plain = json.loads((folder / "no-calculator" / "results.json").read_text())
        assert with_calc["calculator"] is True and plain["calculator"] is False and plain["config"]["calculator"] is False
        # The stage info, and the rounds.json row from it, carry both figures, each from its own eval.
        assert info["strict_match"] == with_calc["results"]["heldout"]["strict_match"] == rows[name]["strict_match"]
        assert (info["strict_match_no_calculator"] == plain["results"]["heldout"]["strict_match"]
                == rows[name]["strict_match_no_calculator"])
        assert info["flexible_extract_no_calculator"] == plain["results"]["heldout"]["flexible_extract"]
        lo, hi = rows[name]["strict_no_calculator_ci95"]
        assert 0 <= lo <= rows[name]["strict_match_no_calculator"] <= hi <= 1
        samples = [json.loads(x) for x in (folder / "no-calculator" / "samples_heldout.jsonl").read_text().splitlines()]
        assert len(samples) == 2 and not any(s["calculator"] for s in samples)
        assert all(json.loads(x)["calculator"] for x in (folder / "samples_heldout.jsonl").read_text().splitlines())
        paired = rows[name]["calculator_paired"]
        assert paired["against"] == "no calculator" and paired["n"] == 2, paired
    md = (run / "rounds.md").read_text()
    assert md.startswith("| model | held-out n | strict match (95% CI) | strict, no calculator (95% CI) |")
    assert "| base | 2 | " in md and "right only with calculator" in md
    # The final table's column, beside the figure with the calculator.
    assert any("strict match (95% CI)" in line and "no calculator" in line for line in r.stdout.splitlines()), r.stdout
    # A resumed finished run redoes nothing, the second eval included (and needs no teacher).
    again = toolkit("distill", str(recipe), "eval.calculator=both", cwd=tmp_path)
    assert again.returncode == 0 and "▶" not in again.stdout, again.stderr
