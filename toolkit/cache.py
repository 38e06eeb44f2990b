"""Persistent per-request cache of teacher completions (SQLite): a re-run never pays twice."""
from __future__ import annotations

import contextlib
import hashlib
import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from toolkit.errors import ToolkitError


def request_key(model: str, messages: list[dict], params: dict[str, Any], sample_index: int) -> str:
    """sha256 of the canonical request: model, messages, sampling parameters and sample index.

    The sample index is part of the key so that k samples of one prompt are k distinct entries,
    and asking for k+2 later pays only for the 2 new ones.
    """
    canonical = json.dumps(
        {"model": model, "messages": messages, "params": params, "sample": sample_index},
        sort_keys=True, ensure_ascii=False,
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


class RequestCache:
    """A key -> completion text store; every put is committed at once so a kill -9 loses nothing."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # One connection shared by the async teacher's worker threads, guarded by the lock.
            self._db = sqlite3.connect(self.path, check_same_thread=False, timeout=60)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS completions ("
                " key TEXT PRIMARY KEY, model TEXT, request TEXT, completion TEXT, created REAL)"
            )
            self._db.commit()
        except (OSError, sqlite3.Error) as exc:
            raise ToolkitError(f"cannot open the teacher cache {self.path}: {_reason(exc)} "
                               f"(set TOOLKIT_CACHE or cache_dir to a writable folder)") from None
        self.hits = 0
        self.misses = 0

    def get(self, key: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT completion FROM completions WHERE key = ?", (key,)).fetchone()
        if row is None:
            self.misses += 1
            return None
        self.hits += 1
        return row[0]

    def put(self, key: str, model: str, request: dict, completion: str) -> None:
        """Store one completion; `request` must not hold credentials (it is kept for inspection)."""
        with self._lock:
            try:
                self._db.execute(
                    "INSERT OR REPLACE INTO completions VALUES (?, ?, ?, ?, ?)",
                    (key, model, json.dumps(request, ensure_ascii=False), completion, time.time()),
                )
                self._db.commit()
            except sqlite3.Error as exc:  # a full disk: earlier entries stay committed
                with contextlib.suppress(sqlite3.Error):
                    self._db.rollback()
                raise ToolkitError(f"cannot write the teacher cache {self.path}: {_reason(exc)}; "
                                   f"completed requests are kept") from None

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM completions").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _reason(exc: BaseException) -> str:
    text = getattr(exc, "strerror", None) or str(exc)
    return text.splitlines()[0] if text else type(exc).__name__
