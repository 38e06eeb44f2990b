"""PoT sandbox throughput: programs per second for 200 small programs, with 1 and 2 workers, median of 3 runs;
where a cgroup caps each program (toolkit.sandbox.cgroup), also with it switched off, to price it in one run."""
from __future__ import annotations

import argparse
import json
import statistics
import time
from contextlib import nullcontext
from unittest import mock

from _common import require_quiet

from toolkit.core.errors import ToolkitError
from toolkit.eval.machine import busy_check
from toolkit.sandbox import cgroup
from toolkit.sandbox.runner import cgroup_status, prepare, run_programs


def programs(n: int) -> list[str]:
    """Small PoT-like programs: arithmetic, a loop, a Fraction; each sets `answer`."""
    return [f"from fractions import Fraction\ntotal = sum(range({i}))\nanswer = Fraction(total, {i % 7 + 1}) + {i} * 3"
            for i in range(n)]


def rate(codes: list[str], workers: int) -> float:
    """Programs per second for one pass over `codes`; every program must answer."""
    start = time.perf_counter()
    results = run_programs(codes, workers=workers)
    seconds = time.perf_counter() - start
    failed = [r for r in results if r.error_kind is not None]
    if failed:
        raise SystemExit(f"{len(failed)} programs failed, e.g. {failed[0]}")
    return len(codes) / seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--programs", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--force", action="store_true", help="time even on a busy machine (rows say busy)")
    args = ap.parse_args()
    require_quiet(2, args.force)
    try:
        confined = prepare()  # the figure is for the bubblewrap sandbox, unless TOOLKIT_SANDBOX=unsafe says not
    except ToolkitError as exc:
        raise SystemExit(f"error: {exc}") from None
    codes = programs(args.programs)
    for with_cgroup in ((True, False) if cgroup_status()["cgroup"] else (False,)):
        switch = nullcontext() if with_cgroup else mock.patch.object(cgroup, "_layout", lambda: (None, "off"))
        with switch:
            for workers in (1, 2):
                busy = busy_check(workers)["busy"]
                rates = [round(rate(codes, workers), 1) for _ in range(args.repeats)]
                print(json.dumps({"programs": args.programs, "workers": workers, "confined": confined,
                                  "cgroup": with_cgroup, "runs": rates, "programs_per_s": statistics.median(rates),
                                  "busy": busy}), flush=True)


if __name__ == "__main__":
    main()
