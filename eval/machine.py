"""Machine facts for a benchmark row: CPU, cores, measured memory bandwidth, load, versions.

Self-contained (stdlib + numpy only): `toolkit bench --remote` ships this file beside
bench_runner.py to an edge device that has no toolkit installed.
"""
from __future__ import annotations

import os
import platform
import time
from importlib import metadata

# Packages whose versions decide the figures; absent ones are left out.
VERSIONED = ("llama_cpp_python", "onnxruntime", "onnxruntime-genai", "torch", "transformers", "optimum-onnx",
             "numpy", "toolkit")


def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo (Linux), else platform.processor()."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("model name", "Hardware", "Model")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cores() -> int:
    """CPUs this process may run on (the affinity mask, which containers and taskset narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS has no affinity call
        return os.cpu_count() or 1


def load_average() -> float:
    """The 1-minute load average (runnable + waiting tasks), 0.0 where the OS has none."""
    try:
        return os.getloadavg()[0]
    except OSError:
        return 0.0


def is_busy(load1: float, n_cores: int, threads: int) -> bool:
    """True when other work leaves fewer idle cores than the benchmark's threads (DESIGN: contention trap).

    Idle cores ≈ cores − load; half a core of slack absorbs the shell and the sampler itself.
    llama.cpp's spinning workers turn a shared core into a 10–100× slowdown, so such figures are noise.
    """
    return load1 > n_cores - threads + 0.5


def memory_bandwidth_gbps(size_mb: int = 256, repeats: int = 5) -> float:
    """Single-thread copy bandwidth in GB/s (10^9 bytes): bytes read per second of a large numpy copy.

    A copy reads and writes `size` bytes each; we count only the read side, the figure that bounds
    decoding (weights are read, not written). Best of `repeats` so a scheduler hiccup does not count.
    The buffer (256 MB) is far beyond any last-level cache, so this is DRAM, not cache, bandwidth.
    """
    import numpy as np

    src = np.ones(size_mb * 1024 * 1024 // 8, dtype=np.float64)
    dst = np.empty_like(src)
    np.copyto(dst, src)  # fault the pages in before timing
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - t0)
    return src.nbytes / best / 1e9


def versions() -> dict[str, str]:
    """Python and the installed versions of the packages in VERSIONED."""
    out = {"python": platform.python_version()}
    for name in VERSIONED:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def machine_info(measure_bandwidth: bool = True) -> dict:
    """Everything a result row needs to be compared across machines."""
    return {"cpu": cpu_model(), "cores": cores(), "arch": platform.machine(), "os": platform.platform(),
            "mem_bw_GBps": round(memory_bandwidth_gbps(), 2) if measure_bandwidth else None,
            "mem_bw_method": "numpy copy of 256 MiB, read bytes / best-of-5 time, 1 thread",
            "load_avg_1m": round(load_average(), 2), "hostname": platform.node(), "versions": versions()}
