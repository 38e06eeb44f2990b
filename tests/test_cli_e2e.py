"""The real `toolkit` CLI end to end on a tiny recipe, against a real llama.cpp teacher on loopback."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import toolkit, write_tiny_recipe
from toolkit.eval.machine import cpu_features, cpu_model


@pytest.fixture()
def recipe(tmp_path, tiny_model_dir, teacher_server) -> Path:
    return write_tiny_recipe(tmp_path, tiny_model_dir, teacher_server.base_url)


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
    assert "12 in round 0 (2 rationales per problem" in r.stdout
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
    # the CPU and its kernel flags, which speed and peak memory move with
    assert manifest["machine"]["cpu"] == cpu_model() and manifest["machine"]["cpu_features"] == cpu_features()
    assert cpu_features() or not Path("/proc/cpuinfo").is_file()
    assert (run / "round-0" / "student" / "config.json").is_file()
    kept = [json.loads(line) for line in (run / "round-0" / "train.jsonl").read_text().splitlines()]
    assert len(kept) == rat["kept"] and all(k["completion"].endswith(".") for k in kept)
    results = json.loads((run / "round-0" / "eval" / "results.json").read_text())
    assert results["results"]["heldout"]["n"] == 2 and results["backend"] == "torch"
    samples = (run / "round-0" / "eval" / "samples_heldout.jsonl").read_text().splitlines()
    assert len(samples) == 2 and {"id", "prompt", "output", "gold", "strict", "flexible"} <= set(json.loads(samples[0]))
    assert "round-0" in r.stdout and "stage times" in r.stdout
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


def test_eval_cli_llama_cpp_backend_on_the_packaged_gguf(smollm2_gguf, tmp_path, data_root):
    out = tmp_path / "results.json"
    r = toolkit("eval", "pkg:smollm2-135m-instruct", "--suite", "multiarith", "--limit", "2", "--threads", "2",
                "--max-new-tokens", "24", "--data-root", str(data_root), "--out", str(out), "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    res = json.loads(out.read_text())
    assert res["backend"] == "llama.cpp" and res["results"]["multiarith"]["n"] == 2
    assert json.loads(r.stdout)["multiarith"]["n"] == 2
    samples = [json.loads(line) for line in (tmp_path / "samples_multiarith.jsonl").read_text().splitlines()]
    assert all(s["output"].strip() for s in samples)  # a real model wrote real text


def test_unreachable_teacher_ends_with_one_line_and_keeps_the_data_stage(recipe, tmp_path):
    from toolkit.runtime.llama_server import free_port

    # Another model name: nothing of it is in the cache, so the run must reach the endpoint.
    r = toolkit("distill", str(recipe), f"teacher.base_url=http://127.0.0.1:{free_port()}/v1",
                "teacher.model=nobody", "teacher.max_retries=1", "teacher.timeout_s=2", cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().startswith("error: teacher at http://127.0.0.1:")
    assert len(r.stderr.strip().splitlines()) == 1
    manifest = json.loads((tmp_path / "runs" / "tiny" / "manifest.json").read_text())
    assert list(manifest["stages"]) == ["data"]  # finished work is kept for the resumed run
    assert (tmp_path / "runs" / "tiny" / "round-0" / "problems.jsonl").is_file()


def _holders(path: Path) -> list[int]:
    """PIDs of live processes whose stdout is `path` (the teacher server writes its log there)."""
    pids = []
    for fd in Path("/proc").glob("[0-9]*/fd/1"):
        try:
            if Path(os.readlink(fd)) == path:
                pids.append(int(fd.parts[2]))
        except OSError:
            continue
    return pids


def test_sigterm_stops_the_teacher_server_and_keeps_the_run(tiny_model_dir, smollm2_gguf, tmp_path):
    """A `kill` (SIGTERM) of the CLI while its own llama.cpp teacher serves ends like Ctrl-C: exit 130,
    the resume hint, and no server left running on its own."""
    recipe = write_tiny_recipe(tmp_path, tiny_model_dir, "http://127.0.0.1:9/v1")
    text = recipe.read_text().replace("  backend: openai\n  base_url: http://127.0.0.1:9/v1\n",
                                      "  backend: llama.cpp\n  threads: 1\n  n_ctx: 512\n")
    recipe.write_text(text.replace("model: smollm2", f"model: {smollm2_gguf}"))
    log = tmp_path / "runs" / "tiny" / "logs" / "teacher-server.log"
    proc = subprocess.Popen([sys.executable, "-m", "toolkit.cli", "distill", str(recipe)], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not _holders(log) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert _holders(log), "the run never started its teacher server"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert "run again to resume" in err and "Traceback" not in err
    assert _holders(log) == []
    assert (tmp_path / "runs" / "tiny" / "manifest.json").is_file()  # the data stage stays recorded
