"""Shared by the bench scripts: machine description and the refusal to time on a busy machine."""
from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path

import torch


def machine(threads: int) -> dict:
    """What every result row carries, so figures from different machines are never mixed up."""
    from toolkit import __version__

    return {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "threads": threads,
            "python": platform.python_version(), "torch": torch.__version__, "toolkit": __version__,
            "load_avg_1m": round(os.getloadavg()[0], 2)}


def require_quiet(threads: int, force: bool) -> None:
    """Exit when the 1-minute load average is well above the threads we use (DESIGN.md, contention trap)."""
    load = os.getloadavg()[0]
    if load > threads + 0.5 and not force:
        sys.exit(f"machine busy (load average {load:.2f} with {threads} thread(s)): figures would be "
                 "meaningless; wait for a quiet machine or pass --force")


def emit(result: dict, out: Path | None) -> None:
    """Print the result JSON and, when asked, write it to `out` too."""
    text = json.dumps(result, indent=2)
    print(text)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
