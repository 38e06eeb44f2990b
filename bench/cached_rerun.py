"""A finished recipe run again: wall time of the fully cached second `toolkit distill` against the first.

Both runs are the real CLI in a subprocess, with a fresh output folder and teacher cache under
`--work`, so the first run pays for everything and the second finds every stage done.

    python bench/cached_rerun.py recipes/quickstart.yaml --threads 2 --out bench/results/cached_rerun.json
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import emit, machine, require_quiet


def distill(recipe: Path, overrides: list[str], threads: int) -> float:
    """Seconds of one `toolkit distill` run (the process, start to exit)."""
    # The overrides follow the recipe directly: argparse ends the positional list at the first option.
    cmd = [sys.executable, "-m", "toolkit.cli", "distill", str(recipe), *overrides,
           f"train.threads={threads}", f"teacher.threads={threads}", "--quiet"]
    start = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "NO_COLOR": "1"})
    seconds = time.perf_counter() - start
    if r.returncode != 0:
        sys.exit(f"toolkit distill failed:\n{r.stderr[-2000:]}")
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("recipe", type=Path, nargs="?", default=Path("recipes/quickstart.yaml"))
    ap.add_argument("overrides", nargs="*", metavar="key.path=value", help="recipe overrides for both runs")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--work", type=Path, help="folder for the run and its cache (default: a temporary one)")
    ap.add_argument("--force", action="store_true", help="time even on a busy machine")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    require_quiet(args.threads, args.force)
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        where = [f"output_dir={work / 'runs'}", f"cache_dir={work / 'cache'}"]
        recipe = args.recipe.resolve()
        first = distill(recipe, [*args.overrides, *where], args.threads)
        second = distill(recipe, [*args.overrides, *where], args.threads)
        manifests = list((work / "runs").glob("*/manifest.json"))
        stages = len(json.loads(manifests[0].read_text())["stages"]) if manifests else None
    result = {"bench": "cached_rerun", "recipe": str(args.recipe), "overrides": args.overrides,
              "stages": stages, "first_s": round(first, 1), "second_s": round(second, 2),
              "second_over_first": round(second / first, 4), "machine": machine(args.threads)}
    emit(result, args.out)


if __name__ == "__main__":
    main()
