"""The teacher cache entry by entry: a damaged entry is dropped and asked again (one request, a warning, a count in
the ledger), runs sharing a cache never overwrite each other's entries, and any reply text can be stored."""
from __future__ import annotations

import logging
import sqlite3

import pytest

from tests.fault_teacher import FaultTeacher
from toolkit.teacher.cache import RequestCache, request_key
from toolkit.teacher.ledger import summary_line
from toolkit.teacher.teachers import OpenAITeacher

PROMPTS = [[{"role": "user", "content": f"What is {a} plus {b}?"}] for a, b in ((3, 4), (12, 30), (7, 8))]


def _teacher(url: str, cache: RequestCache) -> OpenAITeacher:
    return OpenAITeacher(url, "fault-model", cache, max_tokens=16, concurrency=2, timeout_s=5, max_retries=2,
                         backoff_base_s=0.05)


def _damage(path, how: str) -> str:
    """Damage the stored entry of the second prompt's first sample; returns its key."""
    key = request_key("fault-model", PROMPTS[1], {"temperature": 0.0, "max_tokens": 16, "seed": 0}, 0)
    with sqlite3.connect(path) as db:
        if how == "flipped":  # one digit changed, checksum kept: what a bad sector inside the text does
            db.execute("UPDATE completions SET completion = replace(completion, '42', '43') WHERE key = ?", (key,))
        elif how == "not utf-8":
            db.execute("UPDATE completions SET completion = CAST(x'416e73ff20343200' AS TEXT) WHERE key = ?", (key,))
        elif how == "a number":
            db.execute("UPDATE completions SET completion = 42 WHERE key = ?", (key,))
        else:  # no checksum: an entry from before checksums; nothing says whether its text is the teacher's
            db.execute("UPDATE completions SET digest = NULL WHERE key = ?", (key,))
        assert db.total_changes == 1
    return key


@pytest.mark.parametrize("how", ["flipped", "not utf-8", "a number", "no checksum"])
def test_a_damaged_entry_is_dropped_and_asked_again_once(tmp_path, caplog, how):
    path = tmp_path / "teacher.sqlite"
    with FaultTeacher(tmp_path / "log.jsonl") as srv:
        cache = RequestCache(path)
        first = _teacher(srv.base_url, cache).complete(PROMPTS, n=1, temperature=0.0)
        assert "42" in first[1][0]
        cache.close()
        key = _damage(path, how)
        cache = RequestCache(path)
        teacher = _teacher(srv.base_url, cache)
        sent = len(srv.rows())
        with caplog.at_level(logging.WARNING):
            again = teacher.complete(PROMPTS, n=1, temperature=0.0)
        assert len(srv.rows()) == sent + 1  # only the damaged one is asked again
    assert again == first  # the teacher's own answer, never the damaged text
    assert cache.get(key) == first[1][0]  # stored again, with a checksum
    record = teacher.ledger.record()
    assert record["cached"]["damaged"] == 1 and record["cached"]["requests"] == 2 and record["answered"] == 1
    assert "1 damaged cache entries dropped and asked again" in summary_line(record)
    warnings = [r.getMessage() for r in caplog.records if "damaged entry" in r.getMessage()]
    assert len(warnings) == 1 and str(path) in warnings[0] and "asked again" in warnings[0]


def test_runs_sharing_a_cache_never_overwrite_each_other(tmp_path):
    """Two runs asked the same request at once (both missed): the first to store wins, the second gets the
    stored text back from `put` and uses it, so neither overwrites a sample the other has used."""
    path = tmp_path / "teacher.sqlite"
    a, b = RequestCache(path), RequestCache(path)
    assert a.lookup("k") is None and b.lookup("k") is None
    assert a.put("k", "m", {}, "run A's sample: 7", {"prompt_tokens": 5, "completion_tokens": 4}) == "run A's sample: 7"
    assert b.put("k", "m", {}, "run B's sample: 9") == "run A's sample: 7"
    assert a.get("k") == b.get("k") == "run A's sample: 7"
    assert b.lookup("k") == ("run A's sample: 7", {"prompt_tokens": 5, "completion_tokens": 4})
    assert len(a) == 1 and a.damaged == b.damaged == 0


def test_a_reply_with_a_lone_surrogate_is_stored(tmp_path):
    """A JSON reply may carry `\\ud800` alone, which has no UTF-8: stored (and returned) as U+FFFD, not a crash."""
    cache = RequestCache(tmp_path / "teacher.sqlite")
    messages = [{"role": "user", "content": "odd \ud800 question"}]
    key = request_key("m", messages, {"temperature": 0}, 0)
    assert cache.put(key, "m", {"messages": messages}, "The answer is \udc9f 4.") == "The answer is \ufffd 4."
    assert cache.get(key) == "The answer is \ufffd 4."
    assert key == request_key("m", [{"role": "user", "content": "odd \ud800 question"}], {"temperature": 0}, 0)
    assert request_key("m", [{"role": "user", "content": "plain é"}], {}, 0) == \
        "313c17b8f8b47e610e0f4ec099271a6955b24fb767eadfa29f5db0306a8efa26"  # valid text: the key of before
