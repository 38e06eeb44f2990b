"""Peak resident memory of a block of work (a run stage, a bench step), and giving freed memory back to the OS."""
from __future__ import annotations

import ctypes
import gc
import re
import resource
import threading
from pathlib import Path

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")
# The most this process has held over all blocks measured so far (bytes): resetting VmHWM for a block
# forgets the peak before it, so each reset first folds the old high-water mark in here.
_process_peak = 0


def _status_kb(field: str) -> int | None:
    """A `/proc/self/status` figure in kB (VmRSS, VmHWM), or None off Linux."""
    try:
        m = re.search(rf"^{field}:\s+(\d+) kB", _STATUS.read_text(), re.M)
    except OSError:
        return None
    return int(m.group(1)) if m else None


def rss_bytes() -> int | None:
    """This process's resident memory now (bytes), or None off Linux."""
    kb = _status_kb("VmRSS")
    return None if kb is None else kb * 1024


def hwm_bytes() -> int | None:
    """This process's resident high-water mark (VmHWM, bytes) since start or the last reset, None off Linux."""
    kb = _status_kb("VmHWM")
    return None if kb is None else kb * 1024


def _reset_hwm() -> bool:
    """Reset this process's VmHWM to its current RSS (Linux ≥ 4.0: write 5 to clear_refs); True when it took.

    Checked, not assumed: a kernel or sandbox that refuses the write, or ignores it, leaves VmHWM at the
    old peak, and the caller must fall back to sampling.
    """
    global _process_peak
    before = _status_kb("VmHWM")
    if before is None:
        return False
    _process_peak = max(_process_peak, before * 1024)
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        return False
    hwm, rss = _status_kb("VmHWM"), _status_kb("VmRSS")
    # After a reset the mark equals the RSS of that moment; allow for pages touched between the two reads.
    return hwm is not None and rss is not None and hwm <= rss + 16 * 1024


def children_maxrss_bytes() -> int:
    """The largest peak RSS of any child process reaped so far (bytes; Linux reports ru_maxrss in kB).

    A lifetime maximum over all finished children, grandchildren included (torchrun's workers reach it
    through torchrun): it tells a block's children apart only when it rises during that block.
    """
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024


class PeakRSS:
    """Measure the peak RSS of the `with` block.

    `peak_bytes`: this process's own peak during the block. Method "vmhwm": the kernel's high-water mark,
    reset at the start (exact, every page counted). Fallback "sampled": a thread reads VmRSS every
    `interval` seconds (a peak shorter than that can be missed; a lower bound).
    `children_peak_bytes`: the largest peak of a child process that finished inside the block (a teacher
    server, torchrun's workers, an export subprocess), or None when no child finished with a peak above
    every earlier child's (then the block's children are not known to have needed more: see
    children_maxrss_bytes). The two are separate processes; they may or may not have overlapped in time.
    `start_bytes`: this process's RSS as the block began, what it inherited from earlier work: the peak
    less this is what the block itself added.
    """

    def __init__(self, interval: float = 0.05):
        self.interval = interval
        self.method = "vmhwm"
        self.peak_bytes: int | None = None
        self.start_bytes: int | None = None
        self.children_peak_bytes: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._sampled = 0

    def __enter__(self) -> PeakRSS:
        self._children_before = children_maxrss_bytes()
        self.start_bytes = rss_bytes()
        if not _reset_hwm():
            self.method = "sampled"
            self._sampled = rss_bytes() or 0
            self._thread = threading.Thread(target=self._sample, daemon=True, name="peak-rss-sampler")
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self._sampled = max(self._sampled, rss_bytes() or 0)

    def __exit__(self, *exc) -> None:
        global _process_peak
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self.peak_bytes = max(self._sampled, rss_bytes() or 0) or None
        else:
            self.peak_bytes = hwm_bytes()
        if self.peak_bytes:
            _process_peak = max(_process_peak, self.peak_bytes)
        after = children_maxrss_bytes()
        self.children_peak_bytes = after if after > self._children_before else None

    def record(self) -> dict:
        """The manifest's fields for this block."""
        out = {"peak_rss_bytes": self.peak_bytes, "peak_rss_method": self.method, "start_rss_bytes": self.start_bytes}
        if self.children_peak_bytes is not None:
            out["children_peak_rss_bytes"] = self.children_peak_bytes
        return out


def process_peak_bytes() -> int | None:
    """The most this process has held since it started (bytes), across the blocks that reset VmHWM."""
    hwm = hwm_bytes()
    return max(_process_peak, hwm) if hwm is not None else (_process_peak or None)


def release_memory() -> None:
    """Collect garbage and hand freed heap pages back to the OS.

    glibc keeps freed memory in its arenas (its mmap threshold rises to the largest freed block, up to
    32 MB, so a freed model's tensors land on the heap next time): without malloc_trim a freed student
    still counts in RSS and the next stage's peak sits on top of it.
    """
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim
        pass


# glibc's mallopt parameter for the mmap threshold (malloc.h).
_M_MMAP_THRESHOLD = -3
_threshold: int | None = None  # what pin_mmap_threshold last set, in bytes


def pin_mmap_threshold(nbytes: int = 128 * 1024) -> bool:
    """Serve every allocation of `nbytes` or more with its own mmap, returned to the OS when freed.

    By default glibc raises the threshold to the largest block freed so far (up to 32 MB): after the
    first training step, activations and gradients of a few MB come from the heap arenas, whose freed
    pages stay resident. Measured on SmolLM2-135M training (4 × 512 tokens, bench/README.md "Memory"):
    peak RSS 4.1 GB → 2.9 GB from the second step on. Setting the threshold explicitly turns the dynamic
    raise off; 128 kB is glibc's initial value. Process-wide; True when glibc took it.
    """
    global _threshold
    try:
        taken = bool(ctypes.CDLL("libc.so.6").mallopt(_M_MMAP_THRESHOLD, nbytes))
    except (OSError, AttributeError):  # not glibc
        return False
    if taken:
        _threshold = nbytes
    return taken


def mmap_threshold() -> int | None:
    """The mmap threshold (bytes) this process last set with pin_mmap_threshold; None: never set (glibc's own).
    glibc has no call that reads it back, and probing with an allocation is served from free heap space."""
    return _threshold


# glibc's ceiling for its dynamic threshold on 64-bit (DEFAULT_MMAP_THRESHOLD_MAX): where it ends up anyway.
_HEAP_REUSE_THRESHOLD = 32 * 1024 * 1024


def unpin_mmap_threshold() -> None:
    """Back to heap reuse for blocks under 32 MB, as glibc's dynamic threshold would settle: generation
    allocates a new KV cache every token, and an mmap per allocation (page faults, zeroing) made greedy
    evaluation 2.2x slower (bench/memory.py, 56 s against 25 s)."""
    pin_mmap_threshold(_HEAP_REUSE_THRESHOLD)


def gb(n: int | None) -> str:
    """Bytes as GB with two decimals (10^9 bytes), '–' when unknown."""
    return "–" if n is None else f"{n / 1e9:.2f} GB"
