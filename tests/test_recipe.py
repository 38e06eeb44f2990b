"""Recipe schema: every shipped recipe validates; bad keys, types and values give one line naming them."""
from __future__ import annotations

from pathlib import Path

import pytest

from toolkit.core.errors import RecipeError
from toolkit.core.recipe import load_recipe, parse_override

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "recipes").glob("*.yaml"))

MINIMAL = """\
name: t
data:
  train: {suite: multiarith}
teacher:
  model: pkg:smollm2-135m-instruct
student:
  model: pkg:smollm2-135m-instruct
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "r.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("path", RECIPES, ids=[p.name for p in RECIPES])
def test_shipped_recipes_validate(path):
    recipe = load_recipe(path)
    assert recipe.name
    assert recipe.base_dir == path.parent


def test_quickstart_is_shipped():
    assert (ROOT / "recipes" / "quickstart.yaml") in RECIPES


def test_defaults_and_overrides(tmp_path):
    r = load_recipe(write(tmp_path, MINIMAL), ["train.lr=3e-4", "data.train_size=7", "teacher.backend=openai",
                                                "teacher.base_url=http://127.0.0.1:9/v1"])
    assert r.train.lr == pytest.approx(3e-4)
    assert r.data.train_size == 7
    assert r.teacher.backend == "openai"
    assert r.distill.paths_per_problem == 4  # default


def test_unknown_key_names_key_and_line(tmp_path):
    text = MINIMAL + "train:\n  epochs: 2\n  epoch: 3\n"
    with pytest.raises(RecipeError) as e:
        load_recipe(write(tmp_path, text))
    assert str(e.value) == f"{tmp_path / 'r.yaml'}:10: train.epoch: unknown key"


def test_wrong_type_names_key_line_and_value(tmp_path):
    text = MINIMAL + "train:\n  lr: fast\n"
    with pytest.raises(RecipeError) as e:
        load_recipe(write(tmp_path, text))
    msg = str(e.value)
    assert msg.startswith(f"{tmp_path / 'r.yaml'}:9: train.lr:")
    assert "'fast'" in msg


def test_impossible_values(tmp_path):
    for override, key in [("distill.paths_per_problem=0", "distill.paths_per_problem"),
                          ("teacher.temperature=5", "teacher.temperature"),
                          ("train.warmup_ratio=1.5", "train.warmup_ratio")]:
        with pytest.raises(RecipeError, match=f"command-line override: {key}:"):
            load_recipe(write(tmp_path, MINIMAL), [override])


def test_missing_section_and_data_source(tmp_path):
    with pytest.raises(RecipeError, match=r"student: required key is missing"):
        load_recipe(write(tmp_path, MINIMAL.replace("student:\n  model: pkg:smollm2-135m-instruct\n", "")))
    bad = MINIMAL.replace("{suite: multiarith}", "{suite: multiarith, path: x.jsonl}")
    with pytest.raises(RecipeError, match=r":3: data.train: give exactly one of suite, path or hf"):
        load_recipe(write(tmp_path, bad))


def test_openai_backend_needs_url(tmp_path):
    with pytest.raises(RecipeError, match="backend 'openai' needs base_url"):
        load_recipe(write(tmp_path, MINIMAL), ["teacher.backend=openai"])


def test_slots_need_llama_server(tmp_path):
    # The default llama_cpp.server would ignore them: one request at a time whatever the recipe says.
    with pytest.raises(RecipeError, match="slots > 1 needs backend 'llama.cpp' with server 'llama-server'"):
        load_recipe(write(tmp_path, MINIMAL), ["teacher.slots=4"])
    with pytest.raises(RecipeError, match="slots > 1"):
        load_recipe(write(tmp_path, MINIMAL), ["teacher.slots=2", "teacher.backend=openai",
                                               "teacher.base_url=http://127.0.0.1:8000/v1"])
    recipe = load_recipe(write(tmp_path, MINIMAL), ["teacher.slots=4", "teacher.server=llama-server"])
    assert recipe.teacher.slots == 4


def test_malformed_yaml_and_missing_file(tmp_path):
    with pytest.raises(RecipeError, match=r"r.yaml:2: not valid YAML"):
        load_recipe(write(tmp_path, "name: t\n  data: [\n"))
    with pytest.raises(RecipeError, match="recipe file not found"):
        load_recipe(tmp_path / "nope.yaml")
    with pytest.raises(RecipeError, match="a recipe is a YAML mapping"):
        load_recipe(write(tmp_path, "- a\n- b\n"))


def test_override_syntax():
    assert parse_override("a.b=1") == (["a", "b"], 1)
    assert parse_override("a=hello world") == (["a"], "hello world")
    with pytest.raises(RecipeError, match="is not key.path=value"):
        parse_override("train.lr")


def test_digest_changes_with_content(tmp_path):
    a = load_recipe(write(tmp_path, MINIMAL))
    b = load_recipe(write(tmp_path, MINIMAL), ["seed=1"])
    assert a.digest() != b.digest()
    assert a.digest() == load_recipe(write(tmp_path, MINIMAL)).digest()


def test_a_recipe_extends_a_run_only_by_more_rounds(tmp_path):
    """A finished run goes on under a recipe that only raises distill.rounds; any other change, fewer rounds,
    or a run's recipe that is not one (it comes from a manifest, which may come from elsewhere) is refused."""
    path = write(tmp_path, MINIMAL)
    two = load_recipe(path, ["distill.rounds=2"]).model_dump(mode="json")
    assert load_recipe(path, ["distill.rounds=4"]).extends(two) == "distill.rounds 2 -> 4"
    assert load_recipe(path, ["distill.rounds=2"]).extends(two) is None  # the same recipe: nothing to extend
    assert load_recipe(path, ["distill.rounds=1"]).extends(two) is None
    assert load_recipe(path, ["distill.rounds=4", "seed=1"]).extends(two) is None
    assert load_recipe(path, ["distill.rounds=4", "distill.paths_per_problem=6"]).extends(two) is None
    # a run made before a late field existed (absent from its recipe) still extends while the field is default
    old = {**two, "distill": {k: v for k, v in two["distill"].items() if k != "originals_pick"}}
    assert load_recipe(path, ["distill.rounds=3"]).extends(old) == "distill.rounds 2 -> 3"
    for hostile in ({}, {"distill": []}, {**two, "distill": {**two["distill"], "rounds": "x"}},
                    {**two, "surprise": 1}, {**two, "distill": {**two["distill"], "rounds": 10 ** 100}}):
        assert load_recipe(path, ["distill.rounds=4"]).extends(hostile) is None
