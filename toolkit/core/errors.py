"""User-facing errors: the CLI prints their message on one line and exits non-zero."""
from __future__ import annotations

import os
import re
from collections.abc import Iterable


class ToolkitError(Exception):
    """An error the user can cause and fix (bad recipe, missing file, unreachable teacher).

    The CLI prints `error: <message>` and exits with `exit_code`, never a traceback.
    """

    exit_code = 2


class RecipeError(ToolkitError):
    """The recipe file or an override is malformed or names an impossible value."""


class DataError(ToolkitError):
    """A data file is missing or a line of it does not parse (message names file and line)."""


class ModelError(ToolkitError):
    """A model reference cannot be resolved, loaded or is of an unsupported architecture."""


class TeacherError(ToolkitError):
    """The teacher endpoint is unreachable or keeps failing after all retries."""


class ExportError(ToolkitError):
    """An export cannot be made (unsupported architecture or type, corrupt input) or failed its checks."""


# What a server may echo back in an error body: the Authorization header, an OpenAI-style key, a
# key=value pair. Matched case-insensitively; the actual key values are redacted as well (redact()).
_SECRET_PATTERNS = [
    (re.compile(r"(\bBearer\s+)(?!\[redacted\])[^\s\"',;)}\]]+", re.I), r"\1[redacted]"),
    (re.compile(r"\bsk-[A-Za-z0-9_\-]{6,}"), "sk-[redacted]"),
    (re.compile(r"((?:api[_-]?key|access[_-]?token|token|secret|password)[\"']?\s*[:=]\s*[\"']?)"
                r"(?!\[redacted\])[^\s\"',;&)}\]]+", re.I), r"\1[redacted]"),
]
# Environment variables whose values are treated as keys wherever they would be printed.
_SECRET_ENV = re.compile(r"(KEY|TOKEN|SECRET|PASSWORD)$", re.I)


def redact(text: str, secrets: Iterable[str | None] = ()) -> str:
    """`text` with each of `secrets`, the values of $*_KEY/$*_TOKEN/… and anything that looks like a key replaced
    by `[redacted]`: for messages that quote what a server sent back (a 401 body may repeat our header)."""
    values = {s for s in secrets if s and len(s) >= 6}
    values |= {v for k, v in os.environ.items() if _SECRET_ENV.search(k) and len(v) >= 8}
    for value in sorted(values, key=len, reverse=True):
        text = text.replace(value, "[redacted]")
    for pattern, repl in _SECRET_PATTERNS:
        text = pattern.sub(repl, text)
    return text
