"""Teachers: `complete(prompts, n, temperature)` over OpenAI-compatible endpoints, through the cache."""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import openai

from toolkit.teacher.cache import RequestCache, request_key
from toolkit.teacher.endpoints import ENDPOINT_REFUSALS, Endpoint, backoff_s, pick, retry_after_s
from toolkit.teacher.ledger import Ledger, usage_of
from toolkit.core.errors import TeacherError, redact
from toolkit.runtime.llama_server import LlamaServer
from toolkit.runtime.models import resolve_model
from toolkit.core.recipe import TeacherConfig

Messages = list[dict[str, str]]
log = logging.getLogger(__name__)

# Failures worth another try: the server is busy, restarting, slow or returned nonsense.
_RETRYABLE = (openai.APIConnectionError, openai.APITimeoutError, openai.RateLimitError,
              openai.InternalServerError, openai.APIResponseValidationError)


class _Malformed(Exception):
    """The endpoint answered 200 with no usable choice (or a body that is not JSON)."""


class OpenAITeacher:
    """A teacher behind one or several OpenAI-compatible chat endpoints (OpenAI, vLLM, llama.cpp, …).

    Every (prompt, sample index) pair is one request with its own seed, looked up in the cache
    first and stored the moment it arrives, so an interrupted batch keeps what it got. The cache
    key holds the model name, never the endpoint, so any endpoint's answer serves every later run.
    `endpoint` is a URL, a callable that returns one (called only on the first cache miss, so a
    fully cached run never starts a local server), or a list of `Endpoint`s: each attempt goes to
    an endpoint chosen by weight among those that are up and have a free slot, and a failed
    attempt moves to another endpoint before any backoff. When a request fails for good, no new
    request starts, those in flight finish into the cache, and a TeacherError says what happened.
    `requests_sent` counts attempts that reached the network (retries included); `ledger` counts them per
    endpoint with the tokens of each reply's `usage`, and the requests the cache answered.
    """

    def __init__(self, endpoint: str | Callable[[], str] | list[Endpoint], model: str, cache: RequestCache, *,
                 api_key: str | None = None, max_tokens: int = 256, concurrency: int = 1,
                 timeout_s: float = 300.0, max_retries: int = 4, seed: int = 0, backoff_base_s: float = 1.0,
                 api_key_env: str | None = None):
        self._endpoint = endpoint
        self.model = model
        self.cache = cache
        self.api_key = api_key
        self.api_key_env = api_key_env  # named in error messages about authentication, never read here
        self.max_tokens = max_tokens
        self.concurrency = concurrency
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.seed = seed
        self.backoff_base_s = backoff_base_s
        self.requests_sent = 0
        self.ledger = Ledger()
        self._rng = random.Random(seed)  # endpoint choice and backoff jitter
        self._endpoints: list[Endpoint] | None = None
        self.server: LlamaServer | None = None  # the local llama.cpp server behind it, if any

    @property
    def endpoints(self) -> list[Endpoint]:
        if self._endpoints is None:
            if isinstance(self._endpoint, list):
                self._endpoints = self._endpoint
            else:
                url = self._endpoint() if callable(self._endpoint) else self._endpoint
                self._endpoints = [Endpoint(url, 1.0, self.concurrency, self.api_key)]
        return self._endpoints

    @property
    def base_url(self) -> str:
        return ", ".join(e.base_url for e in self.endpoints)

    def complete(self, prompts: list[Messages], n: int, temperature: float,
                 on_done: Callable[[], None] | None = None) -> list[list[str]]:
        """n completions per prompt, in order; `on_done` is called once per finished sample."""
        out: list[list[str | None]] = [[None] * n for _ in prompts]
        todo = []
        damaged = self.cache.damaged
        for i, messages in enumerate(prompts):
            for j in range(n):
                params = {"temperature": temperature, "max_tokens": self.max_tokens, "seed": self.seed + j}
                key = request_key(self.model, messages, params, j)
                entry = self.cache.lookup(key)
                if entry is None:
                    todo.append((i, j, key, params))
                    continue
                out[i][j] = entry[0]
                self.ledger.from_cache(entry[1])
                if on_done:
                    on_done()
        self.ledger.cached.damaged += self.cache.damaged - damaged  # dropped by lookup: among `todo` now
        if todo:
            asyncio.run(self._fetch(prompts, todo, out, on_done, total=len(prompts) * n))
        return out  # type: ignore[return-value]

    async def _fetch(self, prompts, todo, out, on_done, total: int) -> None:
        endpoints = self.endpoints
        for e in endpoints:
            e.gate = asyncio.Semaphore(e.concurrency)
        clients = {id(e): openai.AsyncOpenAI(base_url=e.base_url, api_key=e.api_key or "not-needed",
                                             timeout=self.timeout_s, max_retries=0) for e in endpoints}
        self._stop = asyncio.Event()
        self._failure: TeacherError | None = None
        # Set while some endpoint answered its last attempt. While it is clear, only retries go out:
        # a dead teacher sees each failing request's retries, not every pending request once.
        self._any_ok = asyncio.Event()
        self._any_ok.set()
        for e in endpoints:
            e.ok = True

        async def one(i: int, j: int, key: str, params: dict) -> None:
            reply = await self._request(clients, prompts[i], params)
            if reply is None:  # abandoned: another request failed for good
                return
            text, usage = reply
            # the cache's text: a run sharing the cache may have stored its sample first
            out[i][j] = self.cache.put(key, self.model, {"messages": prompts[i], **params, "sample": j}, text, usage)
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
            for client in clients.values():
                await client.close()
        if self._failure is not None:
            done = sum(x is not None for row in out for x in row)
            raise TeacherError(f"{self._failure}; {done} of {total} requests are done and cached, "
                               f"run again to resume")

    def _ledger_name(self, ep: Endpoint) -> str:
        """The ledger's name for an endpoint: its URL, or the local server's model (its port changes each start)."""
        return f"llama.cpp:{self.model}" if self.server is not None else ep.base_url

    def _keys(self) -> list[str | None]:
        return [self.api_key, *(e.api_key for e in self.endpoints)]

    def _give_up(self, message: str) -> None:
        if self._failure is None:
            self._failure = TeacherError(message)
        self._stop.set()
        self._any_ok.set()  # wake the requests waiting for a healthy endpoint: they see the stop

    def _refused(self, ep: Endpoint, exc: openai.APIStatusError) -> bool:
        """Drop an endpoint that refused us for good and say whether another one can take over;
        otherwise end the run, naming every refusal."""
        hint = ""
        if exc.status_code in (401, 403) and self.api_key_env:
            hint = f" (the API key comes from ${self.api_key_env})"
        why = f"{_short(exc, self._keys())}{hint}"
        if exc.status_code in ENDPOINT_REFUSALS and any(e is not ep and e.refused is None for e in self.endpoints):
            ep.refused = why
            log.warning("teacher at %s refused the request (%s); going on with the other endpoints", ep.base_url, why)
            return True
        earlier = "".join(f"; {e.base_url} refused earlier: {e.refused}" for e in self.endpoints
                          if e is not ep and e.refused)
        self._give_up(f"teacher at {ep.base_url} refused the request: {why}{earlier}")
        return False

    def _settle(self, ep: Endpoint, ok: bool) -> None:
        ep.ok = ok
        if any(e.ok for e in self.endpoints):
            self._any_ok.set()
        else:
            self._any_ok.clear()

    async def _request(self, clients: dict, messages: Messages, params: dict) -> tuple[str, dict | None] | None:
        """One request's attempts until it succeeds (its text and token usage) or is abandoned (None)."""
        endpoints = self.endpoints
        tried: set[int] = set()  # endpoints this request failed on since its last backoff
        retries = 0
        attempts = 0
        while not self._stop.is_set():
            if attempts == 0 and not self._any_ok.is_set():
                await self._any_ok.wait()
                continue
            ep = pick(endpoints, tried, self._rng)
            async with ep.gate:
                if self._stop.is_set():
                    return None
                if attempts == 0 and not self._any_ok.is_set():
                    continue  # the teacher failed while this request waited for its slot
                now = time.monotonic()
                if ep.refused or (not ep.up(now) and any(e.up(now) for e in endpoints)):
                    continue  # its endpoint went down or refused us while it waited: choose again
                ep.sent += 1
                self.requests_sent += 1
                self.ledger.sent(self._ledger_name(ep))
                attempts += 1
                try:
                    resp = await clients[id(ep)].chat.completions.create(model=self.model, messages=messages,
                                                                         **params)
                    if not resp.choices or resp.choices[0].message.content is None:
                        raise _Malformed("no choices in the response")
                    ep.succeeded()
                    self._settle(ep, True)
                    usage = usage_of(resp.usage)
                    self.ledger.answered(self._ledger_name(ep), usage)
                    return resp.choices[0].message.content, usage
                except (*_RETRYABLE, _Malformed, ValueError) as exc:
                    # ValueError: a 200 whose body is not JSON (the client's JSON decoding fails).
                    error = exc
                except openai.APIStatusError as exc:  # 4xx other than 429: retrying cannot help
                    if not self._refused(ep, exc):
                        return None
                    error = None
            self._settle(ep, False)
            if error is None:
                continue  # the endpoint refused us for good: the request goes to another one
            if not isinstance(error, openai.RateLimitError):  # busy is not broken
                ep.failed(others_up=any(e is not ep and e.up(time.monotonic()) for e in endpoints))
            tried.add(id(ep))
            now = time.monotonic()
            if any(e.up(now) and id(e) not in tried for e in endpoints):
                continue  # fail over at once to an endpoint that is up and this request has not failed on
            if retries == self.max_retries:
                self._give_up(f"teacher at {self.base_url} failed {attempts} times "
                              f"({type(error).__name__}: {_short(error, self._keys())})")
                return None
            wait = backoff_s(retries, retry_after_s(getattr(getattr(error, "response", None), "headers", None)),
                             self._rng, self.backoff_base_s)
            retries += 1
            tried.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stop.wait(), wait)  # wakes early when the run gives up
        return None


def _short(exc: Exception, keys: list[str | None] = ()) -> str:
    """The first line of a failure, at most 200 characters, with keys redacted: a server's error body may
    repeat our Authorization header or the key itself (redacted before cutting, so no key is half-shown)."""
    text = redact(str(exc), keys).splitlines()
    return text[0][:200] if text and text[0] else type(exc).__name__


def endpoints_of(cfg: TeacherConfig) -> list[Endpoint]:
    """The recipe's endpoints (`endpoints`, or the single `base_url`), keys read from the environment."""
    if cfg.endpoints:
        return [Endpoint(e.base_url, e.weight, e.concurrency or cfg.concurrency,
                         os.environ.get(e.api_key_env or cfg.api_key_env)) for e in cfg.endpoints]
    return [Endpoint(cfg.base_url, 1.0, cfg.concurrency, os.environ.get(cfg.api_key_env))]


@contextlib.contextmanager
def open_teacher(cfg: TeacherConfig, cache: RequestCache, *, base_dir: Path, log_dir: Path,
                 seed: int) -> Iterator[OpenAITeacher]:
    """The recipe's teacher, ready to use; a llama.cpp teacher's server runs only inside the block."""
    common = dict(max_tokens=cfg.max_tokens, concurrency=cfg.concurrency, timeout_s=cfg.timeout_s,
                  max_retries=cfg.max_retries, seed=seed, backoff_base_s=cfg.backoff_s)
    if cfg.backend == "openai":
        yield OpenAITeacher(endpoints_of(cfg), cfg.model, cache, api_key_env=cfg.api_key_env, **common)
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
