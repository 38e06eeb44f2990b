"""Persistent per-request cache of teacher completions (SQLite): a re-run never pays twice."""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import re
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from toolkit.core.errors import ToolkitError

log = logging.getLogger(__name__)
# A lone surrogate (half of a UTF-16 pair, as a JSON reply's `\ud800` decodes): no UTF-8 for it, so SQLite
# cannot store it; it is kept as U+FFFD.
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def request_key(model: str, messages: list[dict], params: dict[str, Any], sample_index: int) -> str:
    """sha256 of the canonical request: model, messages, sampling parameters and sample index.

    The sample index is part of the key so that k samples of one prompt are k distinct entries,
    and asking for k+2 later pays only for the 2 new ones.
    """
    canonical = json.dumps(
        {"model": model, "messages": messages, "params": params, "sample": sample_index},
        sort_keys=True, ensure_ascii=False,
    )
    return hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()  # the same bytes for valid text


def _digest(key: str, completion: str) -> bytes:
    """The entry's checksum: SQLite checks its pages' structure, never their content, so a flipped byte
    inside a stored answer would otherwise be served as the teacher's."""
    # 16 raw bytes: 128 bits are ample against damage (this is no defence against someone who edits the file).
    return hashlib.blake2b(f"{key}\0{completion}".encode(), digest_size=16).digest()


class CacheCorrupt(ToolkitError):
    """The teacher cache file is damaged (a bad page, or an entry that no longer matches its checksum)."""


class RequestCache:
    """A key -> completion text store; every put is committed at once so a kill -9 loses nothing.

    Each entry carries a checksum of its key and text. A damaged entry (its text no longer matches the
    checksum or is not UTF-8 text; or it has no checksum, from before checksums, so nothing vouches for it)
    is dropped with a warning and counted in `damaged`: the caller asks that one request again. A damaged
    file (a bad page) ends the run with one CacheCorrupt line. Runs sharing the file never overwrite an entry:
    the first writer wins, and `put` returns the stored text to the later one.
    """

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
                " key TEXT PRIMARY KEY, model TEXT, request TEXT, completion TEXT, created REAL, digest BLOB)"
            )
            columns = {row[1] for row in self._db.execute("PRAGMA table_info(completions)")}
            # A cache written before entries had checksums, or before they kept the reply's token usage.
            for column, kind in (("digest", "BLOB"), ("usage", "TEXT")):
                if column not in columns:
                    self._add_column(column, kind)
            self._db.commit()
        except sqlite3.DatabaseError as exc:
            if isinstance(exc, sqlite3.OperationalError):  # cannot open or write: a folder or permission problem
                raise ToolkitError(f"cannot open the teacher cache {self.path}: {_reason(exc)} "
                                   f"(set TOOLKIT_CACHE or cache_dir to a writable folder)") from None
            raise self._corrupt(exc) from None
        except OSError as exc:
            raise ToolkitError(f"cannot open the teacher cache {self.path}: {_reason(exc)} "
                               f"(set TOOLKIT_CACHE or cache_dir to a writable folder)") from None
        self.hits = 0
        self.misses = 0
        self.damaged = 0  # damaged entries dropped by lookup (their requests are asked again)

    def _add_column(self, column: str, kind: str) -> None:
        try:
            self._db.execute(f"ALTER TABLE completions ADD COLUMN {column} {kind}")
        except sqlite3.OperationalError as exc:  # another process added it a moment ago
            if "duplicate column" not in str(exc):
                raise

    def _corrupt(self, why: BaseException | str) -> CacheCorrupt:
        reason = why if isinstance(why, str) else _reason(why)
        return CacheCorrupt(f"teacher cache {self.path} is corrupt ({reason}): move it aside or set TOOLKIT_CACHE "
                            f"to another folder and run again; nothing was lost from the run folder, the requests "
                            f"it held are asked again")

    def get(self, key: str) -> str | None:
        entry = self.lookup(key)
        return None if entry is None else entry[0]

    def lookup(self, key: str) -> tuple[str, dict | None] | None:
        """(completion, usage) of a stored request, None when absent or damaged (then dropped: ask again); usage
        is the reply's token counts when it was first asked ({"prompt_tokens", "completion_tokens"}), None for
        entries stored without."""
        with self._lock:
            entry = self._read(key)
            if isinstance(entry, str):
                self._drop(key, entry)
        if entry is None or isinstance(entry, str):
            self.misses += 1
            return None
        self.hits += 1
        return entry

    def _read(self, key: str) -> tuple[str, dict | None] | str | None:
        """The stored (completion, usage), None when absent, or why the entry is damaged (under the lock)."""
        try:
            # As bytes: a text column that is not UTF-8 would otherwise fail the whole query.
            row = self._db.execute("SELECT CAST(completion AS BLOB), typeof(completion), digest, CAST(usage AS BLOB) "
                                   "FROM completions WHERE key = ?", (key,)).fetchone()
        except sqlite3.DatabaseError as exc:  # "database disk image is malformed": a bad page
            raise self._corrupt(exc) from None
        if row is None:
            return None
        raw, kind, digest, usage = row
        try:
            completion = raw.decode() if kind == "text" else None
        except UnicodeDecodeError:
            completion = None
        if completion is None:
            return "its text does not decode"
        if digest is None:
            return "it has no checksum (stored before entries had one)"
        if digest != _digest(key, completion):
            return "it does not match its checksum"
        return completion, _usage(usage.decode(errors="replace") if isinstance(usage, bytes) else None)

    def _drop(self, key: str, why: str) -> None:
        try:
            self._db.execute("DELETE FROM completions WHERE key = ?", (key,))
            self._db.commit()
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                self._db.rollback()
            if isinstance(exc, sqlite3.DatabaseError) and not isinstance(exc, sqlite3.OperationalError):
                raise self._corrupt(exc) from None
            raise ToolkitError(f"cannot write the teacher cache {self.path}: {_reason(exc)}") from None
        self.damaged += 1
        log.warning("warning: teacher cache %s: a damaged entry (%s) was dropped; its request is asked again",
                    self.path, why)

    def put(self, key: str, model: str, request: dict, completion: str, usage: dict | None = None) -> str:
        """Store one completion and its reply's token usage, and return the text the cache now holds for `key`,
        which the caller uses: another run sharing the file may have stored its own sample first (first writer
        wins, so both runs use the same one). `request` must not hold credentials (it is kept for inspection);
        a lone surrogate in the reply is stored and returned as U+FFFD."""
        completion = _LONE_SURROGATE.sub("\ufffd", completion)
        row = (key, model, _LONE_SURROGATE.sub("\ufffd", json.dumps(request, ensure_ascii=False)), completion,
               time.time(), _digest(key, completion), None if usage is None else json.dumps(usage))
        with self._lock:
            try:
                insert = "INSERT OR IGNORE INTO completions (key, model, request, completion, created, digest, usage)" \
                         " VALUES (?, ?, ?, ?, ?, ?, ?)"
                if self._db.execute(insert, row).rowcount == 0:
                    stored = self._read(key)
                    if isinstance(stored, tuple):  # another run's sound entry stands
                        self._db.commit()
                        return stored[0]
                    # damaged (or gone a moment ago): ours takes its place
                    self._db.execute("DELETE FROM completions WHERE key = ?", (key,))
                    self._db.execute(insert, row)
                self._db.commit()
            except sqlite3.Error as exc:  # a full disk: earlier entries stay committed
                with contextlib.suppress(sqlite3.Error):
                    self._db.rollback()
                if isinstance(exc, sqlite3.DatabaseError) and not isinstance(exc, sqlite3.OperationalError):
                    raise self._corrupt(exc) from None  # a bad page met while inserting
                raise ToolkitError(f"cannot write the teacher cache {self.path}: {_reason(exc)}; "
                                   f"completed requests are kept") from None
        return completion

    def __len__(self) -> int:
        with self._lock:
            try:
                return self._db.execute("SELECT COUNT(*) FROM completions").fetchone()[0]
            except sqlite3.DatabaseError as exc:
                raise self._corrupt(exc) from None

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _usage(stored: object) -> dict | None:
    """The stored usage JSON; accounting only (outside the checksum), so an unreadable one counts as none."""
    try:
        usage = json.loads(stored) if isinstance(stored, str) else None
    except ValueError:
        return None
    return usage if isinstance(usage, dict) else None


def _reason(exc: BaseException) -> str:
    text = getattr(exc, "strerror", None) or str(exc)
    return text.splitlines()[0] if text else type(exc).__name__
