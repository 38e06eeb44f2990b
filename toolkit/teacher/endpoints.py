"""Teacher endpoints: weighted choice, per-endpoint concurrency, failover and retry waits (Retry-After)."""
from __future__ import annotations

import asyncio
import email.utils
import random
import time
from dataclasses import dataclass, field

# An endpoint that failed this many attempts in a row is skipped for `COOLDOWN_S` while another
# endpoint is up: one dead server must not cost every request a timeout.
DOWN_AFTER = 3
COOLDOWN_S = 30.0
# The longest wait we grant a server's Retry-After, in seconds: a teacher that asks for an hour
# is as good as down, and the run should end (keeping its cache) rather than hang.
MAX_RETRY_AFTER_S = 120.0
MAX_BACKOFF_S = 30.0
# Refusals that belong to the endpoint, not to the request: a wrong key, a key without access, a
# URL or model name this server does not have. Another endpoint may well accept the same request,
# so such an endpoint is dropped for the rest of the batch. Any other 4xx (400 too long, 422 …)
# would be refused everywhere, so it still ends the run.
ENDPOINT_REFUSALS = (401, 403, 404)


@dataclass(eq=False)
class Endpoint:
    """One OpenAI-compatible base URL: its share of the requests, its own limit, its health.

    `api_key` is read from the environment by the caller and lives only in memory.
    """

    base_url: str
    weight: float = 1.0
    concurrency: int = 1
    api_key: str | None = field(default=None, repr=False)
    sent: int = 0  # attempts sent to it (retries included)
    answered: int = 0  # attempts it answered with a usable completion
    failures: int = 0  # failed attempts in a row
    down_until: float = 0.0  # time.monotonic() before which it is skipped (when another is up)
    ok: bool = True  # its last attempt was answered (or it has not been tried yet)
    refused: str | None = None  # why it refused us for good (ENDPOINT_REFUSALS); never picked again
    gate: asyncio.Semaphore | None = field(default=None, repr=False)

    def up(self, now: float) -> bool:
        return self.refused is None and self.down_until <= now

    def succeeded(self) -> None:
        self.answered += 1
        self.failures = 0
        self.down_until = 0.0

    def failed(self, others_up: bool) -> None:
        self.failures += 1
        if self.failures >= DOWN_AFTER and others_up:
            self.down_until = time.monotonic() + COOLDOWN_S


def pick(endpoints: list[Endpoint], tried: set[int], rng: random.Random) -> Endpoint:
    """The endpoint for a request's next attempt.

    Prefer endpoints that are up and that this request has not failed on yet, then those with a
    free slot; among them choose by weight. When every endpoint is down, try them anyway (the
    caller's backoff paces that). Refused endpoints are never chosen: the caller stops before
    every endpoint has refused.
    """
    now = time.monotonic()
    live = [e for e in endpoints if e.refused is None]
    pool = [e for e in live if e.up(now) and id(e) not in tried] or \
        [e for e in live if e.up(now)] or live
    free = [e for e in pool if e.gate is None or not e.gate.locked()]
    pool = free or pool
    return rng.choices(pool, weights=[e.weight for e in pool])[0]


def retry_after_s(headers) -> float | None:
    """Seconds a server asked us to wait (Retry-After as seconds or an HTTP date, or retry-after-ms)."""
    if headers is None:
        return None
    ms = headers.get("retry-after-ms")
    try:
        if ms is not None:
            return max(0.0, float(ms) / 1000)
    except ValueError:
        pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def backoff_s(retry: int, retry_after: float | None, rng: random.Random, base_s: float = 1.0) -> float:
    """Seconds to wait before retry number `retry` (0-based).

    A server's Retry-After is honoured (never retried earlier) plus up to 20% jitter; otherwise the
    wait is exponential in `retry` from `base_s`, jittered to 0.5–1.5× so that many requests that
    failed together do not return together (thundering herd).
    """
    if retry_after is not None:
        return min(retry_after, MAX_RETRY_AFTER_S) * (1 + 0.2 * rng.random())
    return min(base_s * 2 ** retry, MAX_BACKOFF_S) * (0.5 + rng.random())
