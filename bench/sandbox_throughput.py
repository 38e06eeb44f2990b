"""PoT sandbox throughput: programs per second for 200 small programs, with 1 and 2 workers."""
from __future__ import annotations

import json
import time

from toolkit.sandbox import run_programs

PROGRAMS = 200


def programs(n: int) -> list[str]:
    """Small PoT-like programs: arithmetic, a loop, a Fraction; each sets `answer`."""
    return [f"from fractions import Fraction\ntotal = sum(range({i}))\nanswer = Fraction(total, {i % 7 + 1}) + {i} * 3"
            for i in range(n)]


def main() -> None:
    codes = programs(PROGRAMS)
    for workers in (1, 2):
        start = time.perf_counter()
        results = run_programs(codes, workers=workers)
        seconds = time.perf_counter() - start
        failed = [r for r in results if r.error_kind is not None]
        if failed:
            raise SystemExit(f"{len(failed)} programs failed, e.g. {failed[0]}")
        print(json.dumps({"programs": PROGRAMS, "workers": workers, "seconds": round(seconds, 3),
                          "programs_per_s": round(PROGRAMS / seconds, 1)}), flush=True)


if __name__ == "__main__":
    main()
