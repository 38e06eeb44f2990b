"""Teachers: `complete(prompts, n, temperature)` over any OpenAI-compatible endpoint, through the cache."""
from __future__ import annotations

import asyncio
import contextlib
import os
import random
from collections.abc import Callable, Iterator
from pathlib import Path

import openai

from toolkit.cache import RequestCache, request_key
from toolkit.errors import TeacherError
from toolkit.llama_server import LlamaServer
from toolkit.models import resolve_model
from toolkit.recipe import TeacherConfig

Messages = list[dict[str, str]]

# Failures worth another try: the server is busy, restarting, slow or returned nonsense.
_RETRYABLE = (openai.APIConnectionError, openai.APITimeoutError, openai.RateLimitError,
              openai.InternalServerError)


class _Malformed(Exception):
    """The endpoint answered 200 with no usable choice."""


class OpenAITeacher:
    """A teacher behind an OpenAI-compatible chat endpoint (OpenAI, vLLM, SGLang, Ollama, llama.cpp).

    Every (prompt, sample index) pair is one request with its own seed, looked up in the cache
    first and stored the moment it arrives, so an interrupted batch keeps what it got.
    `endpoint` is a URL, or a callable that returns one: it is called only on the first cache
    miss, so a fully cached run never starts a local server. `requests_sent` counts requests
    that reached the network (retries included).
    """

    def __init__(self, endpoint: str | Callable[[], str], model: str, cache: RequestCache, *,
                 api_key: str | None = None, max_tokens: int = 256, concurrency: int = 1,
                 timeout_s: float = 300.0, max_retries: int = 4, seed: int = 0):
        self._endpoint = endpoint
        self.model = model
        self.cache = cache
        self.api_key = api_key or "not-needed"
        self.max_tokens = max_tokens
        self.concurrency = concurrency
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.seed = seed
        self.requests_sent = 0
        self.server: LlamaServer | None = None  # the local llama.cpp server behind it, if any

    @property
    def base_url(self) -> str:
        if callable(self._endpoint):
            self._endpoint = self._endpoint()
        return self._endpoint

    def complete(self, prompts: list[Messages], n: int, temperature: float,
                 on_done: Callable[[], None] | None = None) -> list[list[str]]:
        """n completions per prompt, in order; `on_done` is called once per finished sample."""
        out: list[list[str | None]] = [[None] * n for _ in prompts]
        todo = []
        for i, messages in enumerate(prompts):
            for j in range(n):
                params = {"temperature": temperature, "max_tokens": self.max_tokens, "seed": self.seed + j}
                key = request_key(self.model, messages, params, j)
                out[i][j] = self.cache.get(key)
                if out[i][j] is None:
                    todo.append((i, j, key, params))
                elif on_done:
                    on_done()
        if todo:
            asyncio.run(self._fetch(prompts, todo, out, on_done))
        return out  # type: ignore[return-value]

    async def _fetch(self, prompts, todo, out, on_done) -> None:
        client = openai.AsyncOpenAI(base_url=self.base_url, api_key=self.api_key,
                                    timeout=self.timeout_s, max_retries=0)
        gate = asyncio.Semaphore(self.concurrency)

        async def one(i: int, j: int, key: str, params: dict) -> None:
            async with gate:
                text = await self._request(client, prompts[i], params)
            self.cache.put(key, self.model, {"messages": prompts[i], **params, "sample": j}, text)
            out[i][j] = text
            if on_done:
                on_done()

        tasks = [asyncio.create_task(one(*item)) for item in todo]
        try:
            await asyncio.gather(*tasks)
        except BaseException:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        finally:
            await client.close()

    async def _request(self, client: openai.AsyncOpenAI, messages: Messages, params: dict) -> str:
        delay = 1.0
        for attempt in range(self.max_retries + 1):
            self.requests_sent += 1
            try:
                resp = await client.chat.completions.create(model=self.model, messages=messages, **params)
                if not resp.choices or resp.choices[0].message.content is None:
                    raise _Malformed("no choices in the response")
                return resp.choices[0].message.content
            except (*_RETRYABLE, _Malformed) as exc:
                if attempt == self.max_retries:
                    raise TeacherError(
                        f"teacher at {self.base_url} failed {attempt + 1} times "
                        f"({type(exc).__name__}: {_short(exc)}); completed requests are cached"
                    ) from None
                wait = _retry_after(exc) or delay * (0.5 + random.random())  # jitter avoids herds
                await asyncio.sleep(min(wait, 60.0))
                delay = min(delay * 2, 30.0)
            except openai.APIStatusError as exc:  # 4xx other than 429: retrying cannot help
                raise TeacherError(f"teacher at {self.base_url} refused the request: {_short(exc)}") from None
        raise AssertionError("unreachable")


def _retry_after(exc: Exception) -> float | None:
    """Seconds from a Retry-After header, when the server sent one."""
    response = getattr(exc, "response", None)
    value = response.headers.get("retry-after") if response is not None else None
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _short(exc: Exception) -> str:
    return str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__


@contextlib.contextmanager
def open_teacher(cfg: TeacherConfig, cache: RequestCache, *, base_dir: Path, log_dir: Path,
                 seed: int) -> Iterator[OpenAITeacher]:
    """The recipe's teacher, ready to use; a llama.cpp teacher's server runs only inside the block."""
    common = dict(max_tokens=cfg.max_tokens, concurrency=cfg.concurrency, timeout_s=cfg.timeout_s,
                  max_retries=cfg.max_retries, seed=seed)
    if cfg.backend == "openai":
        yield OpenAITeacher(cfg.base_url, cfg.model, cache, api_key=os.environ.get(cfg.api_key_env),
                            **common)
        return
    ref = resolve_model(cfg.model, base_dir)
    if ref.kind != "gguf":
        raise TeacherError(f"teacher backend llama.cpp needs a GGUF model, got {cfg.model!r}")
    server = LlamaServer(ref.path, log_dir / "teacher-server.log", n_ctx=cfg.n_ctx, threads=cfg.threads,
                         server=cfg.server, slots=cfg.slots)
    if cfg.server == "llama-server":  # keep every slot busy
        common["concurrency"] = max(cfg.concurrency, cfg.slots)

    def start() -> str:
        return server.start().base_url

    try:
        # The cache key uses the model's file name, not the server's port, so a restart still hits.
        teacher = OpenAITeacher(start, ref.path.name, cache, **common)
        teacher.server = server
        yield teacher
    finally:
        server.stop()
