"""Selecting training and held-out problems from recipes: disjoint, seeded, several suites pooled."""
from __future__ import annotations

from pathlib import Path

from toolkit.pipeline.distill import select_problems
from toolkit.core.recipe import load_recipe

ROOT = Path(__file__).resolve().parents[1]


def test_quickstart_split_is_disjoint_and_seeded(data_root, monkeypatch):
    monkeypatch.setenv("TOOLKIT_DATA", str(data_root))
    recipe = load_recipe(ROOT / "recipes" / "quickstart.yaml")
    train, heldout = select_problems(recipe)
    assert len(train) == recipe.data.train_size and len(heldout) == recipe.data.heldout_size
    assert not {p.id for p in train} & {p.id for p in heldout}
    again, _ = select_problems(recipe)
    assert [p.id for p in again] == [p.id for p in train]
    other, _ = select_problems(load_recipe(ROOT / "recipes" / "quickstart.yaml", ["seed=1"]))
    assert [p.id for p in other] != [p.id for p in train]


def test_pooled_suites_drop_repeated_questions(data_root, monkeypatch):
    monkeypatch.setenv("TOOLKIT_DATA", str(data_root))
    recipe = load_recipe(ROOT / "recipes" / "fdd-cpu-easy.yaml", ["data.train_size=1000", "data.heldout_size=10"])
    train, heldout = select_problems(recipe)
    pool = train + heldout
    assert {p.source for p in pool} == {"multiarith", "addsub", "singleeq"}
    assert len(pool) == 1010
    # 600 + 395 + 508 = 1503 before the exact and near-duplicate pass; 1246 distinct questions remain.
    from toolkit.pipeline.distill import _load_source

    assert len(_load_source(recipe.data.train, recipe)) == 1246
    assert len({" ".join(p.question.lower().split()) for p in pool}) == len(pool)
