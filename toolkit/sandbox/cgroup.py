"""A cgroup around each sandboxed program: one cap on the memory and the tasks of all its processes together.

The rlimits hold per process, so a program's 16 processes could each take the address-space limit, and the kernel
memory its files and pipes cost is seen by no rlimit. A cgroup counts them all: anonymous memory, tmpfs pages and
kernel objects (memory controller), and every task (pids controller). Where the machine lets this process make
child cgroups (root on a cgroup v1 or hybrid host; a cgroup v2 subtree delegated with both controllers enabled for
its children), every program gets its own, made before the program starts (bwrap's pid 1 waits on --block-fd until
it has joined) and removed after its namespace is gone. Where not, `status()` says why, for the manifest.
"""
from __future__ import annotations

import errno
import functools
import itertools
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

_CONTROLLERS = ("memory", "pids")
_PREFIX = "toolkit-sandbox"
_names = itertools.count()
_REMOVE_TRIES = 100  # of 10 ms each
_PROBE_BYTES = 16 << 20  # the limit of the cgroup made once to check that this machine allows them
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Layout:
    """Where this process's children go: one folder per controller (v1), or the same folder twice (v2)."""

    version: int
    memory: Path
    pids: Path


def _own_paths() -> tuple[dict[str, str], str | None]:
    """This process's cgroup path per v1 controller, and its v2 path (None without one)."""
    v1, v2 = {}, None
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if controllers == "":
            v2 = path
        for name in controllers.split(","):
            v1[name] = path
    return v1, v2


def _mounts() -> list[tuple[str, str, str, str]]:
    """(root inside the hierarchy, mount point, filesystem type, super options) of each cgroup mount."""
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        fields, (fstype, _source, options) = left.split(), right.split()[:3]
        if fstype in ("cgroup", "cgroup2"):
            found.append((fields[3], fields[4], fstype, options))
    return found


def _inside(root: str, mount_point: str, own: str) -> Path | None:
    if own != root and not own.startswith(root.rstrip("/") + "/"):
        return None
    return Path(mount_point) / own[len(root):].lstrip("/")


def _find() -> tuple[_Layout | None, str]:
    """The layout, or None and why this machine or user has none."""
    try:
        v1, v2 = _own_paths()
        mounts = _mounts()
    except (OSError, ValueError) as exc:
        return None, f"cannot read this process's cgroups ({exc})"
    folders = {}
    for name in _CONTROLLERS:
        mount = next((m for m in mounts if m[2] == "cgroup" and name in m[3].split(",")), None)
        if mount is not None and name in v1:
            folders[name] = _inside(mount[0], mount[1], v1[name])
    if len(folders) == 2 and None not in folders.values():
        blocked = [str(f) for f in folders.values() if not os.access(f, os.W_OK)]
        if blocked:
            return None, f"the cgroup v1 folders {', '.join(blocked)} are not writable by this user"
        return _Layout(1, folders["memory"], folders["pids"]), ""
    mount = next((m for m in mounts if m[2] == "cgroup2"), None)
    if mount is None or v2 is None:
        return None, "no cgroup hierarchy with the memory and pids controllers here"
    folder = _inside(mount[0], mount[1], v2)
    if folder is None:
        return None, f"this process's cgroup v2 {v2} is outside the mounted hierarchy ({mount[1]})"
    try:
        enabled = set((folder / "cgroup.subtree_control").read_text().split())
    except OSError as exc:
        return None, f"cannot read {folder / 'cgroup.subtree_control'} ({exc.strerror})"
    missing = [name for name in _CONTROLLERS if name not in enabled]
    if missing:
        return None, (f"the cgroup v2 {folder} does not enable {' or '.join(missing)} for its children (a "
                      f"delegated subtree, e.g. systemd-run --user --scope -p Delegate=yes, then enabled in "
                      f"cgroup.subtree_control)")
    if not os.access(folder, os.W_OK):
        return None, f"the cgroup v2 {folder} is not delegated to this user (not writable)"
    return _Layout(2, folder, folder), ""


@functools.cache
def _layout() -> tuple[_Layout | None, str]:
    layout, why = _find()
    if layout is not None:
        _remove_stale(layout)
        try:  # a writable folder may still refuse children or limits (a v2 without delegation above it)
            ProgramCgroup(_PROBE_BYTES, 1, layout).remove()
        except OSError as exc:
            return None, f"cannot make a cgroup under {layout.memory} ({exc.strerror or exc})"
    return layout, why


def _remove_stale(layout: _Layout) -> None:
    """Remove the empty cgroups a toolkit process killed with SIGKILL left behind (its pid is gone)."""
    for folder in {layout.memory, layout.pids}:
        for stale in folder.glob(f"{_PREFIX}-*-*"):
            pid = stale.name.split("-")[-2]
            if pid.isdigit() and not Path(f"/proc/{pid}").exists():
                try:
                    stale.rmdir()
                except OSError:  # still busy, or not ours to remove: left as it is
                    pass


def status() -> dict[str, bool | str]:
    """For the manifest: `cgroup` True with the version, or False with the reason."""
    layout, why = _layout()
    if layout is None:
        return {"cgroup": False, "cgroup_reason": why}
    return {"cgroup": True, "cgroup_version": layout.version}


class ProgramCgroup:
    """One program's cgroup: made with its caps, joined by the program's first process, removed when empty.

    memory_bytes: the cap on everything the program's processes hold together (RAM and swap where the kernel
    counts swap apart); tasks: the cap on its processes and threads.
    """

    def __init__(self, memory_bytes: int, tasks: int, layout: _Layout | None = None):
        if layout is None:
            layout, why = _layout()
            if layout is None:
                raise OSError(errno.ENOTSUP, why)
        name = f"{_PREFIX}-{os.getpid()}-{next(_names)}"
        self.folders = list(dict.fromkeys([layout.memory / name, layout.pids / name]))  # v2: one folder
        made = []
        try:
            for folder in self.folders:
                folder.mkdir()
                made.append(folder)
            if layout.version == 1:
                _write(layout.memory / name / "memory.limit_in_bytes", memory_bytes)
                swap = layout.memory / name / "memory.memsw.limit_in_bytes"
                if swap.exists():  # present where the kernel accounts swap: else swap would lift the cap
                    _write(swap, memory_bytes)
                _write(layout.pids / name / "pids.max", tasks)
            else:
                _write(layout.memory / name / "memory.max", memory_bytes)
                if (layout.memory / name / "memory.swap.max").exists():  # absent without swap accounting
                    _write(layout.memory / name / "memory.swap.max", 0)
                _write(layout.memory / name / "pids.max", tasks)
        except OSError:
            for folder in made:
                folder.rmdir()
            raise

    def add(self, pid: int) -> None:
        """Move `pid` (one process, before it has made any other) into the cgroup."""
        for folder in self.folders:
            _write(folder / "cgroup.procs", pid)

    def remove(self) -> None:
        """Remove the folders once the program's processes are gone (the caller waited for its pid 1; the kernel
        may take a moment to let go of the last task, so a busy folder is tried again for up to a second)."""
        for folder in self.folders:
            for attempt in range(_REMOVE_TRIES):
                try:
                    folder.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError as exc:
                    if exc.errno != errno.EBUSY or attempt == _REMOVE_TRIES - 1:
                        log.warning("sandbox: cannot remove the cgroup %s (%s)", folder, exc.strerror)
                        break
                    time.sleep(0.01)


def _write(path: Path, value: int) -> None:
    with open(path, "w") as f:
        f.write(str(value))
