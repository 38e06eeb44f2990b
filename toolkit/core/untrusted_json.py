"""The one reader for JSON that someone else may have written: size, nesting depth and top-level type checked."""
from __future__ import annotations

import json
import os
import re
import stat
from itertools import accumulate
from pathlib import Path
from typing import Any

from toolkit.core.errors import ToolkitError

MAX_BYTES = 64 << 20  # a run manifest or a training state is kilobytes; 64 MiB is generous and still bounded
MAX_DEPTH = 64  # our own files nest 5-6 levels; json's C parser overflows Python's recursion limit near 1000

# A string literal, scanned possessively to its closing quote or the end of the text: every attempt matches,
# so the scan is linear even for hostile input (an unterminated string is json.loads's to report).
_STRING = re.compile(r'"(?:[^"\\]|\\.)*+(?:"|\\?\Z)', re.S)
_BRACKET = re.compile(r"[\[\]{}]")
_TYPE_NAMES = {dict: "a JSON object", list: "a JSON array", str: "a JSON string", int: "a number", float: "a number"}


class UntrustedJSONError(ToolkitError):
    """JSON from elsewhere that is too large, nested too deep, not JSON, or not of the expected type.

    `str(exc)` names the source and the reason on one line (or is `message`, a caller's own line that names
    both and the fix); `reason` holds the reason alone.
    """

    def __init__(self, source: str, reason: str, message: str | None = None):
        super().__init__(message or f"{source}: {reason}")
        self.source, self.reason = source, reason


def nesting_depth(text: str) -> int:
    """How deep arrays and objects nest in `text` (brackets inside strings do not count); linear time."""
    structure = _STRING.sub("", text)
    return max(accumulate((1 if c in "[{" else -1 for c in _BRACKET.findall(structure)), initial=0))


def loads(data: str | bytes, source: str, *, expect: type | tuple[type, ...] = dict, max_bytes: int = MAX_BYTES,
          max_depth: int = MAX_DEPTH) -> Any:
    """`data` parsed as JSON, or UntrustedJSONError naming `source` (a file or "the result pipe of …").

    Checked before parsing: at most `max_bytes` bytes and `max_depth` levels of nesting, so neither memory nor
    the recursion limit is the program's to spend; after: the top level is an instance of `expect`.
    """
    if len(data) > max_bytes:
        raise UntrustedJSONError(source, f"larger than {max_bytes} bytes")
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
    except UnicodeDecodeError as exc:
        raise UntrustedJSONError(source, f"not UTF-8 (byte {exc.start})") from None
    if nesting_depth(text) > max_depth:
        raise UntrustedJSONError(source, f"nested deeper than {max_depth} levels")
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as exc:  # RecursionError: only if max_depth was raised near the limit
        raise UntrustedJSONError(source, f"not JSON ({str(exc).splitlines()[0][:120]})") from None
    if not isinstance(value, expect):
        kinds = expect if isinstance(expect, tuple) else (expect,)
        wanted = " or ".join(dict.fromkeys(_TYPE_NAMES.get(t, t.__name__) for t in kinds))
        raise UntrustedJSONError(source, f"not {wanted}")
    return value


def read_bounded(path: Path, max_bytes: int) -> bytes:
    """The bytes of the regular file at `path`, at most `max_bytes` of them, else UntrustedJSONError.

    Opened without blocking and checked on the open descriptor, so a FIFO or device swapped in after any
    earlier check cannot hang the reader (a FIFO's open waits for a writer), and read no further than the
    limit, so a file that grows after its size was seen cannot fill memory. OSError passes through: the
    caller knows whether a missing file is an error."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise UntrustedJSONError(str(path), "not a regular file")
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise UntrustedJSONError(str(path), f"larger than {max_bytes} bytes")
    return data


def load(path: Path, *, expect: type | tuple[type, ...] = dict, max_bytes: int = MAX_BYTES,
         max_depth: int = MAX_DEPTH) -> Any:
    """The JSON file at `path` (a regular file, read_bounded) through loads(). OSError passes through: the
    caller knows whether a missing file is an error."""
    return loads(read_bounded(Path(path), max_bytes), str(path), expect=expect, max_bytes=max_bytes,
                 max_depth=max_depth)


def load_jsonl(path: Path, *, expect: type | tuple[type, ...] = dict, max_bytes: int = MAX_BYTES,
               max_depth: int = MAX_DEPTH, max_file_bytes: int = 1 << 30) -> list[Any]:
    """Every non-blank line of the JSONL file at `path` through loads() (`max_bytes` per line: a run's rationales
    file may be larger than any one JSON file; `max_file_bytes` in all); an error names the file and line."""
    path = Path(path)
    return [loads(line, f"{path} line {n}", expect=expect, max_bytes=max_bytes, max_depth=max_depth)
            for n, line in enumerate(read_bounded(path, max_file_bytes).splitlines(), 1) if line.strip()]
