"""`toolkit report` from a real bench JSON, real eval results and a committed distillation run folder."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import ROOT, toolkit
from toolkit.eval.report import collect, identity, merge

RUN = ROOT / "bench" / "results" / "fdd-cpu-easy"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def results_dir(smollm2_gguf, data_root, tmp_path_factory) -> Path:
    """A real bench row and real eval results (2 MultiArith problems) of the packaged SmolLM2 GGUF."""
    d = tmp_path_factory.mktemp("results")
    bench = toolkit("bench", "pkg:smollm2-135m-instruct", "--prompt-tokens", "8", "--gen-tokens", "4", "--reps", "2",
                    "--threads", "1", "--allow-busy", "--out", str(d / "bench.json"), cwd=d)
    assert bench.returncode == 0, bench.stderr
    ev = toolkit("eval", "pkg:smollm2-135m-instruct", "--suite", "multiarith", "--limit", "2", "--max-new-tokens", "8",
                 "--threads", "1", "--data-root", str(data_root), "--out", str(d / "eval" / "results.json"), cwd=d)
    assert ev.returncode == 0, ev.stderr
    return d


def test_report_of_results_and_a_run_folder(results_dir, tmp_path):
    proc = toolkit("report", str(results_dir), str(RUN), "--out", str(tmp_path / "report"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "report"
    md = (out / "report.md").read_text()
    for png in ("accuracy_vs_latency.png", "accuracy_vs_size.png", "rounds-fdd-cpu-easy.png"):
        assert (out / png).read_bytes()[:8] == PNG_MAGIC and (out / png).stat().st_size > 5000
        assert f"({png})" in md
    bench = json.loads((results_dir / "bench.json").read_text())
    ev = json.loads((results_dir / "eval" / "results.json").read_text())["results"]["multiarith"]
    # one row joins the eval and the bench of the same model × format × quant
    (row,) = [line for line in md.splitlines() if line.startswith("| pkg:smollm2-135m-instruct | gguf | q4_1 |")
              and "multiarith (2)" in line]
    assert f"{ev['strict_match']:.1%}" in row and f"{bench['decode_tok_s']['mean']:.1f} ±" in row
    assert f"{bench['roofline']['ratio']:.0%}" in row
    # the run's per-round table, as committed
    assert "## Distillation rounds: fdd-cpu-easy" in md and "| round-0 | 80 | 13.8% (7.9%–23.0%)" in md


def test_exports_and_round_evals_are_named_by_their_student(tmp_path):
    run = tmp_path / "runs" / "exp"
    (run / "round-1" / "student").mkdir(parents=True)
    (run / "manifest.json").write_text("{}")
    export = run / "round-1" / "exports" / "gguf-q8_0"
    export.mkdir(parents=True)
    (export / "export.json").write_text(json.dumps({"source": str(run / "round-1" / "student"),
                                                    "format": "gguf", "quant": "q8_0"}))
    assert identity(str(export), tmp_path) == "exp/round-1"
    assert identity(str(run / "round-1" / "eval"), tmp_path) == "exp/round-1"
    assert identity(str(run / "eval-base"), tmp_path) == "exp/base"
    assert identity("pkg:smollm2-135m-instruct", tmp_path) == "pkg:smollm2-135m-instruct"
    # eval results inside the run folder are pooled over suites and keyed by the round
    (run / "round-1" / "eval").mkdir()
    (run / "round-1" / "eval" / "results.json").write_text(json.dumps({
        "model": "runs/exp/round-1/eval", "backend": "torch",
        "results": {"multiarith": {"n": 30, "strict_match": 0.5, "flexible_extract": 0.6},
                    "addsub": {"n": 10, "strict_match": 0.1, "flexible_extract": 0.1}}}))
    evals, benches, rounds = collect([run])
    (row,) = merge(evals, benches)
    assert row["name"] == "exp/round-1" and row["eval"]["n"] == 40
    assert row["eval"]["strict"] == pytest.approx(16 / 40) and row["eval"]["flexible"] == pytest.approx(19 / 40)


def test_bad_inputs_are_one_line_errors(tmp_path):
    (tmp_path / "other.json").write_text('{"hello": 1}')
    for arg in ("missing", "other.json"):
        proc = toolkit("report", arg, "--out", "rep", cwd=tmp_path)
        assert proc.returncode == 2 and proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr
