"""Recipe fuzzing: malformed YAML, wrong types, unknown keys and impossible values give one clear line."""
from __future__ import annotations

import copy
import math

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import toolkit
from toolkit.cli import main
from toolkit.core.errors import RecipeError
from toolkit.core.recipe import Recipe, load_recipe

VALID = {
    "name": "fuzz", "seed": 0,
    "data": {"train": {"path": "x.jsonl"}, "train_size": 8, "heldout_size": 4},
    "teacher": {"model": "m", "backend": "openai", "base_url": "http://127.0.0.1:8000/v1", "concurrency": 2},
    "student": {"model": "s"},
    "distill": {"rounds": 2, "paths_per_problem": 2, "vote_fraction": 0.5, "feedback_threshold": 0.5},
    "train": {"max_steps": 2, "lr": 1e-4},
    "eval": {"max_new_tokens": 16},
}
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _paths(node, prefix=()):
    if isinstance(node, dict):
        for k, v in node.items():
            yield prefix + (k,)
            yield from _paths(v, prefix + (k,))


PATHS = list(_paths(VALID))
scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True),
                    st.text(max_size=12), st.sampled_from(["-1", "1e309", ".nan", "yes", "~", "[]", "{}"]))
values = st.recursive(scalars, lambda kids: st.one_of(st.lists(kids, max_size=3),
                                                      st.dictionaries(st.text(max_size=6), kids, max_size=3)),
                      max_leaves=6)


def _check_one_line(path) -> Recipe | None:
    """Load a recipe: a valid Recipe or one RecipeError line; anything else fails the test."""
    try:
        return load_recipe(path)
    except RecipeError as exc:
        text = str(exc)
        assert text and "\n" not in text and "Traceback" not in text, text
        return None


@FUZZ
@given(data=st.binary(max_size=300))
def test_arbitrary_bytes(tmp_path, data):
    path = tmp_path / "r.yaml"
    path.write_bytes(data)
    _check_one_line(path)


@FUZZ
@given(text=st.text(alphabet=st.sampled_from(list("ab:- \n\t[]{}&*!|>'\"#%@`,?0.")), max_size=120))
def test_yaml_syntax_soup(tmp_path, text):
    path = tmp_path / "r.yaml"
    path.write_text(text)
    _check_one_line(path)


@FUZZ
@given(where=st.sampled_from(PATHS), value=values)
def test_wrong_types_and_values_at_every_key(tmp_path, where, value):
    data = copy.deepcopy(VALID)
    node = data
    for k in where[:-1]:
        node = node[k]
    node[where[-1]] = value
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True))
    recipe = _check_one_line(path)
    if recipe is not None:  # accepted: then it holds only finite numbers
        for v in recipe.model_dump().values():
            assert not (isinstance(v, float) and not math.isfinite(v))


@FUZZ
@given(section=st.sampled_from(["", "data", "teacher", "student", "distill", "train", "eval", "data.train"]),
       key=st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=10), value=scalars)
def test_unknown_keys_are_named_with_their_line(tmp_path, section, key, value):
    data = copy.deepcopy(VALID)
    node = data
    for k in filter(None, section.split(".")):
        node = node[k]
    if key in node or (section == "" and key in Recipe.model_fields) or \
            (section and key in _model_fields(section)):
        return  # a real key, not an unknown one
    node[key] = value
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    full = ".".join(filter(None, [section, key]))
    assert f"{full}: unknown key" in str(err.value) or "API keys are not read from recipes" in str(err.value)
    assert str(err.value).startswith(f"{path}:") and "\n" not in str(err.value)


def _model_fields(section: str) -> set[str]:
    from toolkit.core import recipe as r

    cls = {"data": r.DataConfig, "teacher": r.TeacherConfig, "student": r.StudentConfig, "distill": r.DistillConfig,
           "train": r.TrainConfig, "eval": r.RoundEvalConfig, "data.train": r.DataSource}[section]
    return set(cls.model_fields)


@FUZZ
@given(key=st.text(alphabet="abcdefghijklmnopqrstuvwxyz._=", max_size=20), value=st.text(max_size=12))
def test_command_line_overrides(tmp_path, key, value):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(VALID))
    try:
        load_recipe(path, [f"{key}={value}"])
    except RecipeError as exc:
        assert "\n" not in str(exc)


@pytest.mark.parametrize("override, names", [
    ("distill.rounds=-1", "distill.rounds: Input should be greater than or equal to 1"),
    ("distill.rounds=0", "distill.rounds"),
    ("distill.vote_fraction=1.5", "distill.vote_fraction: Input should be less than or equal to 1"),
    ("distill.feedback_threshold=2", "distill.feedback_threshold"),
    ("distill.dedup_threshold=-0.1", "distill.dedup_threshold"),
    ("distill.vote_min=9", "vote_min 9 can never be reached with label_solves"),
    ("teacher.temperature=-1", "teacher.temperature"),
    ("train.lr=.inf", "train.lr"),
    ("train.lr=.nan", "train.lr"),
    ("train.epochs=0", "train.epochs"),
    ("data.train_size=0", "data.train_size"),
    ("teacher.timeout_s=0", "teacher.timeout_s"),
    ("teacher.max_retries=-2", "teacher.max_retries"),
    ("name=../escape", "name: String should match pattern"),
    ("seed=[1, 2]", "seed: Input should be a valid integer"),
    ("train=3", "train: Input should be a valid dictionary"),
])
def test_impossible_values_name_the_key(tmp_path, override, names):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(VALID))
    with pytest.raises(RecipeError) as err:
        load_recipe(path, [override])
    assert names in str(err.value) and "\n" not in str(err.value), str(err.value)


@pytest.mark.parametrize("text", [
    "name: [unclosed\n", "name: fuzz\n\tdata: 1\n", "- a\n- b\n", "", "? [a, b]\n: 1\n",
    "a: &x [*x]\n", "name: fuzz\nname: again\n",
])
def test_cli_gives_one_line_and_exit_2(tmp_path, capsys, text):
    path = tmp_path / "r.yaml"
    path.write_text(text)
    assert main(["distill", str(path), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err


def test_cli_subprocess_no_traceback(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_bytes(b"name: \xff\xfe\nteacher: [")
    r = toolkit("distill", str(path), "distill.rounds=-3", cwd=tmp_path, timeout=120)
    assert r.returncode == 2 and r.stderr.startswith("error: ") and r.stderr.count("\n") == 1, r.stderr
