"""Plots as files: pyplot without a display, and a PNG written atomically (readers never see half an image)."""
from __future__ import annotations

from pathlib import Path


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend (a run on a server has no display)."""
    import matplotlib  # heavy optional runtime, imported on first use

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_png(fig, path: Path) -> None:
    """Write `fig` to `path` through a temporary file beside it, then close the figure."""
    tmp = path.with_name("." + path.name + ".tmp")
    fig.savefig(tmp, format="png")
    pyplot().close(fig)
    tmp.replace(path)
