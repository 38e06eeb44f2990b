"""`toolkit report` from a real bench JSON, real eval results and a committed distillation run folder."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import ROOT, toolkit
from toolkit.core.jsonio import atomic_write_jsonl
from toolkit.core.stats import wilson_interval
from toolkit.eval.bench import summarize, write_outputs
from toolkit.eval.report import build_report, collect, deploy_points, identity, merge
from toolkit.eval.rounds_report import SAMPLES, compare, write_round_report

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
    for png in ("accuracy_vs_speed.png", "accuracy_vs_size.png", "decode_latency.png", "rounds-fdd-cpu-easy.png"):
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
    evals, benches, rounds, deploys = collect([run])
    (row,) = merge(evals, benches)
    assert row["name"] == "exp/round-1" and row["eval"]["n"] == 40 and deploys == []
    assert row["eval"]["strict"] == pytest.approx(16 / 40) and row["eval"]["flexible"] == pytest.approx(19 / 40)


def test_bad_inputs_are_one_line_errors(tmp_path):
    (tmp_path / "other.json").write_text('{"hello": 1}')
    for arg in ("missing", "other.json"):
        proc = toolkit("report", arg, "--out", "rep", cwd=tmp_path)
        assert proc.returncode == 2 and proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr


IDS = [f"heldout-{i}" for i in range(40)]
STUDENT_RIGHT = set(range(12))  # the fp32 student solves 12 of the 40 held-out problems (30%)


def _samples(folder: Path, right: set[int]) -> dict[str, bool]:
    """An eval's per-sample file (problems `right` solved) and its results.json; returns the strict scores."""
    folder.mkdir(parents=True, exist_ok=True)
    scores = {pid: i in right for i, pid in enumerate(IDS)}
    atomic_write_jsonl(folder / SAMPLES, [{"id": pid, "strict_match": ok, "flexible_extract": ok}
                                          for pid, ok in scores.items()])
    return scores


def _bench_row(model: str, quant: str, size: int, threads: int, step_ms: float) -> dict:
    """A bench row as eval/bench.summarize makes it, from crafted runner samples (3 reps of 16 decode steps)."""
    facts = {"format": "gguf", "quant": quant, "file_size_bytes": size, "weight_bytes": size - 1000,
             "kv_bytes_per_position": 23040, "bytes_note": "all tensors", "kv_note": "30 layers"}
    samples = [{"rep": rep, "ttft_ms": 60.0 + rep, "prefill_tok_s": 900.0 - 10 * rep,
                "decode_tok_s": 1000 / (step_ms + 0.1 * rep),
                "decode_step_ms": [step_ms + 0.1 * rep + 0.01 * i + (5.0 if i == 7 else 0.0) for i in range(16)]}
               for rep in range(3)]
    result = {"samples": samples, "model_path": model, "backend": "llama.cpp", "peak_rss_bytes": size + 90_000_000,
              "load_s": 0.3, "machine": {"mem_bw_GBps": 20.0, "busy_check": {"busy": False}}}
    spec = {"threads": threads, "prompt_tokens": 64, "gen_tokens": 16, "reps": 3, "warmup": 1}
    return summarize(model, facts, spec, result, "localhost")


def _export(run: Path, name: str, quant: str, size: int, right: set[int], student_scores: dict, bench: list[dict]
            | None, error: str | None = None) -> dict:
    """One export's folder as the deploy stages leave it and its deploy.json row (paths as the run records them:
    relative to the folder the run was started in)."""
    rel = f"runs/{run.name}/deploy/{name}"
    folder = run / "deploy" / name
    (folder / "model").mkdir(parents=True)
    (folder / "model" / f"model-{quant}.gguf").write_bytes(b"GGUF")
    (folder / "model" / "export.json").write_text(json.dumps(
        {"source": {"ref": f"runs/{run.name}/round-1/student", "kind": "hf"}, "format": "gguf", "quant": quant,
         "parity": {"passed": error is None}, "passed": error is None}))
    row = {"name": name, "format": "gguf", "quant": quant, "path": f"{rel}/model/model-{quant}.gguf",
           "size_bytes": size, "parity": None, "n": None, "strict_match": None, "strict_ci95": None,
           "flexible_extract": None, "paired": None, "drop_upper_points": None, "within_drop": False,
           "decode_tok_s": None, "prefill_tok_s": None, "ttft_ms": None, "decode_ms_p50": None,
           "decode_ms_p99": None, "peak_rss_bytes": None, "roofline_ratio": None, "threads": None,
           "bench": None, "error": error}
    if error:
        return row
    scores = _samples(folder / "eval", right)
    k = len(right)
    (folder / "eval" / "results.json").write_text(json.dumps(
        {"model": f"{rel}/model", "backend": "llama.cpp",
         "results": {"heldout": {"n": 40, "strict_match": k / 40, "flexible_extract": k / 40}}}))
    write_outputs(bench, folder / "bench.json")
    best = max(bench, key=lambda b: b["decode_tok_s"]["mean"])
    pair = compare(name, scores, "round-1", student_scores)
    row.update(parity={"passed": True, "first_token_match": 1.0, "token_agreement": 0.97}, n=40,
               strict_match=k / 40, strict_ci95=list(wilson_interval(k, 40)), flexible_extract=k / 40, paired=pair,
               drop_upper_points=-100 * pair["ci95"][0], within_drop=-100 * pair["ci95"][0] <= 10.0,
               decode_tok_s=best["decode_tok_s"]["mean"], prefill_tok_s=best["prefill_tok_s"]["mean"],
               ttft_ms=best["ttft_ms"]["mean"], decode_ms_p50=best["decode_ms_per_token"]["p50"],
               decode_ms_p99=best["decode_ms_per_token"]["p99"], peak_rss_bytes=best["peak_rss_bytes"],
               roofline_ratio=best["roofline"]["ratio"], threads=best["threads"], bench=f"{rel}/bench.json")
    return row


@pytest.fixture
def deploy_run(tmp_path) -> Path:
    """A finished run with deploy: base and two rounds with per-sample files, then three gguf exports of round 1:
    q8_0 (the same accuracy, benched as a thread sweep: picked), q4_k_m (smaller, but drops too much) and q4_0
    (its export failed)."""
    run = tmp_path / "runs" / "exp"
    (run / "round-1" / "student").mkdir(parents=True)
    (run / "manifest.json").write_text(json.dumps({"kind": "toolkit-run"}))
    rounds = {}
    for name, folder, right in (("base", "eval-base", set(range(2))), ("round-0", "round-0/eval", set(range(8))),
                                ("round-1", "round-1/eval", STUDENT_RIGHT)):
        _samples(run / folder, right)
        k = len(right)
        rounds[name] = {"n": 40, "strict_match": k / 40, "flexible_extract": k / 40,
                        "results": str(run / folder / "results.json")}
        (run / folder / "results.json").write_text(json.dumps(
            {"model": f"runs/exp/{folder}", "backend": "torch",
             "results": {"heldout": {"n": 40, "strict_match": k / 40, "flexible_extract": k / 40}}}))
    write_round_report(run, rounds)
    student = {pid: i in STUDENT_RIGHT for i, pid in enumerate(IDS)}
    rows = [
        # one problem lost (0), one gained (20): paired difference 0
        _export(run, "gguf-q8_0", "q8_0", 145_000_000, (STUDENT_RIGHT - {0}) | {20}, student,
                [_bench_row("runs/exp/deploy/gguf-q8_0/model", "q8_0", 145_000_000, t, ms)
                 for t, ms in ((1, 14.0), (2, 8.0))]),
        # five problems lost: 30% -> 17.5%
        _export(run, "gguf-q4_k_m", "q4_k_m", 95_000_000, STUDENT_RIGHT - set(range(5)), student,
                [_bench_row("runs/exp/deploy/gguf-q4_k_m/model", "q4_k_m", 95_000_000, 2, 6.0)]),
        _export(run, "gguf-q4_0", "q4_0", None, set(), student, None,
                error="llama.cpp token ids differ from the HF tokenizer's on 2 sample text(s)"),
    ]
    lo, hi = wilson_interval(12, 40)
    deploy = {"student": "runs/exp/round-1/student",
              "reference": {"model": "round-1", "format": "torch", "quant": "fp32", "n": 40, "strict_match": 0.3,
                            "strict_ci95": [lo, hi], "results": "runs/exp/round-1/eval/results.json"},
              "calculator": False, "rows": rows,
              "pick": {"rule": "smallest", "max_accuracy_drop": 10.0, "chosen": "gguf-q8_0",
                       "reason": "smallest of 1 exports whose drop stays within 10 points (upper end of the "
                                 "paired 95% interval)",
                       "bundle": "runs/exp/deploy/gguf-q8_0/model/round-1-gguf-q8_0.tar.gz"}}
    (run / "deploy" / "deploy.json").write_text(json.dumps(deploy, indent=1))
    (run / "deploy" / "deploy.md").write_text("# deploy\n")
    return run


def _table(md: str, heading: str) -> list[str]:
    """The data rows of the first table after `heading`."""
    lines = md.split(heading, 1)[1].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append(line)
    return rows


def test_report_of_a_run_with_deploy(deploy_run, tmp_path):
    deploy = json.loads((deploy_run / "deploy" / "deploy.json").read_text())
    q8, q4km, q40 = deploy["rows"]
    out = tmp_path / "report"
    md = build_report([deploy_run], out).read_text()
    # One row per export after the fp32 student, in deploy.json's order; the figures are deploy.json's.
    ref, *rows = _table(md, "## Deploy: exp")
    assert len(rows) == 3
    assert ref.startswith("| round-1 (fp32 student) | torch | fp32 | 40 | 30.0% (") and "| reference | – |" in ref
    lo, hi = (100 * x for x in q8["paired"]["ci95"])
    assert q8["paired"]["difference"] == 0 and (q8["paired"]["only_model"], q8["paired"]["only_against"]) == (1, 1)
    assert rows[0].startswith(f"| gguf-q8_0 | gguf | q8_0 | 40 | 30.0% ({q8['strict_ci95'][0]:.1%}–"
                              f"{q8['strict_ci95'][1]:.1%}) | +0.0 ({lo:+.1f} to {hi:+.1f}) | 1 | "
                              f"{q8['drop_upper_points']:.1f} | ")
    # q8_0 was benched at 1 and 2 threads: the faster row (2 threads) is the one shown
    assert q8["threads"] == 2 and f"| {q8['decode_tok_s']:.1f} | {q8['prefill_tok_s']:.1f} | {q8['ttft_ms']:.1f} | " \
        f"{q8['decode_ms_p50']:.2f} / {q8['decode_ms_p99']:.2f} | {q8['peak_rss_bytes'] / 1e6:.0f} | 145.0 | " \
        f"{q8['roofline_ratio']:.0%} | 2 | ✓ | ✓ |" in rows[0]
    p = q4km["paired"]
    assert (p["difference"], p["only_model"], p["only_against"]) == (-5 / 40, 0, 5) and p["ci95"][0] < -0.1
    assert rows[1].startswith("| gguf-q4_k_m | gguf | q4_k_m | 40 | 17.5% (") and rows[1].endswith("| 95.0 | "
        f"{q4km['roofline_ratio']:.0%} | 2 | ✓ |  |")
    assert f"| {100 * p['difference']:+.1f} ({100 * p['ci95'][0]:+.1f} to {100 * p['ci95'][1]:+.1f}) | " \
           f"{p['mcnemar_p']:.3g} | {q4km['drop_upper_points']:.1f} |" in rows[1]
    assert p["mcnemar_p"] == 2 / 32  # 5 discordant pairs, all one way: 2 * (1/2)^5
    assert rows[2] == "| gguf-q4_0 | gguf | q4_0 |" + " – |" * 14 + "  |"
    assert f"- gguf-q4_0 failed: {q40['error']}" in md
    assert ("**Picked: gguf-q8_0** (rule: smallest, largest accuracy drop allowed 10 points): smallest of 1 exports "
            "whose drop stays within 10 points (upper end of the paired 95% interval). Edge bundle: "
            "`runs/exp/deploy/gguf-q8_0/model/round-1-gguf-q8_0.tar.gz`.") in md
    # the plots, and the accuracy per round with intervals
    for png in ("deploy-exp-accuracy_vs_speed.png", "deploy-exp-accuracy_vs_size.png",
                "deploy-exp-decode_latency.png", "rounds-exp.png"):
        assert (out / png).read_bytes()[:8] == PNG_MAGIC and (out / png).stat().st_size > 5000
        assert f"({png})" in md
    assert "## Distillation rounds: exp" in md and "| round-1 | 40 | 30.0% (" in md
    # No double rows: the exports' evals and bench files are the deploy section's, not models of their own
    # (the generic table lists the run's base and rounds; no bench rows, so no generic speed plots).
    assert [r.split(" | ")[0] for r in _table(md, "## Models")] == ["| exp/base", "| exp/round-0", "| exp/round-1"]
    assert "All bench rows" not in md and not (out / "accuracy_vs_speed.png").exists()


def test_deploy_points_and_latency_samples(deploy_run):
    evals, benches, rounds, (dep,) = collect([deploy_run])
    assert benches == [] and [name for name, _ in rounds] == ["exp"] and dep["run"] == "exp"
    # per-token decode times of the bench row the table shows (2 threads), from the bench JSON's samples
    sweep = json.loads((deploy_run / "deploy" / "gguf-q8_0" / "bench.json").read_text())
    assert [r["threads"] for r in sweep] == [1, 2]
    assert dep["steps"]["gguf-q8_0"] == [ms for s in sweep[1]["samples"] for ms in s["decode_step_ms"]]
    assert len(dep["steps"]["gguf-q4_k_m"]) == 48 and dep["steps"]["gguf-q4_0"] == [] and dep["reference_steps"] == []
    speed = deploy_points(dep, "decode_tok_s")
    assert [(p["label"], p["picked"]) for p in speed] == [("gguf-q8_0", True), ("gguf-q4_k_m", False)]
    assert speed[0]["x"] == dep["rows"][0]["decode_tok_s"] and speed[0]["ci95"] == dep["rows"][0]["strict_ci95"]
    assert [p["x"] for p in deploy_points(dep, "size_bytes", 1e-6)] == [145.0, 95.0]
    # the fp32 student is a point where the deploy stages measured it
    dep["reference"].update(decode_tok_s=40.0, size_bytes=540_000_000)
    assert [p["label"] for p in deploy_points(dep, "size_bytes", 1e-6)][0] == "round-1 fp32 (reference)"


def test_deploy_with_nothing_picked_and_export_files_named_by_their_student(deploy_run, tmp_path):
    path = deploy_run / "deploy" / "deploy.json"
    deploy = json.loads(path.read_text())
    deploy["pick"].update(chosen=None, bundle=None, max_accuracy_drop=1.0,
                          reason="no export's drop stays within 1 point (upper end of the paired 95% interval)")
    deploy["reference"]["strict_ci95"] = None  # the fp32 student's eval left no per-sample file
    path.write_text(json.dumps(deploy))
    # the run's deploy folder on its own is a report of its own too
    md = build_report([deploy_run / "deploy"], tmp_path / "report").read_text()
    assert ("**No export picked** (rule: smallest, largest accuracy drop allowed 1 points): no export's drop stays "
            "within 1 point (upper end of the paired 95% interval).") in md
    rows = _table(md, "## Deploy: exp")
    assert len(rows) == 4 and all(row.endswith("|  |") for row in rows)
    lo, hi = wilson_interval(12, 40)  # the interval of its rate over n, where none was recorded
    assert rows[0].startswith(f"| round-1 (fp32 student) | torch | fp32 | 40 | 30.0% ({lo:.1%}–{hi:.1%}) |")
    # An export's own eval results and bench JSON, given on their own, are rows of the student they came from
    # (export.json records it relative to the folder the run started in, not to here).
    export = deploy_run / "deploy" / "gguf-q4_k_m"
    assert identity(str(export / "model"), tmp_path) == "exp/round-1"
    evals, benches, _, deploys = collect([export / "eval" / "results.json", export / "bench.json"])
    assert deploys == [] and [(e["name"], e["n"]) for e in evals] == [("exp/round-1", 40)]
    assert [(b["_name"], b["format"], b["quant"]) for b in benches] == [("exp/round-1", "gguf", "q4_k_m")]


def test_a_deploy_stopped_before_its_pick_lists_each_export_once(deploy_run):
    """Without deploy.json (the deploy stopped part way) the exports' evals and bench rows are generic models:
    one row each, named by the student they came from, eval and bench joined."""
    (deploy_run / "deploy" / "deploy.json").unlink()
    evals, benches, _, deploys = collect([deploy_run])
    rows = {(r["name"], r["format"], r["quant"]): r for r in merge(evals, benches)}
    assert deploys == [] and set(rows) == {("exp/base", "torch", "–"), ("exp/round-0", "torch", "–"),
                                           ("exp/round-1", "torch", "–"), ("exp/round-1", "gguf", "q8_0"),
                                           ("exp/round-1", "gguf", "q4_k_m")}
    q8 = rows["exp/round-1", "gguf", "q8_0"]
    assert q8["eval"]["strict"] == 0.3 and q8["bench"]["threads"] == 2


def _hf_folder(path: Path, dtype: str) -> Path:
    """A save_pretrained folder as the report reads it: its config.json names the format and dtype."""
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"num_attention_heads": 4, "hidden_size": 64,
                                                  "num_hidden_layers": 2, "torch_dtype": dtype}))
    return path


def _results(folder: Path, k: int, n: int = 40) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.json").write_text(json.dumps(
        {"model": str(folder), "backend": "torch", "results": {"heldout": {"n": n, "strict_match": k / n,
                                                                           "flexible_extract": k / n}}}))


def test_a_run_report_lists_each_model_once_with_its_no_calculator_figure(tmp_path):
    """eval.calculator both: round-0's second eval (no-calculator/) is a column of round-0's row, not a model; the
    base student's format comes from the recipe's model; no `?` cell and no empty-plot line."""
    run = tmp_path / "runs" / "exp"
    base = _hf_folder(tmp_path / "base-model", "bfloat16")
    _hf_folder(run / "round-0" / "student", "float32")
    (run / "manifest.json").write_text(json.dumps({"kind": "toolkit-run", "recipe": {"student": {"model": str(base)}}}))
    _results(run / "eval-base", 2)
    _results(run / "round-0" / "eval", 5)
    _results(run / "round-0" / "eval" / "no-calculator", 0)
    md = build_report([run], tmp_path / "report").read_text()
    header = md.split("## Models", 1)[1].split("\n|", 1)[1].split("\n", 1)[0]
    assert "strict match (95% CI) | strict, no calculator (95% CI) | flexible |" in header
    rows = _table(md, "## Models")
    assert [r.split(" | ")[:3] for r in rows] == [["| exp/base", "hf", "bfloat16"], ["| exp/round-0", "hf", "float32"]]
    lo, hi = wilson_interval(0, 40)
    assert f"| 12.5% (" in rows[1] and f"| 0.0% ({lo:.1%}–{hi:.1%}) | 12.5% |" in rows[1]
    assert "| – | 5.0% |" in rows[0]  # the base has no no-calculator figure
    assert "| ? |" not in md and "(no plot" not in md
