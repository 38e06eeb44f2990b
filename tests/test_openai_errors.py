"""The OpenAI-compatible client's failures end as one line that names the server and never the key: the mapping
both generators share (toolkit/runtime/openai_generator.py's client_errors), met through the real client against
small local servers that fail on purpose."""
from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from toolkit.core.errors import ModelError
from toolkit.runtime.llama_server import free_port
from toolkit.runtime.openai_generator import OpenAIGenerator

KEY = "sk-test-0123456789abcdef"
PROMPT = [{"role": "user", "content": "What is 2 + 3?"}]


class _Failing(BaseHTTPRequestHandler):
    """Answers every request the way the server's `mode` says: 401 quoting the key, too late, or not JSON."""

    mode = "401"

    def _answer(self):
        if self.mode == "slow":
            time.sleep(2.0)
        body = (json.dumps({"error": {"message": f"invalid key {KEY}\nsecond line"}}) if self.mode == "401"
                else "<html>not json</html>")
        data = body.encode()
        self.send_response(401 if self.mode == "401" else 200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        try:
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up first (the slow mode)
            pass

    do_GET = do_POST = _answer

    def log_message(self, *args):
        pass


@pytest.fixture
def failing_server():
    servers = []

    def start(mode: str) -> str:
        handler = type("Handler", (_Failing,), {"mode": mode})
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/v1"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def _generator(url: str, monkeypatch, **kwargs) -> OpenAIGenerator:
    monkeypatch.setenv("TEST_ENDPOINT_KEY", KEY)
    return OpenAIGenerator(url, "m", api_key_env="TEST_ENDPOINT_KEY", concurrency=1, **kwargs)


def test_nothing_listening_is_unreachable(monkeypatch):
    url = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(ModelError) as err:
        _generator(url, monkeypatch).check()
    assert str(err.value) == f"OpenAI-compatible endpoint {url} is unreachable"


def test_a_refusal_is_one_line_with_the_key_redacted(failing_server, monkeypatch):
    url = failing_server("401")
    gen = _generator(url, monkeypatch)
    for call, request in ((gen.check, " to /models"), (lambda: gen.generate([PROMPT], 4), "")):
        with pytest.raises(ModelError) as err:
            call()
        assert str(err.value) == f"OpenAI-compatible endpoint {url} answered 401{request}: invalid key [redacted]"


def test_a_server_too_slow_did_not_answer_in_time(failing_server, monkeypatch):
    url = failing_server("slow")
    with pytest.raises(ModelError) as err:
        _generator(url, monkeypatch, timeout_s=0.3).generate([PROMPT], 4)
    assert str(err.value) == f"OpenAI-compatible endpoint {url} did not answer in time"


def test_an_unreadable_reply_is_one_line(failing_server, monkeypatch):
    url = failing_server("html")
    with pytest.raises(ModelError) as err:
        _generator(url, monkeypatch).generate([PROMPT], 4)
    assert str(err.value) == (f"OpenAI-compatible endpoint {url} sent a reply that is not JSON (is it an "
                              "OpenAI-compatible server?)")


def test_a_stopped_llama_server_ends_the_streamed_eval_in_one_line(smollm2_gguf):
    """The served llama.cpp backend streams raw completions (eval/openai_backend.py's _stream): a server that
    goes away mid-eval is one ModelError naming it, not the client's traceback."""
    from toolkit.eval.openai_backend import LlamaServerGenerator

    gen = LlamaServerGenerator(smollm2_gguf, n_ctx=512, threads=1)
    try:
        assert isinstance(gen.generate([PROMPT], max_new_tokens=4)[0], str)
        gen.server.stop()
        with pytest.raises(ModelError, match=r"^llama\.cpp server http://127\.0\.0\.1:\d+/v1 is unreachable$"):
            gen.generate([PROMPT], max_new_tokens=4)
    finally:
        gen.close()
