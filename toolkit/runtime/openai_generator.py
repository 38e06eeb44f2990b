"""Generation from an OpenAI-compatible endpoint (a remote server, a local llama.cpp or vLLM server): the one
client that `toolkit eval openai:…` and the vLLM student sampler share."""
from __future__ import annotations

import json
import os
import re
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import contextmanager

import openai

from toolkit.core.errors import ModelError, redact
from toolkit.data.prompt_rule import has_chat_template, render


def parse_openai_ref(model: str) -> tuple[str, str]:
    """`openai:http://host:port/v1#model-name` -> (base URL, model name)."""
    body = model.removeprefix("openai:")
    base_url, _, name = body.partition("#")
    if not base_url.startswith(("http://", "https://")) or not name:
        raise ModelError(f"bad OpenAI model reference {model!r}: write openai:http://HOST:PORT/v1#MODEL")
    return base_url.rstrip("/"), name


# openai's own prefix of a refusal's message, which the line already says: "Error code: 401 - "
_STATUS_PREFIX = re.compile(r"^Error code: \d+ - ")


@contextmanager
def client_errors(label: str, base_url: str, api_key: str, request: str = ""):
    """The openai client's exceptions inside the block as one ModelError line each, naming the server as
    `label` and `base_url` and the `request` it answered; the API key never appears in the line."""
    try:
        yield
    except openai.APITimeoutError:  # a subclass of the connection error, but the server was there
        raise ModelError(f"{label} {base_url} did not answer in time") from None
    except openai.APIConnectionError:
        raise ModelError(f"{label} {base_url} is unreachable") from None
    except openai.APIStatusError as exc:
        message = _STATUS_PREFIX.sub("", redact(str(exc.message), [api_key]).splitlines()[0])
        raise ModelError(f"{label} {base_url} answered {exc.status_code}{request}: {message}") from None
    except openai.OpenAIError as exc:  # a reply the client cannot read
        raise ModelError(f"{label} {base_url} failed: "
                         f"{redact(str(exc), [api_key]).splitlines()[0][:200]}") from None
    except json.JSONDecodeError:  # the client parses replies (and each streamed event) as JSON itself
        raise ModelError(f"{label} {base_url} sent a reply that is not JSON (is it an OpenAI-compatible "
                         f"server?)") from None


class OpenAIGenerator:
    """Completions from an OpenAI-compatible server, `concurrency` requests in flight at once.

    With the served model's `tokenizer`, each prompt is rendered here by the prompt rule (its chat template, or
    the plain format for a model without one, as the student was trained) and sent as text to /v1/completions
    with `add_special_tokens: false` (vLLM's and llama.cpp's extension; the text already holds every special
    token), so the server sees the ids the student trained on and continues a forced strategy tag. Without one,
    the messages go to the chat endpoint, which applies the server's own template.

    Request i is sent with seed `seed + i`: several samples of one prompt differ, and a rerun draws the same.
    The API key is read from the environment variable named `api_key_env` (unset: a placeholder that local
    servers accept); it is never logged or written into results. Answers are not cached: a student changes
    every round, and its answers are recorded in the run folder.
    """

    name = "openai"
    label = "OpenAI-compatible endpoint"  # how error lines name the server

    def __init__(self, base_url: str, model: str, *, tokenizer=None, concurrency: int = 4,
                 api_key_env: str = "OPENAI_API_KEY", seed: int = 0, timeout_s: float = 600.0):
        self.base_url, self.model, self.seed, self.tok = base_url, model, seed, tokenizer
        self.concurrency = max(1, concurrency)
        self.client = openai.OpenAI(base_url=base_url, api_key=os.environ.get(api_key_env) or "not-needed",
                                    timeout=timeout_s, max_retries=2)
        rendered = "prompt rule, rendered here ({}), completions endpoint".format(
            "chat template" if tokenizer is not None and has_chat_template(tokenizer) else "plain")
        self.config = {"base_url": base_url, "served_model": model, "concurrency": self.concurrency,
                       "api_key_env": api_key_env,
                       "prompt_format": rendered if tokenizer is not None else "server chat template"}

    @classmethod
    def from_ref(cls, model: str, **kwargs) -> OpenAIGenerator:
        base_url, name = parse_openai_ref(model)
        gen = cls(base_url, name, **kwargs)
        gen.check()
        return gen

    def check(self) -> None:
        """Fail early, in one line, when the endpoint is down or refuses the key."""
        with client_errors(self.label, self.base_url, self.client.api_key, " to /models"):
            self.client.with_options(timeout=10.0, max_retries=0).models.list()

    def _one(self, messages, max_new_tokens: int, temperature: float, seed: int) -> str:
        with client_errors(self.label, self.base_url, self.client.api_key):
            if self.tok is not None:
                text, stops = render(self.tok, messages)
                resp = self.client.completions.create(
                    model=self.model, prompt=text, max_tokens=max_new_tokens, temperature=temperature, seed=seed,
                    stop=list(stops) or None, extra_body={"add_special_tokens": False})
            else:
                resp = self.client.chat.completions.create(model=self.model, messages=messages,
                                                           max_tokens=max_new_tokens, temperature=temperature,
                                                           seed=seed)
        if not resp.choices:
            raise ModelError(f"{self.label} {self.base_url} returned no choices for model {self.model}")
        return (resp.choices[0].text if self.tok is not None else resp.choices[0].message.content) or ""

    def generate(self, prompts, max_new_tokens, temperature=0.0, on_done=None):
        if self.tok is None and any(p and p[-1]["role"] == "assistant" for p in prompts):
            # chat APIs close that turn, not continue it; a rendered prompt continues it
            raise ModelError("a forced strategy tag (an assistant prefix) needs the torch, onnx or genai backend, or "
                             "an endpoint asked with --tokenizer; use --strategy auto or cot with a chat endpoint")
        out: list[str | None] = [None] * len(prompts)
        with ThreadPoolExecutor(self.concurrency) as pool:
            futures = {pool.submit(self._one, p, max_new_tokens, temperature, self.seed + i): i
                       for i, p in enumerate(prompts)}
            for fut in as_completed(futures):
                out[futures[fut]] = fut.result()
                if on_done:
                    on_done(1)
        return out  # type: ignore[return-value]

    def close(self) -> None:
        self.client.close()
