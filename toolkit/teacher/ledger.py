"""The teacher ledger: requests, cache hits and tokens per endpoint (from each reply's `usage`), and their cost."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from toolkit.core.recipe import PriceConfig

# Counts summed by `merge_records`; an endpoint's and the cache's entries hold the same names.
_COUNTS = ("requests_sent", "answered", "prompt_tokens", "completion_tokens", "without_usage")
_CACHED = ("requests", "prompt_tokens", "completion_tokens", "without_usage", "damaged")


def usage_of(usage) -> dict[str, int] | None:
    """{"prompt_tokens", "completion_tokens"} of a reply's `usage` (an object or a dict), None when it has none."""
    if usage is None:
        return None
    get = usage.get if isinstance(usage, dict) else lambda name: getattr(usage, name, None)
    prompt, completion = get("prompt_tokens"), get("completion_tokens")
    if not isinstance(prompt, int) or not isinstance(completion, int):
        return None
    return {"prompt_tokens": prompt, "completion_tokens": completion}


def cost_usd(prompt_tokens: int, completion_tokens: int, price: PriceConfig) -> float:
    """Dollars for these tokens at `price` (USD per million input and per million output tokens)."""
    return (prompt_tokens * price.input + completion_tokens * price.output) / 1e6


@dataclass
class Tally:
    """One endpoint's attempts (retries included), answered replies and the tokens their `usage` reports;
    `without_usage` counts answered replies that carried no usage block (their tokens are unknown)."""

    requests_sent: int = 0
    answered: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    without_usage: int = 0


@dataclass
class CachedTally:
    """Requests answered from the cache, and what they cost when first asked (entries stored with usage)."""

    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    without_usage: int = 0  # cached before the cache kept usage: their original tokens are unknown
    damaged: int = 0  # damaged entries dropped and asked again (toolkit/teacher/cache.py); not in `requests`


@dataclass
class Ledger:
    """What one stage asked of the teacher: per endpoint what was sent and answered, and what the cache served."""

    endpoints: dict[str, Tally] = field(default_factory=dict)
    cached: CachedTally = field(default_factory=CachedTally)

    def sent(self, endpoint: str) -> None:
        self.endpoints.setdefault(endpoint, Tally()).requests_sent += 1

    def answered(self, endpoint: str, usage: dict[str, int] | None) -> None:
        tally = self.endpoints.setdefault(endpoint, Tally())
        tally.answered += 1
        _add_usage(tally, usage)

    def from_cache(self, usage: dict[str, int] | None) -> None:
        self.cached.requests += 1
        _add_usage(self.cached, usage)

    def merge(self, other: Ledger) -> None:
        for name, tally in other.endpoints.items():
            mine = self.endpoints.setdefault(name, Tally())
            for key in _COUNTS:
                setattr(mine, key, getattr(mine, key) + getattr(tally, key))
        for key in _CACHED:
            setattr(self.cached, key, getattr(self.cached, key) + getattr(other.cached, key))

    def empty(self) -> bool:
        return not self.endpoints and not self.cached.requests

    def record(self) -> dict:
        """The manifest entry: totals over endpoints, each endpoint, and the cache."""
        return {**_sum_counts(asdict(t) for t in self.endpoints.values()),
                "endpoints": {name: asdict(t) for name, t in self.endpoints.items()},
                "cached": asdict(self.cached)}


def _add_usage(tally: Tally | CachedTally, usage: dict[str, int] | None) -> None:
    if usage is None:
        tally.without_usage += 1
        return
    tally.prompt_tokens += usage["prompt_tokens"]
    tally.completion_tokens += usage["completion_tokens"]


def _sum_counts(tallies) -> dict[str, int]:
    out = dict.fromkeys(_COUNTS, 0)
    for t in tallies:
        for key in _COUNTS:
            out[key] += t.get(key, 0)
    return out


def merge_records(records: list[dict]) -> dict:
    """The run total of several stages' ledger entries (same shape as one)."""
    endpoints: dict[str, dict] = {}
    cached = dict.fromkeys(_CACHED, 0)
    for rec in records:
        for name, t in rec.get("endpoints", {}).items():
            mine = endpoints.setdefault(name, dict.fromkeys(_COUNTS, 0))
            for key in _COUNTS:
                mine[key] += t.get(key, 0)
        for key in _CACHED:
            cached[key] += rec.get("cached", {}).get(key, 0)
    return {**_sum_counts(endpoints.values()), "endpoints": endpoints, "cached": cached}


def price_record(record: dict, price: PriceConfig | None) -> dict:
    """`record` with its cost at `price`: `cost_usd` of what was sent now, `cached_cost_usd` of what the
    cached replies cost when first asked; without a price, no cost fields."""
    record = {k: v for k, v in record.items() if k not in ("cost_usd", "cached_cost_usd", "price")}
    if price is None:
        return record
    cached = record["cached"]
    return {**record, "price": price.model_dump(),
            "cost_usd": round(cost_usd(record["prompt_tokens"], record["completion_tokens"], price), 6),
            "cached_cost_usd": round(cost_usd(cached["prompt_tokens"], cached["completion_tokens"], price), 6)}


def summary_line(record: dict) -> str:
    """One console line of a run's teacher totals."""
    cached = record["cached"]
    line = (f"teacher: {record['answered']} requests answered ({record['requests_sent']} sent, retries included), "
            f"{record['prompt_tokens']:,} prompt + {record['completion_tokens']:,} completion tokens; "
            f"{cached['requests']} answered from the cache (first asked for {cached['prompt_tokens']:,} + "
            f"{cached['completion_tokens']:,} tokens)")
    if cached.get("damaged"):
        line += f"; {cached['damaged']} damaged cache entries dropped and asked again"
    unknown = record["without_usage"] + cached["without_usage"]
    if unknown:
        line += f"; {unknown} replies without usage (tokens unknown)"
    if "cost_usd" in record:
        line += f"; cost ${record['cost_usd']:.4f} (cached replies: ${record['cached_cost_usd']:.4f} when first asked)"
    return line
