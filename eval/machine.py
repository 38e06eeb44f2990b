"""Machine facts for a benchmark row: CPU, cores, read bandwidth, other processes' CPU use, versions.

Self-contained (stdlib + numpy only): `toolkit bench --remote` ships this file beside
bench_runner.py to an edge device that has no toolkit installed.
"""
from __future__ import annotations

import os
import platform
import threading
import time
from importlib import metadata

# Packages whose versions decide the figures; absent ones are left out.
VERSIONED = ("llama_cpp_python", "onnxruntime", "onnxruntime-genai", "torch", "transformers", "optimum-onnx",
             "numpy", "toolkit")
# Cores that others may use beside a bench before it is refused: daemons and a shell take a few hundredths
# of a core on a quiet machine; a quarter core of someone else's work already shows in decode figures.
BUSY_SLACK_CORES = 0.25
BUSY_WINDOW_S = 1.0  # CPU use is sampled over this long (DESIGN.md, contention trap)
PROBE_RUNS = 5
PROBE_MIN_BYTES = 256 * 1024 * 1024
PROBE_METHOD = ("read-only stream: numpy bitwise_or.reduce over uint64, each thread its own contiguous slice, "
                "bytes read / wall time of the slowest thread, best of {runs} runs")


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


# The /proc/cpuinfo flags that pick CPU kernels in torch (oneDNN) and llama.cpp, and so move speed and scratch
# memory: the same run peaked 0.5 GB higher on an AMD EPYC with AVX-512 BF16 than on an Intel with AMX (issue 34).
KERNEL_FLAGS = ("avx2", "fma", "f16c", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8",
                "asimd", "sve")


def cpu_features() -> list[str]:
    """Which of KERNEL_FLAGS this CPU has (Linux; empty elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    have = set(line.split(":", 1)[1].split())
                    return [flag for flag in KERNEL_FLAGS if flag in have]
    except OSError:
        pass
    return []


def cores() -> int:
    """CPUs this process may run on (the affinity mask, which containers and taskset narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS has no affinity call
        return os.cpu_count() or 1


def load_average() -> float:
    """The 1-minute load average (runnable + waiting tasks), 0.0 where the OS has none. Recorded, never judged:
    it lags by minutes (DESIGN.md, contention trap)."""
    try:
        return os.getloadavg()[0]
    except OSError:
        return 0.0


# --- Who uses the cores now -------------------------------------------------------------------------------

def _cpu_ticks() -> int:
    """Busy clock ticks of all CPUs since boot (/proc/stat: user, nice, system, irq, softirq, steal).
    Steal counts: a hypervisor giving our cores to another guest takes them from the bench as much as a process."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return user + nice + system + irq + softirq + steal


def _processes() -> dict[int, tuple[int, int, str]]:
    """pid -> (parent pid, utime + stime in ticks, command name) of every live process (/proc/PID/stat)."""
    out = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                text = f.read()
        except OSError:  # exited since listdir
            continue
        comm = text[text.index("(") + 1:text.rindex(")")]  # the name may hold spaces and parentheses
        rest = text[text.rindex(")") + 2:].split()  # field 3 (state) onwards
        out[int(entry)] = (int(rest[1]), int(rest[11]) + int(rest[12]), comm)
    return out


def own_tree(pid: int, procs: dict[int, tuple[int, int, str]]) -> set[int]:
    """pid, its ancestors (the CLI waiting on the runner, a shell) and its descendants: our own work.
    Siblings and everything else are others."""
    tree, p = {pid}, procs.get(pid, (0,))[0]
    while p > 0 and p not in tree:
        tree.add(p)
        p = procs.get(p, (0,))[0]
    children: dict[int, list[int]] = {}
    for child, (parent, _, _) in procs.items():
        children.setdefault(parent, []).append(child)
    stack = [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            if child not in tree:
                tree.add(child)
                stack.append(child)
    return tree


def cpu_use(window_s: float = BUSY_WINDOW_S, own: set[int] | None = None) -> dict:
    """Cores used during a `window_s` sample, split into ours and others'.

    Total busy time comes from /proc/stat, so a process that starts and ends inside the window counts; ours
    is the utime + stime growth of `own` (default: this process's tree, see own_tree) from /proc/PID/stat.
    Others = total − ours, in cores (CPU seconds ÷ window seconds). `top` names the busiest others.
    """
    hz = os.sysconf("SC_CLK_TCK")
    before, ticks0, t0 = _processes(), _cpu_ticks(), time.monotonic()
    time.sleep(window_s)
    after, ticks1, t1 = _processes(), _cpu_ticks(), time.monotonic()
    seconds = t1 - t0
    if own is None:
        own = own_tree(os.getpid(), {**before, **after})
    # a process born inside the window spent all its CPU time in it
    delta = {pid: cpu - before.get(pid, (0, 0, ""))[1] for pid, (_, cpu, _) in after.items()}
    ours = sum(delta[p] for p in own if p in delta)
    total = ticks1 - ticks0
    top = sorted(((d / hz / seconds, pid) for pid, d in delta.items() if pid not in own and d > 0), reverse=True)[:5]
    return {"window_s": round(seconds, 3), "total_cores": round(total / hz / seconds, 3),
            "own_cores": round(ours / hz / seconds, 3), "others_cores": round(max(total - ours, 0) / hz / seconds, 3),
            "top": [{"pid": pid, "comm": after[pid][2], "cores": round(c, 3)} for c, pid in top]}


def is_busy(others_cores: float, n_cores: int, threads: int, slack: float = BUSY_SLACK_CORES) -> bool:
    """True when other processes leave fewer free cores than the bench's threads, beyond `slack` cores.
    llama.cpp's spinning workers turn a shared core into a 10–100× slowdown, so such figures are noise."""
    return others_cores > n_cores - threads + slack


def busy_check(threads: int, window_s: float = BUSY_WINDOW_S) -> dict:
    """Sample who uses the cores now and judge whether `threads` bench threads fit beside the others.

    Without /proc (macOS) the 1-minute load average stands in for others' cores, and `method` says so.
    """
    n = cores()
    if os.path.exists("/proc/stat"):
        use, method = cpu_use(window_s), f"/proc/stat and /proc/*/stat over {window_s:g} s, own process tree excluded"
    else:
        use, method = {"others_cores": round(load_average(), 3)}, "1-minute load average (no /proc here)"
    return {**use, "method": method, "cores": n, "threads": threads, "slack_cores": BUSY_SLACK_CORES,
            "busy": is_busy(use["others_cores"], n, threads)}


# --- Read bandwidth ---------------------------------------------------------------------------------------

def last_level_cache_bytes() -> int | None:
    """Size of the largest CPU cache level (sysfs, Linux), None where unknown."""
    sizes = []
    base = "/sys/devices/system/cpu/cpu0/cache"
    try:
        names = [n for n in os.listdir(base) if n.startswith("index")]
    except OSError:
        return None
    for name in names:
        try:
            with open(f"{base}/{name}/size") as f:
                text = f.read().strip()
        except OSError:
            continue
        scale = {"K": 1024, "M": 1024 ** 2, "G": 1024 ** 3}.get(text[-1:].upper(), 1)
        sizes.append(int(text.rstrip("KMGkmg")) * scale)
    return max(sizes) if sizes else None


def probe_buffer_bytes() -> int:
    """256 MiB, or 8 × the last-level cache when that is larger: a stream from DRAM, not from cache."""
    return max(PROBE_MIN_BYTES, 8 * (last_level_cache_bytes() or 0))


def slices(n_items: int, threads: int) -> list[tuple[int, int]]:
    """[start, stop) index ranges that split n_items into `threads` contiguous parts covering each item once."""
    bounds = [n_items * i // threads for i in range(threads + 1)]
    return list(zip(bounds[:-1], bounds[1:]))


def read_pass(parts: list) -> float:
    """Seconds for one thread per part to OR-reduce its part (numpy releases the GIL inside the reduction).
    The kernel writes one scalar per thread: every byte it moves is a byte read."""
    import numpy as np  # only the bandwidth probe needs numpy; this file also runs, shipped, where it may be absent

    start = threading.Barrier(len(parts) + 1)

    def work(part) -> None:
        start.wait()
        np.bitwise_or.reduce(part)

    workers = [threading.Thread(target=work, args=(p,)) for p in parts]
    for w in workers:
        w.start()
    start.wait()
    t0 = time.perf_counter()
    for w in workers:
        w.join()
    return time.perf_counter() - t0


def read_bandwidth(threads: int, buffer_bytes: int | None = None, runs: int = PROBE_RUNS) -> dict:
    """Read-only streaming bandwidth with `threads` threads, in GB/s (10^9 bytes): buffer bytes ÷ best run time.

    This is what bounds decoding: a decode step reads its weights and writes next to nothing. Best of `runs`
    so a scheduler hiccup does not count; the buffer is read once untimed first so its pages exist.
    """
    import numpy as np

    size = buffer_bytes or probe_buffer_bytes()
    buf = np.ones(size // 8, dtype=np.uint64)
    parts = [buf[a:b] for a, b in slices(buf.size, threads)]
    bytes_read = sum(p.nbytes for p in parts)
    read_pass(parts)
    best = min(read_pass(parts) for _ in range(runs))
    return {"GBps": round(bytes_read / best / 1e9, 2), "threads": threads, "bytes_read_per_run": bytes_read,
            "best_s": best, "runs": runs}


def bandwidth_info(threads: int) -> dict:
    """The probe at the run's thread count (the ceiling's bandwidth) and with all cores, method and buffer."""
    size, n = probe_buffer_bytes(), cores()
    run = read_bandwidth(threads, size)
    every = run if threads == n else read_bandwidth(n, size)
    return {"mem_bw_GBps": run["GBps"], "mem_bw_all_cores_GBps": every["GBps"],
            "mem_bw_probe": {"method": PROBE_METHOD.format(runs=PROBE_RUNS), "buffer_bytes": size,
                             "llc_bytes": last_level_cache_bytes(), "threads": threads, "all_cores": n,
                             "bytes_read_per_run": run["bytes_read_per_run"]}}


def versions() -> dict[str, str]:
    """Python and the installed versions of the packages in VERSIONED."""
    out = {"python": platform.python_version()}
    for name in VERSIONED:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def machine_info(threads: int = 1, measure_bandwidth: bool = True) -> dict:
    """Everything a result row needs to be compared across machines; bandwidth probed at `threads`."""
    bw = bandwidth_info(threads) if measure_bandwidth else {"mem_bw_GBps": None, "mem_bw_all_cores_GBps": None}
    return {"cpu": cpu_model(), "cpu_features": cpu_features(), "cores": cores(), "arch": platform.machine(), "os": platform.platform(), **bw,
            "load_avg_1m": round(load_average(), 2), "hostname": platform.node(), "versions": versions()}
