"""User-facing errors: the CLI prints their message on one line and exits non-zero."""
from __future__ import annotations


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
