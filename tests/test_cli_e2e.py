"""The real `toolkit` CLI end to end on a tiny recipe, against a real llama.cpp teacher on loopback."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import write_jsonl
from toolkit.llama_server import LlamaServer

# Problems easy enough that SmolLM2-135M, the test teacher, gets some of them right.
EASY = [
    ("What is 2 plus 3?", 5), ("What is 4 plus 4?", 8), ("What is 10 minus 3?", 7),
    ("What is 3 plus 3?", 6), ("What is 5 plus 1?", 6), ("What is 9 minus 4?", 5),
    ("What is 2 times 3?", 6), ("What is 1 plus 1?", 2),
]


def toolkit(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "toolkit.cli", *args], cwd=cwd, capture_output=True,
                          text=True, env={**os.environ, "NO_COLOR": "1", "COLUMNS": "200"}, timeout=900)


@pytest.fixture(scope="module")
def teacher_server(smollm2_gguf, tmp_path_factory):
    with LlamaServer(smollm2_gguf, tmp_path_factory.mktemp("teacher") / "server.log", n_ctx=1024,
                     threads=2) as srv:
        yield srv


@pytest.fixture()
def recipe(tmp_path, tiny_model_dir, teacher_server) -> Path:
    write_jsonl(tmp_path / "easy.jsonl", [{"id": f"e{i}", "question": q, "answer": a}
                                          for i, (q, a) in enumerate(EASY)])
    text = f"""\
name: tiny
seed: 0
output_dir: {tmp_path / 'runs'}
data:
  train: {{path: easy.jsonl}}
  train_size: 6
  heldout_size: 2
teacher:
  model: smollm2
  backend: openai
  base_url: {teacher_server.base_url}
  temperature: 0.7
  max_tokens: 48
student:
  model: {tiny_model_dir}
distill:
  paths_per_problem: 2
train:
  max_steps: 2
  batch_size: 2
  seq_len: 256
  threads: 1
eval:
  max_new_tokens: 8
  batch_size: 2
"""
    path = tmp_path / "tiny.yaml"
    path.write_text(text)
    return path


def test_help_explains_the_commands(tmp_path):
    top = toolkit("--help", cwd=tmp_path)
    assert top.returncode == 0 and "distill" in top.stdout and "eval" in top.stdout
    sub = toolkit("distill", "--help", cwd=tmp_path)
    assert sub.returncode == 0
    for word in ("--dry-run", "--fresh", "key.path=value", "resumes"):
        assert word in sub.stdout


def test_dry_run_prints_the_plan_and_runs_nothing(recipe, tmp_path, teacher_server):
    before = teacher_server.requests_served()
    r = toolkit("distill", str(recipe), "--dry-run", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "6 training problems" in r.stdout and "2 held-out" in r.stdout
    assert "12 (2 rationales per problem" in r.stdout
    assert not (tmp_path / "runs").exists()
    assert teacher_server.requests_served() == before


def test_bad_input_is_one_line_and_nonzero(recipe, tmp_path):
    for args, expected in [
        (["distill", str(recipe), "train.epoch=3"], "command-line override: train.epoch: unknown key"),
        (["distill", str(tmp_path / "missing.yaml")], "recipe file not found"),
        (["distill", str(recipe), "data.train.path=nope.jsonl"], "nope.jsonl"),
        (["distill", str(recipe), "student.model=./no/such/model"], "model './no/such/model' not found"),
        (["eval", "./no/such/model", "--suite", "multiarith"], "not found"),
    ]:
        r = toolkit(*args, cwd=tmp_path)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        assert "Traceback" not in r.stderr
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], (args, r.stderr)


def test_distill_end_to_end_then_cached_rerun_sends_nothing(recipe, tmp_path, teacher_server):
    before = teacher_server.requests_served()
    r = toolkit("distill", str(recipe), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert teacher_server.requests_served() - before == 12  # 6 problems × 2 rationales
    run = tmp_path / "runs" / "tiny"
    manifest = json.loads((run / "manifest.json").read_text())
    stages = manifest["stages"]
    assert list(stages) == ["data", "round-0/rationales", "eval/base", "round-0/train", "round-0/eval"]
    assert all(s["status"] == "done" and s["seconds"] >= 0 for s in stages.values())
    assert stages["data"] == {**stages["data"], "train": 6, "heldout": 2}
    rat = stages["round-0/rationales"]
    assert rat["requested"] == 12 and 1 <= rat["kept"] <= 12 and rat["teacher_requests_sent"] == 12
    assert stages["round-0/train"]["steps"] == 2
    assert manifest["recipe_sha256"] and manifest["versions"]["torch"] and manifest["seed"] == 0
    assert (run / "round-0" / "student" / "config.json").is_file()
    kept = [json.loads(line) for line in (run / "round-0" / "train.jsonl").read_text().splitlines()]
    assert len(kept) == rat["kept"] and all(k["completion"].endswith(".") for k in kept)
    results = json.loads((run / "round-0" / "eval" / "results.json").read_text())
    assert results["results"]["heldout"]["n"] == 2 and results["backend"] == "torch"
    samples = (run / "round-0" / "eval" / "samples_heldout.jsonl").read_text().splitlines()
    assert len(samples) == 2 and {"id", "prompt", "output", "gold", "strict", "flexible"} <= set(json.loads(samples[0]))
    assert "distilled (round 0)" in r.stdout and "stage times" in r.stdout
    assert not list(run.rglob("*.tmp")) and not list(run.rglob(".*.tmp"))

    # Resume of a finished run: every stage is skipped, no request is sent.
    again = toolkit("distill", str(recipe), cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "▶" not in again.stdout
    # A fresh run folder with the same cache: the teacher is asked nothing.
    fresh = toolkit("distill", str(recipe), "--fresh", cwd=tmp_path)
    assert fresh.returncode == 0, fresh.stderr
    assert teacher_server.requests_served() - before == 12
    fresh_manifest = json.loads((run / "manifest.json").read_text())
    assert fresh_manifest["stages"]["round-0/rationales"]["teacher_requests_sent"] == 0
    assert fresh_manifest["stages"]["round-0/rationales"]["kept"] == rat["kept"]
    # A changed recipe refuses to mix into the old run folder.
    changed = toolkit("distill", str(recipe), "seed=1", cwd=tmp_path)
    assert changed.returncode == 2 and "different recipe" in changed.stderr


def test_eval_cli_writes_results_and_samples(tiny_model_dir, tmp_path, data_root):
    out = tmp_path / "res" / "results.json"
    r = toolkit("eval", str(tiny_model_dir), "--suite", "multiarith,addsub", "--limit", "3",
                "--max-new-tokens", "8", "--data-root", str(data_root), "--out", str(out), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    res = json.loads(out.read_text())
    assert set(res["results"]) == {"multiarith", "addsub"}
    for suite in ("multiarith", "addsub"):
        m = res["results"][suite]
        assert m["n"] == 3 and 0 <= m["strict_match"] <= 1 and "flexible_extract_stderr" in m
        assert len((out.parent / f"samples_{suite}.jsonl").read_text().splitlines()) == 3
    assert res["backend"] == "torch" and res["model"] == str(tiny_model_dir) and res["versions"]["transformers"]
