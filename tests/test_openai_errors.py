"""The OpenAI-compatible client's failures end as one line that names the server and never the key: the mapping
both generators share (toolkit/runtime/openai_generator.py's client_errors)."""
from __future__ import annotations

import httpx
import openai
import pytest

from toolkit.core.errors import ModelError
from toolkit.runtime.openai_generator import client_errors

URL = "http://127.0.0.1:9/v1"
KEY = "sk-test-0123456789abcdef"
REQUEST = httpx.Request("POST", URL + "/completions")


@pytest.mark.parametrize("exc, expected", [
    (openai.APIConnectionError(request=REQUEST), f"a server {URL} is unreachable"),
    (openai.APIStatusError(f"invalid key {KEY}\nsecond line", response=httpx.Response(401, request=REQUEST), body=None),
     f"a server {URL} answered 401 to a test: invalid key [redacted]"),
    (openai.APITimeoutError(request=REQUEST), f"a server {URL} did not answer in time"),
    (openai.OpenAIError(f"unreadable reply for {KEY}\nmore"), f"a server {URL} failed: unreadable reply for [redacted]"),
])
def test_each_client_failure_is_one_line_without_the_key(exc, expected):
    with pytest.raises(ModelError) as err, client_errors("a server", URL, KEY, " to a test"):
        raise exc
    assert str(err.value) == expected


def test_other_errors_pass_through_unchanged():
    with pytest.raises(KeyError), client_errors("a server", URL, KEY):
        raise KeyError("not the client's")


def test_a_stopped_llama_server_ends_the_streamed_eval_in_one_line(smollm2_gguf):
    """The served llama.cpp backend streams raw completions (eval/openai_backend.py's _stream): a server that
    goes away mid-eval is one ModelError naming it, not the client's traceback."""
    from toolkit.eval.openai_backend import LlamaServerGenerator

    gen = LlamaServerGenerator(smollm2_gguf, n_ctx=512, threads=1)
    try:
        prompt = [{"role": "user", "content": "What is 2 + 3?"}]
        assert isinstance(gen.generate([prompt], max_new_tokens=4)[0], str)
        gen.server.stop()
        with pytest.raises(ModelError, match=r"^llama\.cpp server http://127\.0\.0\.1:\d+/v1 is unreachable$"):
            gen.generate([prompt], max_new_tokens=4)
    finally:
        gen.close()
