"""Teacher faults: a real fault-injecting server; retries, Retry-After, a dead teacher, kill -9 and resume."""
from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from email.utils import formatdate
from pathlib import Path

import pytest

from tests.conftest import DATA, toolkit, write_tiny_recipe
from tests.fault_teacher import FAULTS, FaultTeacher, answer
from toolkit.teacher.cache import RequestCache
from toolkit.teacher.endpoints import backoff_s, retry_after_s
from toolkit.core.errors import TeacherError
from toolkit.teacher.teachers import OpenAITeacher

QUESTIONS = [f"What is {a} plus {b}?" for a, b in zip(range(2, 14), range(30, 42))]
PROMPTS = [[{"role": "user", "content": q}] for q in QUESTIONS]
# Every fault kind at a seeded rate; together about half of all first attempts fail.
RATES = {"rate_limit": 0.1, "server_error": 0.1, "hang": 0.04, "disconnect": 0.08, "malformed": 0.08,
         "empty": 0.08}


def test_backoff_honours_retry_after_and_jitters():
    rng = random.Random(0)
    waits = [backoff_s(0, 2.0, rng) for _ in range(50)]
    assert all(2.0 <= w <= 2.4 for w in waits)  # never earlier than asked, at most 20% later
    assert len({round(w, 6) for w in waits}) == 50  # jittered: no two requests come back together
    plain = [backoff_s(r, None, rng, base_s=1.0) for r in range(8)]
    assert 0.5 <= plain[0] <= 1.5 and 4 <= plain[3] <= 12 and plain[7] <= 45  # doubling, capped at 30 s ×1.5
    assert backoff_s(0, 10_000, rng) <= 120 * 1.2  # a server asking for hours is not obeyed for hours
    assert retry_after_s({"retry-after": "3"}) == 3.0
    assert retry_after_s({"retry-after-ms": "250"}) == 0.25
    assert 5 <= retry_after_s({"retry-after": formatdate(time.time() + 7, usegmt=True)}) <= 7
    assert retry_after_s({"retry-after": "soon"}) is None and retry_after_s({}) is None


def _teacher(url: str, cache: RequestCache, **kw) -> OpenAITeacher:
    opts = dict(max_tokens=16, concurrency=4, timeout_s=3, max_retries=6, backoff_base_s=0.05)
    return OpenAITeacher(url, "fault-model", cache, **{**opts, **kw})


def test_every_fault_kind_is_survived_and_each_request_answered_once(tmp_path):
    cache = RequestCache(tmp_path / "c.sqlite")
    with FaultTeacher(tmp_path / "log.jsonl", seed=3, rates=RATES, hang_s=4) as srv:
        teacher = _teacher(srv.base_url, cache)
        out = teacher.complete(PROMPTS, n=2, temperature=0.7)
        rows = srv.rows()
    # Each answer is the server's answer to exactly that request (seed = sample index here).
    for q, pair in zip(QUESTIONS, out):
        for j, text in enumerate(pair):
            body = {"messages": [{"role": "user", "content": q}], "model": "fault-model", "temperature": 0.7,
                    "max_tokens": 16, "seed": j}
            assert text == answer(body)
    seen = {r["fault"] for r in rows}
    assert set(FAULTS) <= seen, f"the seeded schedule should exercise every fault, saw {seen}"
    answered = {}
    for r in rows:
        answered[r["body"]] = answered.get(r["body"], 0) + (r["fault"] == "ok")
    assert len(answered) == 24 and set(answered.values()) == {1}  # every request answered exactly once
    assert len(cache) == 24 and teacher.requests_sent == len(rows)
    # Cached now: a second pass sends nothing.
    again = _teacher("http://127.0.0.1:9/v1", cache)
    assert again.complete(PROMPTS, n=2, temperature=0.7) == out and again.requests_sent == 0


def test_retry_waits_at_least_retry_after(tmp_path):
    cache = RequestCache(tmp_path / "c.sqlite")
    with FaultTeacher(tmp_path / "log.jsonl", rates={"rate_limit": 1.0}, max_faults=2, retry_after=1) as srv:
        _teacher(srv.base_url, cache, backoff_base_s=20.0).complete(PROMPTS[:1], n=1, temperature=0.0)
        t = [r["t"] for r in srv.rows()]
    assert [r["fault"] for r in srv.rows()] == ["rate_limit", "rate_limit", "ok"]
    # Retry-After: 1 is honoured (not sooner) and wins over the 10–30 s exponential backoff.
    assert all(1.0 <= b - a < 5 for a, b in zip(t, t[1:])), t


def test_teacher_down_for_good_ends_with_one_message_and_keeps_what_it_got(tmp_path):
    cache = RequestCache(tmp_path / "c.sqlite")
    with FaultTeacher(tmp_path / "log.jsonl") as srv:
        _teacher(srv.base_url, cache).complete(PROMPTS[:4], n=1, temperature=0.0)
        srv.control(down=True)
        teacher = _teacher(srv.base_url, cache, concurrency=2, max_retries=2)
        with pytest.raises(TeacherError) as err:
            teacher.complete(PROMPTS, n=1, temperature=0.0)
        down = [r for r in srv.rows() if r["fault"] == "down"]
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(f"teacher at {srv.base_url} failed 3 times (InternalServerError")
    assert msg.endswith("4 of 12 requests are done and cached, run again to resume")
    assert len(cache) == 4
    # The first request that fails for good stops the rest: no request starts after it.
    assert len(down) <= 2 * 3 < 8 * 3


def test_refused_request_names_the_key_variable(tmp_path, monkeypatch):
    monkeypatch.setenv("FAULT_KEY", "right-key")
    with FaultTeacher(tmp_path / "log.jsonl", api_key_env="FAULT_KEY") as srv:
        ok = OpenAITeacher(srv.base_url, "m", RequestCache(tmp_path / "c.sqlite"), api_key="right-key")
        ok.complete(PROMPTS[:1], n=1, temperature=0.0)
        assert srv.rows()[-1]["auth"] is True


# -- end to end: `toolkit distill` against the fault server --------------------------------------
# timeout_s 3: a good answer is sent in milliseconds, but on a loaded machine a tighter timeout could
# expire on an answer already sent, and that request would then (rightly) be answered twice.
FAULTY = [f"data.root={DATA}", "distill.rounds=2", "distill.new_per_problem=2", "distill.label_solves=2",
          "distill.vote_min=1", "teacher.concurrency=3", "teacher.timeout_s=3", "teacher.max_retries=6",
          "teacher.backoff_s=0.05", "seed=5"]


def _cache_size() -> int:
    path = Path(os.environ["TOOLKIT_CACHE"]) / "teacher.sqlite"
    if not path.is_file():
        return 0
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5) as db:
        return db.execute("SELECT COUNT(*) FROM completions").fetchone()[0]


def _kill_when_stalled(cmd: list[str], cwd: Path, srv: FaultTeacher, timeout: float = 240) -> None:
    """Run the CLI until the server holds a request and every answered one is cached, then kill -9."""
    since = len(srv.rows())
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, env={**os.environ, "NO_COLOR": "1"})
    deadline = time.monotonic() + timeout
    try:
        while True:
            rows = srv.rows()
            if any(r["fault"] == "stalled" for r in rows[since:]) and \
                    _cache_size() == sum(r["fault"] == "ok" for r in rows):
                break
            assert proc.poll() is None, f"the run ended before the kill point: {proc.stderr.read()[-2000:]}"
            assert time.monotonic() < deadline, "kill point never reached"
            time.sleep(0.1)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stderr.close()


def _stages(run: Path) -> dict:
    return json.loads((run / "manifest.json").read_text())["stages"]


@pytest.mark.slow
def test_distill_through_faults_then_kill_9_and_resume_repeat_no_request(tmp_path, tiny_model_dir, monkeypatch):
    # 1. A whole two-round run through seeded faults: every request is answered exactly once.
    ref = tmp_path / "ref"
    ref.mkdir()
    with FaultTeacher(tmp_path / "ref.jsonl", seed=5, rates=RATES, hang_s=4) as srv:
        recipe = write_tiny_recipe(ref, tiny_model_dir, srv.base_url)
        r = toolkit("distill", str(recipe), *FAULTY, cwd=ref)
        assert r.returncode == 0, r.stderr
        answered = srv.answered()
        faults = {x["fault"] for x in srv.rows()}
    assert set(answered.values()) == {1} and len(answered) == _cache_size()
    assert {"rate_limit", "server_error", "malformed", "empty", "disconnect"} <= faults
    stages = _stages(ref / "runs" / "tiny")
    assert stages["round-0/rationales"]["kept"] > 0 and stages["round-1/labels"]["accepted"] > 0
    # Every teacher request of the run went through the server: rationales, questions, labels.
    assert len(answered) == (stages["round-0/rationales"]["requested"] + stages["round-1/questions"]["requests"]
                             + 2 * stages["round-1/labels"]["questions"])

    # 2. The same run killed -9 at a random moment of the rationales and of the voting, then resumed.
    monkeypatch.setenv("TOOLKIT_CACHE", str(tmp_path / "kill-cache"))
    rng = random.Random(int(os.environ.get("TOOLKIT_FAULT_SEED", "11")))
    work = tmp_path / "killed"
    work.mkdir()
    with FaultTeacher(tmp_path / "killed.jsonl", seed=5, rates=RATES, hang_s=4) as srv:
        recipe = write_tiny_recipe(work, tiny_model_dir, srv.base_url)
        cmd = [sys.executable, "-m", "toolkit.cli", "distill", str(recipe), *FAULTY]
        run = work / "runs" / "tiny"
        rationales = stages["round-0/rationales"]["requested"]
        srv.control(stall_after=rng.randint(1, rationales - 1))
        _kill_when_stalled(cmd, work, srv)
        assert "round-0/rationales" not in _stages(run)
        before_labels = rationales + stages["round-1/questions"]["requests"]
        srv.control(stall_after=before_labels + rng.randint(1, 2 * stages["round-1/labels"]["questions"] - 1))
        _kill_when_stalled(cmd, work, srv)
        assert "round-1/questions" in _stages(run) and "round-1/labels" not in _stages(run)  # amid the vote
        srv.control(stall_after=None)
        done = toolkit(*cmd[3:], cwd=work)
        assert done.returncode == 0, done.stderr
        resumed = srv.answered()
    assert resumed.keys() == answered.keys() and set(resumed.values()) == {1}  # no request paid twice
    for rel in ("round-0/rationales.jsonl", "round-0/train.jsonl", "round-1/questions.jsonl",
                "round-1/votes.jsonl", "round-1/generated.jsonl", "round-1/train.jsonl"):
        assert (run / rel).read_text() == (ref / "runs/tiny" / rel).read_text(), rel
