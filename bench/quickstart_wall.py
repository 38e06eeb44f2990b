"""The quickstart's wall time and peak memory, old code against new, back to back on this machine.

Both run the same recipe, the old commit's `recipes/quickstart.yaml` (the new code reads it too), one after
the other in fresh processes, each from a cold teacher cache (its own empty TOOLKIT_CACHE) so that neither
gets the other's teacher replies:

- old: a `git worktree` of --old (default: the commit before issue 19's first change), imported through
  PYTHONPATH with this checkout's installed packages;
- new: this checkout.

Per run: wall seconds of `toolkit distill`; the peak RSS of its largest process (getrusage of the waited
children); each stage's seconds, and its peak where the code records one; the held-out accuracies
(rounds.json); and a digest of every round's train.jsonl, so a reader can see whether the two trained on
the same data (then their training seconds compare directly).

    python bench/quickstart_wall.py --out bench/results/memory/quickstart_b2b.json
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import emit, machine

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
BEFORE_ISSUE_19 = "6cfbaaa^"  # 6cfbaaa: "Every run stage records its peak RSS", the first issue-19 commit


def old_package(rev: str, into: Path) -> Path:
    """A folder to put first on PYTHONPATH that imports `toolkit` (with its eval/ and export/ parts, which
    pyproject maps into the package) from a worktree of `rev`."""
    tree = into / "tree"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), rev], check=True,
                   capture_output=True)
    pkg = into / "pkg"
    shutil.copytree(tree / "toolkit", pkg / "toolkit")
    for part in ("eval", "export"):
        os.symlink(tree / part, pkg / "toolkit" / part)
    return pkg


def run(label: str, recipe: Path, work: Path, pythonpath: Path | None) -> dict:
    """One `toolkit distill` of `recipe` in `work`, from an empty teacher cache; its figures."""
    env = {**os.environ, "TOOLKIT_CACHE": str(work / "cache")}
    if pythonpath:
        env["PYTHONPATH"] = str(pythonpath)
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    start = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", "import sys; from toolkit.cli import main; sys.exit(main())",
                        "distill", str(recipe), f"name={label}", f"data.root={DATA}"],
                       cwd=work, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if r.returncode:
        sys.exit(f"{label} failed:\n{r.stderr[-3000:]}")
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    folder = work / "runs" / label
    manifest = json.loads((folder / "manifest.json").read_text())
    rounds = json.loads((folder / "rounds.json").read_text())
    return {"label": label, "wall_seconds": round(seconds, 1),
            # ru_maxrss of the largest child so far (kB): valid for this run only when it exceeds the one before
            "largest_process_peak_rss_bytes": peak_kb * 1024 if peak_kb > before else None,
            "stages": {k: {f: v[f] for f in ("seconds", "peak_rss_bytes", "steps", "tokens_per_s") if f in v}
                       for k, v in manifest["stages"].items()},
            "strict_match": {row["model"]: row["strict_match"] for row in rounds},
            "train_data_sha256": {p.parent.name: hashlib.sha256(p.read_bytes()).hexdigest()[:16]
                                  for p in sorted(folder.glob("round-*/train.jsonl"))}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--old", default=BEFORE_ISSUE_19, help="git revision of the old code")
    ap.add_argument("--order", default="old,new", help="which runs first")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="qs-wall-") as tmp:
        tmp = Path(tmp)
        pkg = old_package(args.old, tmp)
        recipe = tmp / "quickstart.yaml"
        recipe.write_text(subprocess.run(["git", "-C", str(ROOT), "show", f"{args.old}:recipes/quickstart.yaml"],
                                         check=True, capture_output=True, text=True).stdout)
        runs = []
        try:
            for which in args.order.split(","):
                work = tmp / which
                work.mkdir()
                runs.append({"code": which, **run(f"quickstart-{which}", recipe, work,
                                                  pkg if which == "old" else None)})
                print(f"{which}: {runs[-1]['wall_seconds']} s", file=sys.stderr)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tmp / "tree")],
                           capture_output=True)
    old_rev = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", args.old], capture_output=True,
                             text=True).stdout.strip()
    new_rev = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True).stdout.strip()
    emit({"bench": "quickstart_wall", "old": old_rev, "new": new_rev, "recipe": f"{old_rev}:recipes/quickstart.yaml",
          "runs": runs, "command": "python bench/quickstart_wall.py " + " ".join(sys.argv[1:]),
          "date": time.strftime("%Y-%m-%d"), "machine": machine(2)}, args.out)


if __name__ == "__main__":
    main()
