"""Defaults read from the machine and the environment: CPU threads, the data root and the cache folders."""
from __future__ import annotations

import os
from pathlib import Path


def default_threads() -> int:
    """CPUs this process may run on (the affinity mask, which containers and taskset narrow); all CPUs where
    the OS has no affinity call (macOS)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def data_root(given: str | Path | None = None, default: str | Path = "data") -> Path:
    """The folder holding the built-in suites: `given` (a --data-root flag), else $TOOLKIT_DATA, else `default`
    (./data, or a recipe's data.root)."""
    return Path(given or os.environ.get("TOOLKIT_DATA") or default)


def user_cache() -> Path:
    """$XDG_CACHE_HOME/toolkit, else ~/.cache/toolkit: what every run of the machine shares."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "toolkit"


def cache_root(given: str | None = None) -> Path:
    """The toolkit's cache folder (teacher requests, joined packaged models): `given` (a recipe's cache_dir),
    else $TOOLKIT_CACHE, else user_cache()."""
    if given:
        return Path(given).expanduser()
    if os.environ.get("TOOLKIT_CACHE"):
        return Path(os.environ["TOOLKIT_CACHE"]).expanduser()
    return user_cache()
