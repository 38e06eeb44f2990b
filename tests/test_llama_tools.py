"""llama.cpp's own llama-server as the teacher: found on PATH or in the cached build, several slots at once."""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from toolkit.teacher.cache import RequestCache
from toolkit.core.errors import ModelError
from toolkit.runtime.llama_tools import find_tool, require_tool, tools_dir
from toolkit.core.recipe import TeacherConfig
from toolkit.teacher.teachers import open_teacher

REPO = Path(__file__).resolve().parents[1]


def test_users_binary_on_path_comes_first(tmp_path, monkeypatch):
    own = tmp_path / "own"
    own.mkdir()
    exe = own / "llama-server"
    exe.write_text("#!/bin/sh\n")
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{own}{os.pathsep}{os.environ['PATH']}")
    assert find_tool("llama-server") == exe


def test_missing_binary_says_how_to_build_it(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setenv("TOOLKIT_LLAMA_TOOLS", str(tmp_path / "none"))
    with pytest.raises(ModelError, match="scripts/build-llama-tools.sh"):
        require_tool("llama-server")


def test_unknown_server_is_a_recipe_error():
    with pytest.raises(ValueError):
        TeacherConfig(model="pkg:smollm2-135m-instruct", server="ollama")


@pytest.mark.skipif(find_tool("llama-server") is None,
                    reason=f"llama-server not on PATH nor built in {tools_dir() / 'bin'} "
                           "(run scripts/build-llama-tools.sh)")
def test_llama_server_teacher_with_two_slots(smollm2_gguf, tmp_path):
    """A recipe's teacher on llama-server with 2 slots: two requests in flight, both answered and cached."""
    cfg = TeacherConfig(model=str(smollm2_gguf), server="llama-server", slots=2, max_tokens=24, n_ctx=512,
                        threads=1)
    cache = RequestCache(tmp_path / "cache.sqlite")
    questions = ["What is 2 plus 3?", "What is 4 plus 4?", "What is 10 minus 3?", "What is 1 plus 1?"]
    try:
        with open_teacher(cfg, cache, base_dir=tmp_path, log_dir=tmp_path / "logs", seed=0) as teacher:
            assert teacher.concurrency == 2  # raised to the slot count
            outs = teacher.complete([[{"role": "user", "content": q}] for q in questions], n=1, temperature=0.0)
            served = teacher.server.requests_served()
            # The launcher (toolkit/core/lifetime.py) execs the server in its own PID: the running binary is llama.cpp's.
            assert Path(os.readlink(f"/proc/{teacher.server.proc.pid}/exe")).name == "llama-server"
            assert "-np" in teacher.server.proc.args
        assert [len(o) for o in outs] == [1, 1, 1, 1] and all(o[0].strip() for o in outs)
        assert served == teacher.requests_sent == 4
        # A second pass is answered from the cache: no server is started.
        with open_teacher(cfg, cache, base_dir=tmp_path, log_dir=tmp_path / "logs2", seed=0) as teacher:
            again = teacher.complete([[{"role": "user", "content": q}] for q in questions], n=1, temperature=0.0)
            assert teacher.requests_sent == 0
        assert again == outs
    finally:
        cache.close()


@pytest.mark.skipif(find_tool("llama-server") is None or find_tool("llama-batched-bench") is None,
                    reason="llama-server or llama-batched-bench not built (run scripts/build-llama-tools.sh)")
def test_teacher_slots_bench_counts_the_servers_tokens(smollm2_gguf, tmp_path):
    """bench/teacher_slots.py end to end on a small model: the server's own token count for every
    request, the prompt length it read from the log, and llama-batched-bench's bound per setting."""
    out = tmp_path / "slots.json"
    subprocess.run([sys.executable, "bench/teacher_slots.py", "--model", "pkg:smollm2-135m-instruct",
                    "--slots", "1,2", "--requests", "4", "--max-tokens", "8", "--threads", "1", "--force",
                    "--out", str(out)], cwd=REPO, check=True, capture_output=True, timeout=300)
    result = json.loads(out.read_text())
    assert [r["slots"] for r in result["rows"]] == [1, 2]
    for row in result["rows"]:
        assert row["requests_sent"] == 4  # every request reached the server once, none from a cache
        assert 4 <= row["completion_tokens"] <= 4 * 8  # from the server's log, capped by max_tokens
        assert row["prompt_tokens"] > 100  # the few-shot teacher prompt, not just the question
        # each request computed at least its own question's tokens; the shared few-shot part may come from a cache
        assert 4 * 10 <= row["prompt_tokens_computed"] <= 4 * row["prompt_tokens"] + 8
        # prefill costs time, so the prefill-aware bound is the lower one and the server keeps more of it
        assert row["share_of_prefill_aware_bound"] > row["share_of_bound"] > 0
    decode = result["engine_ceiling"]["decode"]
    assert [d["sequences"] for d in decode] == [1, 2] and all(d["tokens_per_s"] > 0 for d in decode)
    assert result["rows"][0]["engine_bound"] == 1.0 and result["rows"][1]["engine_bound"] > 0


@pytest.mark.skipif(find_tool("llama-bench") is None, reason="llama-bench not built (run scripts/build-llama-tools.sh)")
def test_decode_settings_bench_runs_every_setting_against_the_default(smollm2_gguf, tmp_path, monkeypatch):
    """bench/decode_settings.py on a small model: every setting's flags are ones this llama-bench accepts (a
    refused flag fails the run), each gets a row, and the default is the ratios' 1."""
    out = tmp_path / "settings.json"
    subprocess.run([sys.executable, "bench/decode_settings.py", str(smollm2_gguf), "--threads", "1", "--passes", "1",
                    "--reps", "1", "--gen-tokens", "4", "--depth", "8", "--force", "--out", str(out)],
                   cwd=REPO, check=True, capture_output=True, timeout=300)
    rows = json.loads(out.read_text())["rows"]
    monkeypatch.syspath_prepend(str(REPO / "bench"))
    from decode_settings import SETTINGS

    assert [r["setting"] for r in rows] == list(SETTINGS)
    assert all(r["decode_tok_s"] > 0 and r["runs"] == [r["decode_tok_s"]] for r in rows)
    assert rows[0]["setting"] == "default" and rows[0]["over_default"] == 1.0
