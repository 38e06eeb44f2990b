"""File IO every layer shares: atomic text/JSON/JSONL writes (readers never see half a file) and JSONL reads."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable

from toolkit.core import untrusted_json
from toolkit.core.errors import ToolkitError


def atomic_write_text(path: Path, text: str) -> None:
    """Write through a temporary file in the same folder and rename: readers never see half a file.

    A failed write (full disk, read-only folder) leaves the old file, no temporary, and raises a
    ToolkitError naming the path.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise ToolkitError(f"cannot write {path}: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise ToolkitError(f"cannot write {path}: {exc.strerror}") from None
        raise


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def atomic_write_jsonl(path: Path, rows: Iterable[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def read_jsonl(path: Path) -> list[dict]:
    """The rows of a JSONL file, through the untrusted-JSON reader: a run folder (rationales, votes, training
    rows) may come from elsewhere, so a row nested too deep or not an object is one error naming file and line."""
    return untrusted_json.load_jsonl(path)
