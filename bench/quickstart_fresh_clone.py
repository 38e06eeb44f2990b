"""The quickstart as a newcomer runs it: a fresh clone, the README's Quickstart block line by line, timed.

Clones --rev (default HEAD) of this repository into --into (a folder that must not exist yet; put it beside this
checkout, e.g. /work/ci_fresh, so that the quickstart's `data.root: ../../shared/data` finds the data), then runs
each line of the first bash block under "## Quickstart" in README.md in the clone, as `.ci/run` does, and times
each line on its own (setup, then `toolkit distill`). The teacher request cache and the joined packaged models
(TOOLKIT_CACHE) start empty in `<into>.cache`, so every teacher request is sent, as on a new machine. The
llama-cpp-python wheel cache is the user's; whether it held the wheel is recorded (without it, setup compiles
llama.cpp for several minutes more).

Written: each line's seconds; the run's stages from its manifest (seconds and peak RSS); the distill's peak (the
largest stage peak); the held-out accuracies (rounds.json) and the deploy pick; the commit and the machine with
its CPU model and features. The clone stays: `.ci/run` there then resumes the finished quickstart and runs the
tests, so one clone gives both the CI check and this figure.

    PATH=/usr/bin:/bin .venv/bin/python bench/quickstart_fresh_clone.py --into /work/ci_fresh \\
        --out bench/results/quickstart_wall_avx2.json
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from _common import emit, machine

from toolkit.core.defaults import user_cache

ROOT = Path(__file__).resolve().parents[1]
LLAMA_WHEEL = "llama_cpp_python-0.3.36-*.whl"  # scripts/setup.sh's LLAMA_VERSION


def quickstart_lines(readme: str) -> list[str]:
    """The commands of the first ```bash block under "## Quickstart" (the block .ci/run runs)."""
    lines, inside, grab = [], False, False
    for line in readme.splitlines():
        if line == "## Quickstart":
            inside = True
        elif inside and line.startswith("## "):
            break
        elif inside and not grab and line.startswith("```bash"):
            grab = True
        elif grab and line.startswith("```"):
            break
        elif grab and line.strip() and not line.lstrip().startswith("#"):
            lines.append(line.strip())
    if not lines:
        sys.exit("README.md has no bash block under '## Quickstart'")
    return lines


def wheel_cached() -> bool:
    """Whether setup.sh's wheel folder ($TOOLKIT_WHEELS, else the user cache's wheels/) holds the wheel."""
    wheels = Path(os.environ.get("TOOLKIT_WHEELS") or user_cache() / "wheels")
    return any(wheels.glob(LLAMA_WHEEL))


def run_summary(run: Path) -> dict:
    manifest = json.loads((run / "manifest.json").read_text())
    stages = {name: {k: v[k] for k in ("seconds", "peak_rss_bytes", "tokens_per_s") if k in v}
              for name, v in manifest["stages"].items()}
    peaks = [v["peak_rss_bytes"] for v in stages.values() if "peak_rss_bytes" in v]
    rounds = json.loads((run / "rounds.json").read_text())
    deploy_json = run / "deploy" / "deploy.json"
    deploy = json.loads(deploy_json.read_text()) if deploy_json.is_file() else {}
    return {"stages": stages, "stage_seconds_total": round(sum(v.get("seconds", 0) for v in stages.values()), 1),
            "peak_rss_bytes": max(peaks) if peaks else None,
            "strict_match": {row["model"]: row["strict_match"] for row in rounds},
            "exports": {row["name"]: {k: row.get(k) for k in ("strict_match", "decode_tok_s", "size_bytes")}
                        for row in deploy.get("rows", [])},
            "deploy_pick": deploy.get("pick", {}).get("chosen")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--into", type=Path, required=True, help="the clone's folder (must not exist)")
    ap.add_argument("--rev", default="HEAD")
    ap.add_argument("--run", default="runs/quickstart", help="the run folder the block makes, in the clone")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    into = args.into.resolve()
    if into.exists():
        sys.exit(f"{into} exists: give a new folder")
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", args.rev], check=True,
                            capture_output=True, text=True).stdout.strip()
    subprocess.run(["git", "clone", "-q", str(ROOT), str(into)], check=True)
    subprocess.run(["git", "-C", str(into), "checkout", "-q", commit], check=True)
    cache = into.with_name(into.name + ".cache")
    env = {**os.environ, "TOOLKIT_CACHE": str(cache)}
    cached_wheel = wheel_cached()
    timings = []
    for line in quickstart_lines((into / "README.md").read_text()):
        start = time.perf_counter()
        r = subprocess.run(["bash", "-euo", "pipefail", "-c", line], cwd=into, env=env)
        timings.append({"command": line, "seconds": round(time.perf_counter() - start, 1), "exit": r.returncode})
        print(f"{line}: {timings[-1]['seconds']} s, exit {r.returncode}", file=sys.stderr)
        if r.returncode:
            break
    venv_python = into / ".venv" / "bin" / "python"
    result = {"bench": "quickstart_fresh_clone", "commit": commit,
              "setup_python": subprocess.run([str(venv_python), "--version"], capture_output=True,
                                             text=True).stdout.strip() if venv_python.exists() else None,
              "llama_wheel_cached_before": cached_wheel, "teacher_cache": "empty", "lines": timings,
              "command": "python bench/quickstart_fresh_clone.py " + " ".join(sys.argv[1:]),
              "date": time.strftime("%Y-%m-%d"), "machine": machine(2)}
    if all(t["exit"] == 0 for t in timings):
        result.update(run_summary(into / args.run))
    emit(result, args.out)
    if any(t["exit"] for t in timings):
        sys.exit(1)


if __name__ == "__main__":
    main()
