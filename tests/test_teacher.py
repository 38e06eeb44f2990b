"""Teacher: the request cache, a real llama.cpp server on loopback, retries and unreachable endpoints."""
from __future__ import annotations

import os

import pytest

from toolkit.teacher.cache import RequestCache, request_key
from toolkit.core.errors import TeacherError
from toolkit.runtime.llama_server import LlamaServer, free_port
from toolkit.core.recipe import TeacherConfig
from toolkit.teacher.teachers import OpenAITeacher, open_teacher

PROMPTS = [[{"role": "user", "content": "What is 2 + 3? Reply with the number."}],
           [{"role": "user", "content": "Name a colour."}]]


def test_cache_persists_and_keys_differ(tmp_path):
    msgs = PROMPTS[0]
    k0 = request_key("m", msgs, {"temperature": 0.7}, 0)
    assert k0 != request_key("m", msgs, {"temperature": 0.7}, 1)
    assert k0 != request_key("m", msgs, {"temperature": 0.5}, 0)
    assert k0 != request_key("other", msgs, {"temperature": 0.7}, 0)
    assert k0 == request_key("m", [dict(m) for m in msgs], {"temperature": 0.7}, 0)
    cache = RequestCache(tmp_path / "c.sqlite")
    assert cache.get(k0) is None
    cache.put(k0, "m", {"messages": msgs}, "five")
    cache.close()
    again = RequestCache(tmp_path / "c.sqlite")
    assert again.get(k0) == "five" and len(again) == 1


@pytest.fixture(scope="module")
def server(smollm2_gguf, tmp_path_factory):
    log = tmp_path_factory.mktemp("srv") / "server.log"
    with LlamaServer(smollm2_gguf, log, n_ctx=1024, threads=2) as srv:
        yield srv
    assert srv.proc.poll() is not None  # stopped by PID


def test_real_server_answers_and_cache_prevents_repeats(server, tmp_path):
    cache = RequestCache(tmp_path / "c.sqlite")
    before = server.requests_served()
    teacher = OpenAITeacher(server.base_url, "smollm2", cache, max_tokens=12)
    out = teacher.complete(PROMPTS, n=2, temperature=0.7)
    assert len(out) == 2 and all(len(o) == 2 and all(isinstance(t, str) and t for t in o) for o in out)
    assert server.requests_served() - before == 4
    again = OpenAITeacher(server.base_url, "smollm2", cache, max_tokens=12).complete(PROMPTS, n=2, temperature=0.7)
    assert again == out
    assert server.requests_served() - before == 4  # all four came from the cache
    # Asking for a third sample pays only for the new ones.
    OpenAITeacher(server.base_url, "smollm2", cache, max_tokens=12).complete(PROMPTS, n=3, temperature=0.7)
    assert server.requests_served() - before == 6


def test_unreachable_teacher_is_one_clear_error_and_keeps_the_cache(tmp_path):
    cache = RequestCache(tmp_path / "c.sqlite")
    url = f"http://127.0.0.1:{free_port()}/v1"
    params = {"temperature": 0.0, "max_tokens": 8, "seed": 0}
    cache.put(request_key("m", PROMPTS[0], params, 0), "m", {}, "5")
    teacher = OpenAITeacher(url, "m", cache, max_tokens=8, max_retries=1, timeout_s=2)
    with pytest.raises(TeacherError, match=r"teacher at http://127.0.0.1:\d+/v1 failed 2 times \(APIConnectionError"):
        teacher.complete(PROMPTS, n=1, temperature=0.0)
    assert teacher.requests_sent == 2
    assert len(cache) == 1 and cache.get(request_key("m", PROMPTS[0], params, 0)) == "5"


def test_llama_cpp_teacher_starts_only_on_a_cache_miss_and_stops(smollm2_gguf, tmp_path):
    cfg = TeacherConfig(model=str(smollm2_gguf), max_tokens=8, threads=2)
    cache = RequestCache(tmp_path / "c.sqlite")
    log_dir = tmp_path / "logs"
    with open_teacher(cfg, cache, base_dir=tmp_path, log_dir=log_dir, seed=0) as t:
        first = t.complete(PROMPTS[:1], n=1, temperature=0.0)
        assert t.server.proc.poll() is None
    assert t.server.proc.poll() is not None  # stopped by PID when the block ends
    log = (log_dir / "teacher-server.log").read_text()
    assert log.count("POST /v1/chat/completions") == 1
    os.rename(log_dir / "teacher-server.log", log_dir / "first.log")
    with open_teacher(cfg, cache, base_dir=tmp_path, log_dir=log_dir, seed=0) as t:
        assert t.complete(PROMPTS[:1], n=1, temperature=0.0) == first
    assert not (log_dir / "teacher-server.log").exists()  # fully cached: no server was started
    assert t.server.proc is None


def test_llama_cpp_teacher_rejects_non_gguf(tmp_path):
    cfg = TeacherConfig(model=str(tmp_path))
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(TeacherError, match="needs a GGUF model"):
        with open_teacher(cfg, RequestCache(tmp_path / "c.sqlite"), base_dir=tmp_path, log_dir=tmp_path, seed=0):
            pass
