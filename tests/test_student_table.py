"""`toolkit report --compare`: students side by side from run folders laid out as `toolkit distill` writes them."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import one_line_error, toolkit
from toolkit.core.errors import ToolkitError
from toolkit.core.jsonio import atomic_write_jsonl
from toolkit.core.stats import paired
from toolkit.eval.student_table import compare_runs, pareto

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
IDS = [f"p{i}" for i in range(40)]


def _samples(folder: Path, right: set[int], ids: list[str] = IDS) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_jsonl(folder / "samples_heldout.jsonl",
                       [{"id": pid, "output": "…", "strict_match": i in right} for i, pid in enumerate(ids)])


def make_run(root: Path, name: str, student: str, base: set[int], final: set[int], exports: list[dict],
             ids: list[str] = IDS) -> Path:
    """A finished two-round run: base and round-1 per-sample files, two training stages, a deploy.json."""
    run = root / name
    _samples(run / "eval-base", base, ids)
    _samples(run / "round-1" / "eval", final, ids)
    rounds = {"base": {"n": len(ids), "strict_match": len(base) / len(ids)},
              "round-1": {"n": len(ids), "strict_match": len(final) / len(ids), "strict_match_no_calculator": 0.05}}
    stages = {"round-0/train": {"seconds": 100.0, "peak_rss_bytes": 2_000_000_000},
              "round-1/train": {"seconds": 250.5, "peak_rss_bytes": 2_900_000_000},
              "round-1/eval": {"seconds": 60.0, "peak_rss_bytes": 9_000_000_000}}
    manifest = {"kind": "toolkit-run", "recipe": {"name": name, "student": {"model": student}}, "stages": stages,
                "summary": {"rounds": rounds, "student": f"runs/{name}/round-1/student"}}
    (run / "manifest.json").write_text(json.dumps(manifest))
    rows = [{"name": f"gguf-{e['quant']}", "format": "gguf", "n": len(ids), "error": None,
             "paired": {"against": "round-1", "n": len(ids), "difference": -0.025, "ci95": [-0.1, 0.05],
                        "only_model": 0, "only_against": 1, "mcnemar_p": 1.0}, "threads": 2, **e} for e in exports]
    rows.append({"name": "genai-int4", "format": "genai", "quant": "int4", "error": "the builder refused gemma3"})
    (run / "deploy").mkdir()
    (run / "deploy" / "deploy.json").write_text(json.dumps({"rows": rows, "pick": {"chosen": rows[0]["name"]}}))
    return run


def test_two_students_paired_with_their_bases_and_each_other(tmp_path):
    small = make_run(tmp_path, "smol", "pkg:smollm2-135m-instruct", set(range(2)), set(range(10)),
                     [{"quant": "q8_0", "size_bytes": 145e6, "strict_match": 0.225, "decode_tok_s": 120.0,
                       "roofline_ratio": 0.5},
                      {"quant": "q4_k_m", "size_bytes": 100e6, "strict_match": 0.2, "decode_tok_s": 150.0,
                       "roofline_ratio": 0.45}])
    big = make_run(tmp_path, "qwen", "pkg:qwen2.5-coder-0.5b-instruct", set(range(5)), set(range(3, 23)),
                   [{"quant": "q8_0", "size_bytes": 530e6, "strict_match": 0.475, "decode_tok_s": 40.0,
                     "roofline_ratio": 0.6},
                    {"quant": "q4_k_m", "size_bytes": 400e6, "strict_match": 0.15, "decode_tok_s": 45.0,
                     "roofline_ratio": 0.6}])
    out = tmp_path / "cmp"
    r = toolkit("report", "--compare", str(small), str(big), "--out", str(out), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    md = (out / "compare.md").read_text()
    rows = json.loads((out / "compare.json").read_text())
    students = {row["run"]: row for row in rows if row["format"] == "torch"}
    # distilled minus base on the same 40 problems, and qwen minus smol, as core.stats pairs them
    want = paired({p: i < 5 for i, p in enumerate(IDS)}, {p: 3 <= i < 23 for i, p in enumerate(IDS)})
    assert students["qwen"]["vs_base"]["difference"] == want["difference"] == 0.375
    assert students["qwen"]["vs_base"]["mcnemar_p"] == want["mcnemar_p"]
    assert students["qwen"]["vs_first"]["difference"] == (20 - 10) / 40
    assert "vs_first" not in students["smol"]
    assert students["smol"]["train_seconds"] == 350.5  # both training stages, not the eval
    assert students["smol"]["train_peak_rss_bytes"] == 2_900_000_000
    assert "| qwen | pkg:qwen2.5-coder-0.5b-instruct | 40 | 12.5 | 50.0 | +37.5 (" in md
    # the failed genai export has no row; the fronts: speed (smol q4_k_m, smol q8_0, qwen q8_0), size
    # (smol q4_k_m, smol q8_0, qwen q8_0): qwen q4_k_m is beaten in both by smol q8_0
    exports = {(row["run"], row["quant"]): row for row in rows if row["format"] != "torch"}
    assert len(exports) == 4
    assert {k for k, row in exports.items() if row["front_speed"]} == {("smol", "q4_k_m"), ("smol", "q8_0"),
                                                                       ("qwen", "q8_0")}
    assert not exports[("qwen", "q4_k_m")]["front_size"]
    assert exports[("smol", "q8_0")]["picked"]
    assert "| smol | gguf | q8_0 (picked) | 145 | 22.5 | -2.5 (-10.0 to +5.0), p 1 | 120.0 | 2 | 0.50 | sz |" in md
    assert (out / "compare-pareto.png").read_bytes()[:8] == PNG_MAGIC


def test_students_on_different_held_out_problems_are_not_paired(tmp_path):
    a = make_run(tmp_path, "a", "pkg:smollm2-135m-instruct", set(), set(range(4)), [])
    b = make_run(tmp_path, "b", "pkg:smollm2-135m-instruct", set(), set(range(4)), [],
                 ids=[f"q{i}" for i in range(40)])
    compare_runs([a, b], tmp_path / "cmp")
    md = (tmp_path / "cmp" / "compare.md").read_text()
    assert "not paired: held-out ids differ (40 only in b, 40 only in a)" in md
    assert not (tmp_path / "cmp" / "compare-pareto.png").exists()  # no export measured: no plot


def test_pareto_front():
    assert pareto([(1, 0.5), (2, 0.4), (0.5, 0.4), (2, 0.5)]) == [False, False, False, True]
    assert pareto([(1, 0.1), (3, 0.05)]) == [True, True]


def test_bad_runs_are_one_line_errors(tmp_path):
    good = make_run(tmp_path, "good", "pkg:smollm2-135m-instruct", set(), {1}, [])
    empty = tmp_path / "empty"
    empty.mkdir()
    one_line_error(toolkit("report", "--compare", str(good), str(empty), cwd=tmp_path), "no manifest",
                   str(empty))
    hostile = tmp_path / "hostile"
    hostile.mkdir()
    (hostile / "manifest.json").write_text(json.dumps({"summary": ["not", "an", "object"], "stages": 7}))
    one_line_error(toolkit("report", "--compare", str(hostile), cwd=tmp_path), "no final student")
    # the rest in-process: each is a ToolkitError, which the CLI prints as the one line above
    (hostile / "manifest.json").write_text("[" * 10_000)
    with pytest.raises(ToolkitError, match="manifest.json"):
        compare_runs([hostile], tmp_path / "cmp")
    with pytest.raises(ToolkitError, match="named twice"):
        compare_runs([good, good], tmp_path / "cmp")
