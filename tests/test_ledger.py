"""The teacher ledger: token counts from replies' `usage` in the manifest, cached requests, cost, the dry-run estimate."""
from __future__ import annotations

import json
import sqlite3

import pytest

from tests.conftest import DATA, one_line_error, toolkit, write_tiny_recipe
from tests.fault_teacher import FaultTeacher
from toolkit.core.recipe import PriceConfig
from toolkit.teacher.cache import RequestCache
from toolkit.teacher.ledger import Ledger, merge_records, price_record

FDD = [f"data.root={DATA}", "distill.rounds=2", "distill.new_per_problem=2", "distill.label_solves=2",
       "distill.vote_min=1", "teacher.concurrency=3", "seed=5"]
PRICE = ["teacher.price.input=2.5", "teacher.price.output=10"]  # USD per million tokens


def _usage_sums(rows: list[dict]) -> tuple[int, int, int]:
    """(answered requests, prompt tokens, completion tokens) the fake server reported."""
    ok = [r for r in rows if r["fault"] == "ok"]
    return len(ok), sum(r["usage"]["prompt_tokens"] for r in ok), sum(r["usage"]["completion_tokens"] for r in ok)


def test_manifest_counts_equal_the_servers_usage_and_a_rerun_counts_only_cached(tmp_path, tiny_model_dir):
    with FaultTeacher(tmp_path / "log.jsonl") as srv:
        recipe = write_tiny_recipe(tmp_path, tiny_model_dir, srv.base_url)
        dry = toolkit("distill", str(recipe), *FDD, *PRICE, "--dry-run", "--json", cwd=tmp_path)
        assert dry.returncode == 0, dry.stderr
        assert srv.rows() == [] and not (tmp_path / "runs").exists()  # the estimate asked nothing
        estimate = json.loads(dry.stdout)

        r = toolkit("distill", str(recipe), *FDD, *PRICE, cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        answered, prompt, completion = _usage_sums(srv.rows())
        manifest = json.loads((tmp_path / "runs/tiny/manifest.json").read_text())

        first = len(srv.rows())
        again = toolkit("distill", str(recipe), *FDD, *PRICE, "--fresh", cwd=tmp_path)
        assert again.returncode == 0, again.stderr
        assert len(srv.rows()) == first  # everything came from the cache
        rerun = json.loads((tmp_path / "runs/tiny/manifest.json").read_text())

    total = manifest["teacher"]
    assert (total["answered"], total["prompt_tokens"], total["completion_tokens"]) == (answered, prompt, completion)
    assert total["requests_sent"] == answered and total["without_usage"] == 0 and prompt > answered
    assert total["endpoints"][srv.base_url]["prompt_tokens"] == prompt and total["cached"]["requests"] == 0
    stages = manifest["stages"]
    ledgers = {name: s["teacher"] for name, s in stages.items() if "teacher" in s}
    assert set(ledgers) == {"round-0/rationales", "round-1/questions", "round-1/labels"}
    assert sum(x["prompt_tokens"] for x in ledgers.values()) == prompt
    assert ledgers["round-1/questions"]["answered"] == stages["round-1/questions"]["requests"]
    # The dry run's count is what the rationales stage really sent; FDD's are upper bounds it stays under.
    est = {row["stage"]: row for row in estimate["stages"]}
    assert est["round-0/rationales"]["requests"] == ledgers["round-0/rationales"]["requests_sent"] == 12
    assert est["round-1/questions"]["requests"] == ledgers["round-1/questions"]["requests_sent"]
    assert est["round-1/labels"]["upper_bound"] and est["round-1/labels"]["requests"] >= \
        ledgers["round-1/labels"]["requests_sent"]
    # Cost: USD per million input and output tokens.
    assert total["cost_usd"] == pytest.approx((prompt * 2.5 + completion * 10) / 1e6, abs=1e-6)
    assert "teacher: " in r.stdout and f"{prompt:,} prompt + {completion:,} completion tokens" in r.stdout

    cached = rerun["teacher"]
    assert cached["requests_sent"] == cached["answered"] == cached["prompt_tokens"] == 0 and cached["cost_usd"] == 0
    assert cached["cached"] == {"requests": answered, "prompt_tokens": prompt, "completion_tokens": completion,
                                "without_usage": 0, "damaged": 0}
    assert cached["cached_cost_usd"] == pytest.approx(total["cost_usd"], abs=1e-6)


def test_price_turns_tokens_into_dollars_per_stage_and_in_total():
    a, b = Ledger(), Ledger()
    a.sent("http://x/v1")
    a.answered("http://x/v1", {"prompt_tokens": 1_000_000, "completion_tokens": 200_000})
    b.sent("http://y/v1")
    b.sent("http://y/v1")  # a retry: sent twice, answered once
    b.answered("http://y/v1", {"prompt_tokens": 500_000, "completion_tokens": 0})
    b.from_cache({"prompt_tokens": 2_000_000, "completion_tokens": 1_000_000})
    b.from_cache(None)  # an entry cached before usage was stored
    price = PriceConfig(input=0.15, output=0.6)
    total = price_record(merge_records([a.record(), b.record()]), price)
    assert (total["requests_sent"], total["answered"], total["prompt_tokens"]) == (3, 2, 1_500_000)
    assert total["cost_usd"] == pytest.approx(1.5 * 0.15 + 0.2 * 0.6)
    assert total["cached_cost_usd"] == pytest.approx(2 * 0.15 + 1 * 0.6)
    assert total["cached"]["without_usage"] == 1 and total["price"] == {"input": 0.15, "output": 0.6}
    assert "cost_usd" not in price_record(total, None)  # no price, no cost


def test_cache_keeps_usage_and_still_reads_a_cache_from_before(tmp_path):
    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as db:  # the schema before entries kept usage
        db.execute("CREATE TABLE completions (key TEXT PRIMARY KEY, model TEXT, request TEXT, completion TEXT, "
                   "created REAL, digest BLOB)")
        db.execute("INSERT INTO completions VALUES ('old', 'm', '{}', 'The answer is 4.', 0, NULL)")
    cache = RequestCache(path)
    cache.put("new", "m", {}, "The answer is 5.", {"prompt_tokens": 7, "completion_tokens": 3})
    assert cache.lookup("old") is None and cache.damaged == 1  # no checksum: dropped, asked again (test_cache_entries)
    assert cache.lookup("new") == ("The answer is 5.", {"prompt_tokens": 7, "completion_tokens": 3})
    assert cache.get("new") == "The answer is 5." and cache.lookup("missing") is None


def test_a_negative_price_is_one_line(tmp_path, tiny_model_dir):
    recipe = write_tiny_recipe(tmp_path, tiny_model_dir, "http://127.0.0.1:9/v1")
    one_line_error(toolkit("distill", str(recipe), "teacher.price.input=-1", "teacher.price.output=1", "--dry-run",
                           cwd=tmp_path), "teacher.price.input")


def test_dry_run_counts_the_pot_check_requests(tmp_path, tiny_model_dir):
    """label_check pot with a [cot] recipe asks one extra PoT program per question that passes the vote: the
    labels estimate, an upper bound, counts one per question."""
    recipe = write_tiny_recipe(tmp_path, tiny_model_dir, "http://127.0.0.1:9")  # never contacted
    labels = {}
    for check in ("none", "pot"):
        r = toolkit("distill", str(recipe), *FDD, f"distill.label_check={check}", "--dry-run", "--json", cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        labels[check] = next(row for row in json.loads(r.stdout)["stages"] if row["stage"] == "round-1/labels")
    new = labels["none"]["requests"] // 2  # label_solves 2
    assert labels["pot"]["requests"] == new * 3 and "1 PoT check" in labels["pot"]["note"]
    assert labels["pot"]["prompt_tokens"] > labels["none"]["prompt_tokens"]
    assert labels["pot"]["completion_tokens"] == labels["none"]["completion_tokens"] * 3 // 2
