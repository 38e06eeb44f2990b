"""The recipe reference generated from the schema: docs/recipe.md up to date, every field described,
`toolkit recipe explain`, and deploy.bench's type against `toolkit bench`'s config."""
from __future__ import annotations

from tests.conftest import ROOT
from toolkit.cli import main
from toolkit.core.recipe import DeployBenchConfig
from toolkit.core.recipe_doc import INTERNAL, fields, markdown
from toolkit.eval.config import BenchConfig


def test_docs_recipe_md_is_up_to_date():
    on_disk = (ROOT / "docs" / "recipe.md").read_text()
    assert on_disk == markdown(), "docs/recipe.md is out of date: run `toolkit recipe doc > docs/recipe.md`"


def test_every_field_has_a_description():
    docs = fields()
    assert len(docs) > 100 and not [d.path for d in docs if not (d.info.description or "").strip()]
    assert {"deploy.max_accuracy_drop", "data.train.question_field", "teacher.endpoints.weight",
            "deploy.bench.gen_tokens", "distill.self_guided.alpha"} <= {d.path for d in docs}
    assert not [d.path for d in docs if (d.owner, d.name) in INTERNAL]


def test_explain_prints_meaning_unit_type_and_default(capsys):
    assert main(["recipe", "explain", "deploy.max_accuracy_drop"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("deploy.max_accuracy_drop  (DeployConfig.max_accuracy_drop)\n")
    assert "points of strict accuracy" in out and "  type:    number, > 0\n" in out and "  default: 5.0\n" in out
    assert main(["recipe", "explain", "deploy"]) == 0  # a section: its own entry, then its fields
    out = capsys.readouterr().out
    assert "  max_accuracy_drop  number, > 0; default 5.0\n" in out and "type:    section (DeployConfig) or null" in out


def test_a_bad_field_is_one_line_with_close_matches(capsys):
    assert main(["recipe", "explain", "deploy.max_acuracy_drop"]) == 2
    err = capsys.readouterr().err
    assert err == "error: no recipe field 'deploy.max_acuracy_drop'; did you mean deploy.max_accuracy_drop?\n"
    assert main(["recipe", "explain", "max_accuracy_drop"]) == 2  # a bare name: the full path is suggested
    assert "did you mean deploy.max_accuracy_drop?" in capsys.readouterr().err
    assert main(["recipe", "explain", "zzzz"]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_deploy_bench_takes_bench_settings_with_their_defaults():
    """deploy.bench is `toolkit bench`'s config without remote, field for field and default for default, so a
    recipe's bench runs as `toolkit bench` with the same settings would."""
    ours = {n for n in DeployBenchConfig.model_fields if n != "remote"}
    assert ours == set(BenchConfig.model_fields) - {"remote"}
    assert BenchConfig(**DeployBenchConfig().model_dump()) == BenchConfig()
    assert DeployBenchConfig(threads=2).threads == [2] and DeployBenchConfig(threads="1,2").threads == [1, 2]
