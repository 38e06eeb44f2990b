"""Shared by the bench scripts: machine description and the refusal to time on a busy machine."""
from __future__ import annotations

import os
import platform
import sys

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
