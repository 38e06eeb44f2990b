"""Several teacher endpoints: spread by weight, a concurrency limit each, failover, endpoint-free cache keys."""
from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path

import pytest

from tests.fault_teacher import FaultTeacher
from toolkit.teacher.cache import RequestCache
from toolkit.teacher.endpoints import DOWN_AFTER, Endpoint
from toolkit.core.errors import RecipeError, TeacherError
from toolkit.runtime.llama_server import free_port
from toolkit.core.recipe import TeacherConfig, load_recipe
from toolkit.teacher.teachers import OpenAITeacher, endpoints_of

PROMPTS = [[{"role": "user", "content": f"What is {i} plus {i + 7}?"}] for i in range(24)]


def _teacher(endpoints: list[Endpoint], cache: RequestCache, **kw) -> OpenAITeacher:
    opts = dict(max_tokens=16, timeout_s=5, max_retries=2, backoff_base_s=0.05)
    return OpenAITeacher(endpoints, "m", cache, **{**opts, **kw})


def _max_in_flight(rows: list[dict]) -> int:
    """The most requests a server was working on at one moment (from arrival and end times)."""
    events = sorted([(r["t0"], 1) for r in rows] + [(r["t"], -1) for r in rows])
    now = peak = 0
    for _, step in events:
        now += step
        peak = max(peak, now)
    return peak


def test_requests_spread_by_weight_within_each_endpoints_limit(tmp_path):
    with ExitStack() as stack:
        a = stack.enter_context(FaultTeacher(tmp_path / "a.jsonl", delay_s=0.05))
        b = stack.enter_context(FaultTeacher(tmp_path / "b.jsonl", delay_s=0.05))
        eps = [Endpoint(a.base_url, weight=1, concurrency=1), Endpoint(b.base_url, weight=3, concurrency=3)]
        out = _teacher(eps, RequestCache(tmp_path / "c.sqlite")).complete(PROMPTS, n=2, temperature=0.7)
        rows_a, rows_b = a.rows(), b.rows()
    assert all(len(pair) == 2 and all(pair) for pair in out)
    assert len(rows_a) + len(rows_b) == 48 and {r["body"] for r in rows_a}.isdisjoint(r["body"] for r in rows_b)
    assert 0.55 <= len(rows_b) / 48 <= 0.95  # weight 3 of 4, and the larger limit
    assert _max_in_flight(rows_a) == 1  # the limit of each endpoint holds …
    assert _max_in_flight(rows_b) == 3  # … and is used


def test_failover_when_an_endpoint_is_down(tmp_path):
    dead = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens: connection refused
    with FaultTeacher(tmp_path / "b.jsonl") as b:
        eps = [Endpoint(dead, weight=10, concurrency=2), Endpoint(b.base_url, weight=1, concurrency=2)]
        teacher = _teacher(eps, RequestCache(tmp_path / "c.sqlite"))
        out = teacher.complete(PROMPTS, n=1, temperature=0.0)
        answered = b.answered()
    assert all(o[0] for o in out) and len(answered) == 24 and set(answered.values()) == {1}
    # The dead endpoint, though ten times heavier, is dropped after a few failures in a row.
    assert eps[0].answered == 0 and eps[0].sent <= DOWN_AFTER + 2 and eps[1].answered == 24


def test_all_endpoints_down_is_one_error_naming_them(tmp_path):
    urls = [f"http://127.0.0.1:{free_port()}/v1" for _ in range(2)]
    teacher = _teacher([Endpoint(u) for u in urls], RequestCache(tmp_path / "c.sqlite"), max_retries=1)
    with pytest.raises(TeacherError, match=rf"teacher at {urls[0]}, {urls[1]} failed 4 times \(APIConnectionError"):
        teacher.complete(PROMPTS[:3], n=1, temperature=0.0)


def test_an_endpoint_that_refuses_our_key_is_dropped_and_the_others_answer(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("FAULT_KEY", "right")
    with ExitStack() as stack:
        a = stack.enter_context(FaultTeacher(tmp_path / "a.jsonl", api_key_env="FAULT_KEY"))
        b = stack.enter_context(FaultTeacher(tmp_path / "b.jsonl"))
        eps = [Endpoint(a.base_url, weight=10, concurrency=2, api_key="wrong"), Endpoint(b.base_url, concurrency=2)]
        out = _teacher(eps, RequestCache(tmp_path / "c.sqlite")).complete(PROMPTS, n=1, temperature=0.0)
        rows_a, answered_b = a.rows(), b.answered()
    assert all(o[0] for o in out) and len(answered_b) == 24 and set(answered_b.values()) == {1}
    # Ten times heavier, yet asked only by the requests already on their way to it (its 2 slots).
    assert {r["fault"] for r in rows_a} == {"unauthorized"} and len(rows_a) <= 2
    assert eps[0].refused.startswith("Error code: 401") and eps[1].answered == 24
    assert f"teacher at {a.base_url} refused the request" in caplog.text


def test_every_endpoint_refusing_is_one_error_naming_each(tmp_path, monkeypatch):
    monkeypatch.setenv("FAULT_KEY", "right")
    with ExitStack() as stack:
        a = stack.enter_context(FaultTeacher(tmp_path / "a.jsonl", api_key_env="FAULT_KEY"))
        b = stack.enter_context(FaultTeacher(tmp_path / "b.jsonl", api_key_env="FAULT_KEY"))
        eps = [Endpoint(a.base_url, api_key="wrong"), Endpoint(b.base_url, api_key="wrong")]
        teacher = _teacher(eps, RequestCache(tmp_path / "c.sqlite"), api_key_env="FAULT_KEY")
        with pytest.raises(TeacherError) as err:
            teacher.complete(PROMPTS[:4], n=1, temperature=0.0)
    first, second = (a, b) if eps[0].refused else (b, a)
    assert str(err.value).startswith(f"teacher at {second.base_url} refused the request: Error code: 401")
    assert f"(the API key comes from $FAULT_KEY); {first.base_url} refused earlier: Error code: 401" in str(err.value)
    assert str(err.value).endswith("0 of 4 requests are done and cached, run again to resume")


def test_cache_key_does_not_depend_on_the_endpoint(tmp_path):
    cache = RequestCache(tmp_path / "c.sqlite")
    with FaultTeacher(tmp_path / "a.jsonl") as a:
        first = _teacher([Endpoint(a.base_url)], cache).complete(PROMPTS[:5], n=2, temperature=0.7)
    with FaultTeacher(tmp_path / "b.jsonl") as b:
        teacher = _teacher([Endpoint(b.base_url, weight=2), Endpoint(f"http://127.0.0.1:{free_port()}/v1")], cache)
        assert teacher.complete(PROMPTS[:5], n=2, temperature=0.7) == first
        assert teacher.requests_sent == 0 and b.rows() == []


def _recipe(tmp_path: Path, teacher: str) -> Path:
    path = tmp_path / "r.yaml"
    path.write_text(f"name: r\ndata:\n  train: {{path: x.jsonl}}\nstudent: {{model: s}}\nteacher:\n{teacher}")
    return path


def test_recipe_endpoint_list_and_its_keys(tmp_path, monkeypatch):
    teacher = ("  model: m\n  backend: openai\n  concurrency: 2\n  api_key_env: MAIN_KEY\n  endpoints:\n"
               "    - {base_url: 'http://a:8000/v1', weight: 3, concurrency: 8}\n"
               "    - {base_url: 'https://b/v1', api_key_env: B_KEY}\n")
    cfg = load_recipe(_recipe(tmp_path, teacher)).teacher
    monkeypatch.setenv("MAIN_KEY", "k-main")
    monkeypatch.setenv("B_KEY", "k-b")
    eps = endpoints_of(cfg)
    assert [(e.base_url, e.weight, e.concurrency, e.api_key) for e in eps] == [
        ("http://a:8000/v1", 3.0, 8, "k-main"), ("https://b/v1", 1.0, 2, "k-b")]
    # Backward compatible: a single base_url is one endpoint.
    single = TeacherConfig(model="m", backend="openai", base_url="http://a/v1", concurrency=4)
    assert [(e.base_url, e.weight, e.concurrency) for e in endpoints_of(single)] == [("http://a/v1", 1.0, 4)]


@pytest.mark.parametrize("teacher, message", [
    ("  model: m\n  backend: openai\n", "needs base_url or endpoints"),
    ("  model: m\n  backend: openai\n  base_url: http://a/v1\n  endpoints: [{base_url: 'http://b/v1'}]\n",
     "not both"),
    ("  model: m\n  backend: openai\n  endpoints: []\n", "teacher.endpoints: List should have at least 1 item"),
    ("  model: m\n  backend: openai\n  endpoints: [{base_url: 'http://b/v1', weight: 0}]\n",
     "teacher.endpoints.0.weight: Input should be greater than 0"),
    ("  model: m\n  backend: openai\n  endpoints: [{base_url: 'http://b/v1', concurrency: -1}]\n",
     "teacher.endpoints.0.concurrency"),
    ("  model: m\n  backend: openai\n  endpoints: [{base_url: 'ftp://b'}]\n", "http:// or https://"),
    ("  model: m\n  base_url: http://a/v1\n", "backend 'llama.cpp' serves the model itself"),
])
def test_bad_endpoint_recipes_are_one_line(tmp_path, teacher, message):
    with pytest.raises(RecipeError) as err:
        load_recipe(_recipe(tmp_path, teacher))
    assert message in str(err.value) and "\n" not in str(err.value)
    assert str(err.value).startswith(f"{tmp_path / 'r.yaml'}:")
