"""The recipe's deploy section (toolkit/pipeline/deploy.py): the pick rule on crafted figures, the settings'
checks before any teacher call, and end to end on the tiny student with real exports, evals and benches:
the stages, resume (nothing redone; a changed bench setting redoes only what depends on it), kill -9."""
from __future__ import annotations

import json
import tarfile
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import kill_when, one_line_error, write_tiny_recipe
from tests.fault_teacher import FaultTeacher
from toolkit.core.errors import RecipeError
from toolkit.core.recipe import load_recipe
from toolkit.data.prompt_rule import prompt_record, read_record
from toolkit.pipeline.deploy import check_deploy, pick, within_drop

# Two formats that export, load and bench in a few seconds each on the tiny student; the bench is minimal.
DEPLOY = """\
deploy:
  formats: [{format: gguf, quant: f16}, {format: genai, quant: fp32}]
  max_accuracy_drop: 50
  pick: fastest
  bench: {prompt_tokens: 8, gen_tokens: 8, reps: 1, warmup: 0, threads: 1, allow_busy: true}
"""
EXPORTS = ["gguf-f16", "genai-fp32"]
STEPS = [f"deploy/{name}/{step}" for name in EXPORTS for step in ("export", "eval", "bench")]
DEPLOY_STAGES = [*STEPS, "deploy/pick", "deploy/report"]


# --- the pick rule -----------------------------------------------------------------------------------------------

def _row(name: str, size: int | None = 100, speed: float | None = 10.0, drop: float | None = 1.0, *,
         passed: bool = True, error: str | None = None) -> dict:
    fmt, quant = name.split("-", 1)
    return {"name": name, "format": fmt, "quant": quant, "size_bytes": size, "decode_tok_s": speed,
            "drop_upper_points": drop, "parity": {"passed": passed}, "error": error}


def test_pick_smallest_and_fastest_within_the_drop():
    rows = [_row("gguf-q8_0", size=150, speed=80), _row("gguf-q4_k_m", size=90, speed=95),
            _row("genai-int4", size=100, speed=120), _row("gguf-q2_k", size=50, speed=130, drop=9.5)]
    chosen, reason = pick(rows, "smallest", 5.0, bundle=True)
    assert chosen == "gguf-q4_k_m"  # q2_k is smaller and faster, but may lose up to 9.5 points
    assert reason.startswith("smallest of 3 gguf/genai exports whose drop stays within 5 points")
    assert "gguf-q2_k may drop up to 9.5 points" in reason
    assert pick(rows, "fastest", 5.0, bundle=True)[0] == "genai-int4"
    assert pick(rows, "fastest", 10.0, bundle=True)[0] == "gguf-q2_k"  # within a looser limit
    assert [within_drop(r, 5.0) for r in rows] == [True, True, True, False]


def test_pick_ties_break_on_the_other_figure():
    same_size = [_row("gguf-a", size=100, speed=50), _row("gguf-b", size=100, speed=70)]
    assert pick(same_size, "smallest", 5.0, bundle=False)[0] == "gguf-b"  # the faster of two equal sizes
    same_speed = [_row("gguf-a", size=120, speed=70), _row("gguf-b", size=100, speed=70)]
    assert pick(same_speed, "fastest", 5.0, bundle=False)[0] == "gguf-b"  # the smaller of two equal speeds


def test_pick_skips_errors_and_unpaired_rows_and_says_why_nothing_qualifies():
    rows = [_row("gguf-q8_0", size=10, error="bench: the machine is busy"),
            _row("gguf-f16", size=30, drop=None), _row("gguf-q4_0", size=40, drop=12.0)]
    chosen, reason = pick(rows, "smallest", 5.0, bundle=True)
    assert chosen is None
    assert reason == ("no export qualifies: gguf-q8_0 failed; gguf-f16 is not paired with the student; "
                      "gguf-q4_0 may drop up to 12.0 points")
    assert not any(within_drop(r, 5.0) for r in rows)
    rows.append(_row("gguf-q6_k", size=60, drop=-2.0))  # a gain even at the interval's lower end
    assert pick(rows, "smallest", 5.0, bundle=True)[0] == "gguf-q6_k"


def test_parity_is_recorded_but_the_accuracy_drop_decides():
    # A 4-bit export of a small model fails the token-agreement threshold of parity, yet may lose no
    # held-out answer: the pick goes by the paired accuracy drop.
    rows = [_row("genai-int4", size=20, passed=False, drop=2.5), _row("gguf-q8_0", size=150)]
    assert pick(rows, "smallest", 5.0, bundle=True)[0] == "genai-int4"
    assert within_drop(rows[0], 5.0)


def test_bundle_restricts_the_pick_to_gguf_and_genai():
    rows = [_row("onnx-int8", size=50, speed=200), _row("gguf-q8_0", size=150, speed=80)]
    assert pick(rows, "smallest", 5.0, bundle=False)[0] == "onnx-int8"
    chosen, reason = pick(rows, "smallest", 5.0, bundle=True)
    assert chosen == "gguf-q8_0" and "onnx-int8 has no bundle runner" in reason
    assert pick(rows, "fastest", 5.0, bundle=True)[0] == "gguf-q8_0"


# --- the section's schema and checks -----------------------------------------------------------------------------

def _recipe(tmp_path: Path, student: Path, url: str = "http://127.0.0.1:9/v1", deploy: str = DEPLOY) -> Path:
    path = write_tiny_recipe(tmp_path, student, url)
    path.write_text(path.read_text() + deploy)
    return path


def test_deploy_is_left_out_of_the_digest_and_validated(tmp_path):
    digest = load_recipe(write_tiny_recipe(tmp_path, tmp_path, "http://127.0.0.1:9/v1")).digest()
    with_deploy = _recipe(tmp_path, tmp_path)
    recipe = load_recipe(with_deploy)
    assert recipe.digest() == digest and "deploy" not in recipe.model_dump()  # adding it resumes a finished run
    assert [f.name for f in recipe.deploy.formats] == EXPORTS and recipe.deploy.bundle is True
    assert load_recipe(with_deploy, ["deploy.formats=[{format: gguf, quant: Q8_0}]"]).deploy.formats[0].name == "gguf-q8_0"
    for overrides, message in [
        (["deploy.formats=[{format: gguf, quant: q8_0}, {format: gguf, quant: Q8_0}]"], "name gguf-q8_0 more than once"),
        (["deploy.formats=[{format: onnx, quant: int8}]"], "bundle: true packs a gguf or genai export"),
        (["deploy.formats=[]"], "deploy.formats: List should have at least 1 item"),
        (["deploy.formats=[{format: tflite, quant: int8}]"], "deploy.formats.0.format: Input should be"),
        (["deploy.formats=[{format: gguf, quant: ../x}]"], "deploy.formats.0.quant: String should match"),
        (["deploy.pick=cheapest"], "deploy.pick"), (["deploy.max_accuracy_drop=0"], "deploy.max_accuracy_drop"),
        (["deploy.heldout=0"], "deploy.heldout"), (["deploy.colour=red"], "deploy.colour: unknown key"),
    ]:
        with pytest.raises(RecipeError, match=message.replace(".", r"\.").replace("(", r"\(")):
            load_recipe(with_deploy, overrides)


@pytest.mark.parametrize("overrides, message", [
    (["deploy.formats=[{format: tflite, quant: int8}]"], "deploy.formats.0.format: Input should be 'onnx', 'genai' or"),
    (["deploy.formats=[{format: onnx, quant: q4_k_m}]", "deploy.bundle=false"],
     "deploy.formats.0 (onnx q4_k_m): --format onnx takes --quant fp32, int8, int4; got 'q4_k_m'"),
    (["deploy.bench.tokens=3"], "deploy.bench.tokens: unknown key"),
    (["deploy.remote=ssh://nobody@127.0.0.1:1"], "deploy.remote ssh://nobody@127.0.0.1:1: unreachable ("),
])
def test_bad_deploy_settings_stop_before_any_teacher_call(tmp_path, tiny_model_dir, overrides, message):
    with FaultTeacher(tmp_path / "server.jsonl") as srv:
        recipe = _recipe(tmp_path, tiny_model_dir, srv.base_url)
        for dry in ([], ["--dry-run"]):
            r = _distill(tmp_path, recipe, *overrides, *dry, timeout=120)
            assert message in one_line_error(r)
        assert srv.rows() == []  # the teacher was never asked
    assert not (tmp_path / "runs").exists()  # nor a run folder made


@pytest.mark.parametrize("overrides, message", [
    (["deploy.formats=[{format: genai, quant: q8_0}]"], "deploy.formats.0 (genai q8_0): --format genai takes --quant"),
    (["deploy.bench.reps=many"], "deploy.bench.reps: Input should be a valid integer"),
    (["deploy.bench.gen_tokens=0"], "deploy.bench.gen_tokens: must be at least 1"),
    (["deploy.bench.threads=[2, 0]"], "deploy.bench.threads: must be at least 1"),
    (["deploy.bench.remote=ssh://pi@edge"], "deploy.bench.remote: give the device as deploy.remote"),
    (["deploy.remote=http://edge"], "deploy.remote: --remote wants ssh://"),
])
def test_check_deploy_names_the_setting(tmp_path, overrides, message):
    with pytest.raises(RecipeError) as exc:
        check_deploy(load_recipe(_recipe(tmp_path, tmp_path), overrides))
    assert message in str(exc.value) and "\n" not in str(exc.value)


# --- end to end ----------------------------------------------------------------------------------------------------

def _distill(work: Path, recipe: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "250", "TOOLKIT_CACHE": str(work / "cache")}
    return subprocess.run([sys.executable, "-m", "toolkit.cli", "distill", str(recipe), *args], cwd=work,
                          capture_output=True, text=True, env=env, timeout=timeout)


def _stages(run: Path) -> dict:
    try:
        return json.loads((run / "manifest.json").read_text())["stages"]
    except (OSError, ValueError):  # not written yet
        return {}


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    with FaultTeacher(tmp_path_factory.mktemp("teacher") / "server.jsonl") as srv:
        yield srv


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tiny_model_dir, teacher):
    """One tiny run through deploy, shared by the tests below: (work folder, recipe, the CLI's result)."""
    work = tmp_path_factory.mktemp("deploy-run")
    recipe = _recipe(work, tiny_model_dir, teacher.base_url)
    r = _distill(work, recipe)
    assert r.returncode == 0, r.stderr[-3000:]
    return work, recipe, r


def test_deploy_stages_rows_pick_bundle_and_report(finished):
    work, _, r = finished
    run = work / "runs" / "tiny"
    manifest = json.loads((run / "manifest.json").read_text())
    assert [s for s in manifest["stages"] if s.startswith("deploy/")] == DEPLOY_STAGES
    assert manifest["deploy"]["settings"]["formats"] == [{"format": "gguf", "quant": "f16"},
                                                         {"format": "genai", "quant": "fp32"}]
    doc = json.loads((run / "deploy" / "deploy.json").read_text())
    assert manifest["summary"]["deploy"]["rows"] == doc["rows"]
    ref = doc["reference"]
    assert (ref["model"], ref["format"], ref["n"]) == ("round-0", "torch", 2)
    assert doc["student"] == str(run / "round-0" / "student")
    assert [row["name"] for row in doc["rows"]] == EXPORTS
    for row in doc["rows"]:
        folder = run / "deploy" / row["name"]
        assert row["error"] is None and row["parity"]["passed"] is True
        assert Path(row["path"]) == (folder / "model" / "model-f16.gguf" if row["format"] == "gguf" else folder / "model")
        assert row["size_bytes"] > 0
        # Scored in its own runtime on the same held-out problems as the student, and paired with it.
        results = json.loads((folder / "eval" / "results.json").read_text())
        assert results["model"] == row["path"] and results["backend"] == {"gguf": "llama.cpp", "genai": "genai"}[row["format"]]
        ids = [json.loads(x)["id"] for x in (folder / "eval" / "samples_heldout.jsonl").read_text().splitlines()]
        student_ids = [json.loads(x)["id"] for x in (run / "round-0" / "eval" / "samples_heldout.jsonl").read_text().splitlines()]
        assert ids == student_ids and row["n"] == 2
        p = row["paired"]
        assert (p["against"], p["n"]) == ("round-0", 2) and p["ci95"][0] <= p["difference"] <= p["ci95"][1]
        assert row["drop_upper_points"] == round(-100 * p["ci95"][0], 2) and row["within_drop"] == (row["drop_upper_points"] <= 50)
        bench = json.loads((folder / "bench.json").read_text())
        assert row["decode_tok_s"] == round(bench["decode_tok_s"]["mean"], 2) > 0
        assert row["prefill_tok_s"] > 0 and row["ttft_ms"] > 0 and row["peak_rss_bytes"] > 0
        assert row["decode_ms_p50"] <= row["decode_ms_p99"] and row["threads"] == 1
    # fastest within the drop, packed as the edge bundle
    qualifying = [row for row in doc["rows"] if row["within_drop"]]
    assert doc["pick"]["chosen"] == max(qualifying, key=lambda row: row["decode_tok_s"])["name"]
    assert doc["pick"]["reason"].startswith(f"fastest of {len(qualifying)} gguf/genai export")
    bundle = Path(doc["pick"]["bundle"])
    assert bundle == run / "deploy" / doc["pick"]["chosen"] / "model" / f"round-0-{doc['pick']['chosen']}.tar.gz"
    assert bundle.is_file() and list((run / "deploy").glob("*/model/*.tar.gz")) == [bundle]
    md = (run / "deploy" / "deploy.md").read_text()
    assert all(f"| {name} | {name.replace('-', ' | ')} | 2 |" in md for name in EXPORTS)
    assert f"**Picked: {doc['pick']['chosen']}**" in md
    # A Hugging Face model card in the bundle and in every student folder; the final one lists the exports.
    with tarfile.open(bundle) as tar:
        card = tar.extractfile(f"{bundle.name.removesuffix('.tar.gz')}/README.md").read().decode()
    assert card.startswith("---\n") and all(f"({name.replace('-', ' ')})" in card for name in EXPORTS)
    # The bundle and every export carry the student's prompt rule, which the bundle's run.py asks by.
    record = json.loads((run / "round-0" / "student" / "prompt.json").read_text())
    assert record == prompt_record(["cot"], chat=True)
    with tarfile.open(bundle) as tar:
        assert json.load(tar.extractfile(f"{bundle.name.removesuffix('.tar.gz')}/prompt.json")) == record
    assert all(json.loads((run / "deploy" / name / "model" / "export.json").read_text())["prompt"] == record
               for name in EXPORTS)
    student_card = (run / "round-0" / "student" / "README.md").read_text()
    assert student_card.split("\n---\n")[0] == card.split("\n---\n")[0]  # the same front matter
    report = (run / "report" / "report.md").read_text().splitlines()
    assert manifest["stages"]["deploy/report"]["report"] == str(run / "report" / "report.md")
    assert [sum(line.startswith(f"| {name} |") for line in report) for name in EXPORTS] == [1, 1]  # a row per export
    assert list((run / "report").glob("*.png"))
    # The final table reads base -> rounds -> each export, and names the pick.
    lines = [line for line in r.stdout.splitlines() if line.startswith("│")]
    assert [line.split("│")[1].strip() for line in lines[:4]] == ["base", "round-0", "gguf f16", "genai fp32"]
    picked = [line.split("│")[1].strip() for line in lines[2:4] if "✓" in line]
    assert picked == [doc["pick"]["chosen"].replace("-", " ")]
    assert f"deploy pick: {doc['pick']['chosen']} (fastest of" in r.stdout


def test_resume_redoes_nothing_and_a_bench_setting_redoes_only_what_reads_it(finished):
    work, recipe, _ = finished
    run = work / "runs" / "tiny"
    before = _stages(run)
    again = _distill(work, recipe)
    assert again.returncode == 0, again.stderr[-3000:]
    assert _stages(run) == before  # every record as it was: nothing ran again
    assert "▶" not in again.stdout
    changed = _distill(work, recipe, "deploy.bench.gen_tokens=4")
    assert changed.returncode == 0, changed.stderr[-3000:]
    after = _stages(run)
    assert set(after) == set(before)
    for name in EXPORTS:
        for step in ("export", "eval"):
            assert after[f"deploy/{name}/{step}"] == before[f"deploy/{name}/{step}"]
        assert after[f"deploy/{name}/bench"]["settings"] != before[f"deploy/{name}/bench"]["settings"]
        assert json.loads((run / "deploy" / name / "bench.json").read_text())["gen_tokens"] == 4
    redone = [line[2:] for line in changed.stdout.splitlines() if line.startswith("▶")]
    assert redone == ["deploy: bench gguf f16", "deploy: bench genai fp32", "deploy: pick the fastest export within 50 "
                      "points", "deploy: the run's report (report/report.md and plots)"]
    assert after["deploy/pick"]["settings"] != before["deploy/pick"]["settings"]
    assert json.loads((run / "deploy" / "deploy.json").read_text())["pick"]["chosen"]


def test_a_student_saved_before_its_prompt_rule_gets_one_on_resume(finished):
    """A run whose students predate prompt.json (they were all trained on their chat template) gets the record on
    resume; the same record, so nothing runs again."""
    work, recipe, _ = finished
    run = work / "runs" / "tiny"
    assert _distill(work, recipe).returncode == 0  # as the recipe says (an earlier test changed a bench setting)
    before = _stages(run)
    (run / "round-0" / "student" / "prompt.json").unlink()
    again = _distill(work, recipe)
    assert again.returncode == 0, again.stderr[-3000:]
    assert read_record(run / "round-0" / "student") == prompt_record(["cot"], chat=True)
    assert _stages(run) == before and "▶" not in again.stdout


def test_kill_9_during_deploy_then_resume_redoes_nothing_finished(tmp_path, tiny_model_dir, teacher, monkeypatch):
    recipe = _recipe(tmp_path, tiny_model_dir, teacher.base_url)
    run = tmp_path / "runs" / "tiny"
    cmd = [sys.executable, "-m", "toolkit.cli", "distill", str(recipe)]
    monkeypatch.setenv("TOOLKIT_CACHE", str(tmp_path / "cache"))  # the cache _distill gives the resumed run
    # killed while the gguf export is being benchmarked (its export and eval are done)
    kill_when(cmd, tmp_path, lambda: "deploy/gguf-f16/eval" in _stages(run), poll_s=0.05)
    killed = _stages(run)
    finished_before = {k: v for k, v in killed.items() if k.startswith("deploy/")}
    assert "deploy/gguf-f16/export" in finished_before and "deploy/pick" not in finished_before
    done = _distill(tmp_path, recipe)
    assert done.returncode == 0, done.stderr[-3000:]
    after = _stages(run)
    assert all(after[k] == v for k, v in finished_before.items())  # finished stages kept their records
    assert [s for s in after if s.startswith("deploy/")] == DEPLOY_STAGES
    redone = {line[2:] for line in done.stdout.splitlines() if line.startswith("▶")}
    assert not any("gguf f16 answers" in t or "export the student to gguf" in t for t in redone)
    assert not list(run.rglob("*.tmp")) and not list((run / "deploy").rglob(".export-scratch-*"))

    # A bench that cannot run (more threads than cores, allow_busy off): each export's error is in its row,
    # the other export still goes on, nothing is picked, and the run ends normally.
    busy = _distill(tmp_path, recipe, "deploy.bench.threads=[4096]", "deploy.bench.allow_busy=false")
    assert busy.returncode == 0, busy.stderr[-3000:]
    doc = json.loads((run / "deploy" / "deploy.json").read_text())
    assert [row["error"].startswith("bench: ") and "busy" in row["error"] for row in doc["rows"]] == [True, True]
    assert all(row["decode_tok_s"] is None and not row["within_drop"] for row in doc["rows"])
    assert doc["pick"]["chosen"] is None and doc["pick"]["reason"].startswith("no export qualifies: gguf-f16 failed")
    assert doc["pick"]["bundle"] is None and not list((run / "deploy").glob("*/model/*.tar.gz"))
    stages = _stages(run)
    assert not any(s.endswith("/bench") for s in stages)  # a failed stage is not recorded: a resume tries it again
    assert all(stages[k] == after[k] for k in STEPS if not k.endswith("/bench"))
    assert "gguf f16 failed: bench: " in busy.stdout and "deploy pick: none (no export qualifies" in busy.stdout
