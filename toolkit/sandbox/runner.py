"""The PoT sandbox: runs untrusted model-written Python under bubblewrap, so that the kernel is the boundary,
and reads back its `answer`."""
from __future__ import annotations

import functools
import json
import logging
import os
import selectors
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from toolkit.sandbox import cgroup, seccomp
from toolkit.sandbox.cgroup import ProgramCgroup
from toolkit.core.errors import ToolkitError
from toolkit.core.untrusted_json import UntrustedJSONError, loads

log = logging.getLogger(__name__)

# error_kind values:
#   None           the program ran to the end and set `answer`
#   "no_answer"    it ran to the end without setting `answer` (or set it to None)
#   "exception"    it raised (error = "Type: message"); syntax errors included
#   "forbidden"    it tried something the sandbox refuses: it ended on an OSError by which the kernel said no
#                  (EPERM, EACCES, EROFS, ENETUNREACH, ECONNREFUSED, EAGAIN, EMFILE: seccomp, the namespaces,
#                  read-only mounts, the process limit, the open-file limit), or the audit-hook tripwire
#                  refused it (answer is then None even if the program caught the refusal)
#   "memory"       MemoryError under the address-space limit
#   "timeout"      the wall-clock timeout or the CPU-time limit; the whole sandbox was killed
#   "output_limit" it printed more than OUTPUT_KILL_BYTES, or wrote more than RESULT_KILL_BYTES to the result
#                  pipe, and was killed
#   "killed"       it ended without reporting: a signal (a crash), an abrupt exit such as os._exit, a report
#                  that does not parse (the program can write to the result pipe too), or a sandbox that could
#                  not start (the output then holds bwrap's message)
ERROR_KINDS = (None, "no_answer", "exception", "forbidden", "memory", "timeout", "output_limit", "killed")
_CHILD_KINDS = (None, "no_answer", "exception", "forbidden", "memory")  # the only kinds the runner may report

OUTPUT_CAP_BYTES = 4096  # output kept in the result
OUTPUT_KILL_BYTES = 1 << 20  # output after which the program is killed: print loops must not cost the parent
# The runner's report is one line of at most ~18 KB (answer and error are cut to 1500 characters, JSON escapes
# at most 12 bytes each); past this the writer is the program, flooding the pipe, and it is killed.
RESULT_KILL_BYTES = 64 << 10
FILE_SIZE_BYTES = 1 << 20
WORKDIR = "/sandbox"  # the program's folder and HOME inside the sandbox: an empty tmpfs of its own
TMPFS_BYTES = 8 << 20  # each of the working folder, /tmp and /dev/shm: all the disk a program has (in memory)
# Files (inodes) in each of them: an empty file costs the kernel ~1.3 KiB that the byte limit never sees (199k of
# them cost 256 MiB). A math program writes a handful.
TMPFS_FILES = 1024
_FOLDERS = (("work", WORKDIR), ("tmp", "/tmp"), ("shm", "/dev/shm"))  # (mount point under the base, in the sandbox)
MAX_PROCESSES = 16  # RLIMIT_NPROC, counted in the sandbox's own user namespace: this program's tasks, threads too
MAX_OPEN_FILES = 32
_KERNEL_BYTES = 32 << 20  # in a program's cgroup beside its memory limit and its folders: inodes, pipes, tasks
NOBODY = 65534
MODES = ("bwrap", "unsafe")
MIN_BWRAP = "0.8.0"  # the first with --disable-userns
_SYSTEM_LIBS = ("/usr/lib", "/usr/lib64", "/usr/lib32", "/lib", "/lib64", "/lib32", "/libx32")
_TEARDOWN_S = 10.0  # a killed sandbox's pid 1 is gone in milliseconds; this only bounds a stuck kernel
_mode: str | None = None  # set by prepare(); None: $TOOLKIT_SANDBOX, else bwrap
_warned_unsafe = False

# Runs under `python -I -S -B` between us and bwrap, then execs bwrap (argv[4:]): the program's three writable
# folders as tmpfs mounts capped in bytes and in files (nr_inodes, which bwrap's --tmpfs cannot set). They are
# mounted in a mount namespace of this process's own (in a user namespace of its own: no privilege needed, the
# host never sees them) on empty folders that bwrap binds in; they vanish with the sandbox.
_MOUNTS = r'''
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)

def fail(what, errno):
    os.write(2, f"sandbox folders: {what}: {os.strerror(errno)}\n".encode())  # one line: the self-test quotes it
    os._exit(1)

def check(ok, what):
    if not ok:
        fail(what, ctypes.get_errno())

size, files, base, argv = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
uid, gid = os.getuid(), os.getgid()
check(libc.unshare(0x10000000 | 0x20000) == 0, "unshare")  # CLONE_NEWUSER | CLONE_NEWNS
for name, text in (("uid_map", f"{uid} {uid} 1"), ("setgroups", "deny"), ("gid_map", f"{gid} {gid} 1")):
    try:
        fd = os.open(f"/proc/self/{name}", os.O_WRONLY)
        os.write(fd, text.encode())
        os.close(fd)
    except OSError as exc:
        fail(name, exc.errno)
check(libc.mount(None, b"/", None, 0x4000 | 0x40000, None) == 0, "private mounts")  # MS_REC | MS_PRIVATE
options = f"size={size},nr_inodes={files},mode=0755".encode()
for name in os.listdir(base):  # the mount points the parent made (_FOLDERS)
    check(libc.mount(b"tmpfs", os.path.join(base, name).encode(), b"tmpfs", 2 | 4, options) == 0,  # nosuid, nodev
          f"tmpfs on {name}")
try:
    os.execv(argv[0], argv)
except OSError as exc:
    fail(argv[0], exc.errno)
'''

# Runs in the child under `python -I -S -B`: sets the rlimits, reads the program from stdin, installs an
# audit hook, execs the program in a fresh namespace, writes one JSON line to the result pipe. The hook is a
# tripwire for what a model's program might do by accident, not a wall: the program can patch what the hook
# reads (the runner's globals) and importlib.import_module reaches _posixsubprocess without an "import"
# event. The boundary is bubblewrap's: namespaces, a read-only minimal filesystem, rlimits and seccomp.
_RUNNER = r'''
import builtins, errno, json, os, resource, sys

def limit(cpu_s, memory_bytes, file_bytes, open_files, processes):
    # Set here, inside the namespaces: RLIMIT_NPROC then counts this sandbox's tasks only (the kernel
    # charges them to the user namespace bwrap made), where set before bwrap it would count all of the
    # user's processes.
    for which, value in ((resource.RLIMIT_CPU, cpu_s), (resource.RLIMIT_AS, memory_bytes),
                         (resource.RLIMIT_FSIZE, file_bytes), (resource.RLIMIT_NOFILE, open_files),
                         (resource.RLIMIT_CORE, 0), (resource.RLIMIT_NPROC, processes)):
        hard = resource.getrlimit(which)[1]
        value = value if hard == resource.RLIM_INFINITY else min(value, hard)  # a hard limit only falls
        resource.setrlimit(which, (value, value))

DENIED_EVENTS = ("socket.", "ctypes.", "subprocess.", "os.system", "os.exec", "os.fork", "os.forkpty",
                 "os.posix_spawn", "os.spawn", "os.kill", "os.killpg", "signal.pthread_kill", "os.link",
                 "os.symlink", "resource.setrlimit", "resource.prlimit", "pty.")
DENIED_MODULES = {"ctypes", "_ctypes", "_posixsubprocess", "pty", "_xxsubinterpreters", "_testcapi",
                  "_testinternalcapi"}
WRITE_EVENTS = {"os.mkdir", "os.remove", "os.rmdir", "os.rename", "os.truncate", "os.chmod", "os.chown", "os.utime"}
READ_EVENTS = {"os.listdir", "os.scandir", "os.chdir"}
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
# An OSError with one of these is the kernel (namespaces, seccomp, read-only mounts, rlimits) saying no.
KERNEL_REFUSALS = {errno.EPERM, errno.EACCES, errno.EROFS, errno.ENETUNREACH, errno.ECONNREFUSED, errno.EAGAIN,
                   errno.EMFILE}
write, exit_now, dumps = os.write, os._exit, json.dumps  # bound now: the program may patch the modules

result_fd = int(sys.argv[1])
limit(*map(int, sys.argv[2:7]))
code = sys.stdin.read()
work = os.getcwd()
readable = tuple(os.path.realpath(p) for p in sys.path) + (work,)
refused = []

def within(path, roots):
    return any(path == root or path.startswith(root + os.sep) for root in roots)

def may_write(path):
    # No "..": a relative path with dir_fd (invisible to the hook) must not climb out of the folder.
    path = os.fsdecode(path)
    return ".." not in path.split(os.sep) and within(os.path.realpath(path), (work,))

def may_read(path, opening):
    real = os.path.realpath(os.fsdecode(path))
    # A directory outside the folder may not be opened: it could serve as dir_fd for a write.
    return within(real, readable) and not (opening and os.path.isdir(real) and not within(real, (work,)))

def hook(event, args):
    if event == "import":
        ok = args[0].partition(".")[0] not in DENIED_MODULES
    elif event == "open":
        path, mode, flags = args
        if isinstance(path, int):
            ok = True  # an already-open descriptor: the child holds only its pipes
        elif any(c in (mode or "") for c in "wax+") or (isinstance(flags, int) and flags & WRITE_FLAGS):
            ok = may_write(path)
        else:
            ok = may_read(path, True)
    elif event in WRITE_EVENTS:
        paths = args[:2] if event == "os.rename" else args[:1]
        ok = all(isinstance(p, int) or may_write(p) for p in paths)
    elif event in READ_EVENTS:
        ok = isinstance(args[0], int) or may_read("." if args[0] is None else args[0], False)
    else:
        ok = not event.startswith(DENIED_EVENTS)
    if not ok:
        refused.append(event)
        raise PermissionError(f"sandbox: {event} is not allowed")

def describe(exc):
    try:
        return f"{type(exc).__name__}: {exc}"[:500]
    except BaseException:
        return type(exc).__name__

sys.addaudithook(hook)
namespace = {"__name__": "__main__", "__builtins__": {k: v for k, v in vars(builtins).items()
                                                      if k not in ("input", "breakpoint")}}
kind = error = answer = None
try:
    exec(compile(code, "<program>", "exec"), namespace)
except SystemExit:
    pass
except MemoryError:
    namespace.clear()  # frees what the program built, so that the report below has memory to run
    kind, error = "memory", "MemoryError"
except OSError as exc:
    kind, error = "forbidden" if exc.errno in KERNEL_REFUSALS else "exception", describe(exc)
except BaseException as exc:
    kind, error = "exception", describe(exc)
if kind is None:
    value = namespace.get("answer")
    if value is None:
        kind, error = "no_answer", "the program did not set `answer`"
    else:
        try:
            answer = (value if isinstance(value, str) else str(value))[:1000]
        except BaseException as exc:
            kind, error = "exception", describe(exc)
if refused:
    kind, error, answer = "forbidden", "refused: " + ", ".join(dict.fromkeys(refused)), None
try:
    sys.stdout.flush()
    sys.stderr.flush()
except BaseException:
    pass
write(result_fd, (dumps({"answer": answer, "kind": kind, "error": error}) + "\n").encode())
exit_now(0)  # skips atexit handlers and threads the program may have left behind
'''


class SandboxUnavailable(ToolkitError):
    """Program-of-thought needs the sandbox, confinement cannot be had here and `unsafe` was not chosen."""


@dataclass(frozen=True)
class SandboxResult:
    """What one program produced; `error_kind` is one of ERROR_KINDS (see above), `seconds` the wall time."""

    answer: str | None
    output: str
    error: str | None
    error_kind: str | None
    seconds: float


@dataclass
class _Child:
    """A started program: bwrap (or, unconfined, the runner itself), the result pipe's read end, a pidfd on
    the sandbox's pid 1 (confined), the folder made for it (unconfined: its working folder; confined: the
    empty mount points of its three folders), and the cgroup that caps it as a whole (confined, where the
    machine allows one)."""

    proc: subprocess.Popen
    result_fd: int
    init_fd: int | None = None
    workdir: str | None = None
    group: ProgramCgroup | None = None


def _world_runnable(interpreter: str) -> bool:
    """True when uid `nobody` can run `interpreter` and reach its stdlib (prefix/lib): every directory
    on the way is world-searchable (a pyenv under a 0700 /root is not)."""
    real = os.path.realpath(interpreter)
    lib = os.path.join(os.path.dirname(os.path.dirname(real)), "lib")
    dirs = {os.path.dirname(real), lib}
    for path in list(dirs):
        while path != "/":
            path = os.path.dirname(path)
            dirs.add(path)
    try:
        return os.stat(real).st_mode & stat.S_IXOTH != 0 and all(os.stat(d).st_mode & stat.S_IXOTH for d in dirs)
    except OSError:
        return False


@functools.cache
def _interpreter() -> tuple[str, bool]:
    """The child's interpreter and whether to start it as uid `nobody`. As root bwrap runs as nobody: a
    sandbox owned by root would be exempt from RLIMIT_NPROC and own every root file it can see, so a system
    Python that nobody can run beats ours; the runner needs only the stdlib."""
    own = os.path.realpath(sys.executable)  # the base interpreter, not the venv: -S skips site-packages anyway
    if os.getuid() != 0:
        return own, False
    for candidate in (own, "/usr/local/bin/python3", "/usr/bin/python3"):
        if os.path.exists(candidate) and _world_runnable(candidate):
            return os.path.realpath(candidate), True
    return own, False


def _as_nobody() -> dict:
    return {"user": NOBODY, "group": NOBODY, "extra_groups": []}


def _bwrap_binary() -> str | None:
    """bubblewrap: $TOOLKIT_BWRAP (a path or a name on PATH) or `bwrap` on PATH; None when absent."""
    return shutil.which(os.environ.get("TOOLKIT_BWRAP") or "bwrap")


@functools.cache
def _filesystem(python: str) -> tuple[str, ...]:
    """bwrap arguments for the read-only view of the host: the shared libraries, the interpreter and its
    stdlib (prefix/lib). No /etc (but the loader's cache), /home, /root, /run, project or other /proc."""
    args: list[str] = []
    bound: list[str] = []
    for path in _SYSTEM_LIBS:
        if os.path.islink(path):  # merged /usr: /lib -> usr/lib
            args += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            args += ["--ro-bind", path, path]
            bound.append(path)
    for path in (os.path.join(os.path.dirname(os.path.dirname(python)), "lib"), python):
        if not any(path == b or path.startswith(b + os.sep) for b in bound):
            args += ["--ro-bind", path, path]
            bound.append(path)
    return (*args, "--ro-bind-try", "/etc/ld.so.cache", "/etc/ld.so.cache")


def _bwrap_argv(binary: str, python: str, base: str, info_fd: int, block_fd: int,
                filter_fd: int | None) -> list[str]:
    """The command line up to the runner: the mounts helper, then bwrap; see docs/security.md for what each
    part holds. `base` holds the mount points of the program's folders."""
    argv = [python, "-I", "-S", "-B", "-c", _MOUNTS, str(TMPFS_BYTES), str(TMPFS_FILES), base, binary,
            # Own user (uid nobody inside), pid (it sees and signals only its own processes), network (no
            # interface but its own loopback), IPC, UTS and cgroup namespaces; no nested user namespaces.
            # The runner is pid 1: when it exits the kernel kills everything left in the namespace before
            # bwrap, its parent, reaps it, so bwrap's exit means the whole tree is gone.
            "--unshare-user", "--unshare-pid", "--as-pid-1", "--unshare-net", "--unshare-ipc", "--unshare-uts",
            "--unshare-cgroup-try", "--disable-userns", "--uid", str(NOBODY), "--gid", str(NOBODY),
            "--die-with-parent", "--new-session",  # a new session: no TIOCSTI into a terminal
            "--clearenv", "--setenv", "HOME", WORKDIR, "--setenv", "TMPDIR", "/tmp",
            *_filesystem(python), "--proc", "/proc", "--dev", "/dev",
            *(arg for name, inside in _FOLDERS for arg in ("--bind", os.path.join(base, name), inside)),
            "--chdir", WORKDIR, "--remount-ro", "/",
            # info: pid 1's pid, on which we take a pidfd; block: pid 1 waits for that before it execs.
            "--info-fd", str(info_fd), "--block-fd", str(block_fd)]
    if filter_fd is not None:
        argv += ["--seccomp", str(filter_fd)]
    return argv + ["--"]


def _runner_argv(python: str, result_fd: int, timeout_s: float, memory_mb: int) -> list[str]:
    limits = (int(timeout_s) + 2, memory_mb << 20, FILE_SIZE_BYTES, MAX_OPEN_FILES, MAX_PROCESSES)
    return [python, "-I", "-S", "-B", "-c", _RUNNER, str(result_fd), *map(str, limits)]


@functools.cache
def _filter() -> bytes | None:
    program = seccomp.program()
    if program is None:
        log.warning("sandbox: no seccomp syscall table for this machine; namespaces and rlimits only")
    return program


def _filter_fd() -> int | None:
    """A pipe's read end holding the seccomp program, which bwrap reads to its end (one per run: a shared
    file offset would move under concurrent runs)."""
    program = _filter()
    if program is None:
        return None
    read_fd, write_fd = os.pipe()
    os.write(write_fd, program)  # a few hundred bytes: within the pipe buffer
    os.close(write_fd)
    return read_fd


def _read_all(fd: int, deadline: float) -> bytes:
    data = bytearray()
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        while (left := deadline - time.monotonic()) > 0 and sel.select(left):
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            data += chunk
    return bytes(data)


def _hold_init(info_fd: int, deadline: float) -> tuple[int | None, int | None]:
    """The sandbox's pid 1 and a pidfd on it, from bwrap's info JSON; (None, None) when bwrap failed before
    making it. Pid 1 waits on --block-fd until we release it, so the pid cannot have been reused meanwhile."""
    try:
        pid = json.loads(_read_all(info_fd, deadline))["child-pid"]
        return pid, os.pidfd_open(pid)
    except (ValueError, KeyError, TypeError, OSError):
        return None, None


def _spawn_confined(binary: str, python: str, as_nobody: bool, timeout_s: float, memory_mb: int,
                    deadline: float, group: ProgramCgroup | None) -> _Child:
    result_r, result_w = os.pipe()
    info_r, info_w = os.pipe()
    block_r, block_w = os.pipe()
    filter_r = _filter_fd()
    passed = [fd for fd in (result_w, info_w, block_r, filter_r) if fd is not None]
    # As root the helper runs as nobody, who must reach the mount points: /tmp, not a $TMPDIR under a 0700 home.
    base = tempfile.mkdtemp(prefix="pot-sandbox-", dir="/tmp" if as_nobody else None)
    try:
        for name, _ in _FOLDERS:
            os.mkdir(os.path.join(base, name))
        if as_nobody:
            os.chown(base, NOBODY, NOBODY)
        proc = subprocess.Popen(
            _bwrap_argv(binary, python, base, info_w, block_r, filter_r)
            + _runner_argv(python, result_w, timeout_s, memory_mb),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, pass_fds=passed, cwd="/",
            env={}, start_new_session=True, **(_as_nobody() if as_nobody else {}))
    except BaseException:
        for fd in (result_r, info_r, block_w):
            os.close(fd)
        shutil.rmtree(base, ignore_errors=True)
        raise
    finally:
        for fd in passed:
            os.close(fd)
    try:
        init_pid, init_fd = _hold_init(info_r, deadline)
    finally:
        os.close(info_r)
    child = _Child(proc, result_r, init_fd=init_fd, workdir=base, group=group)
    if group is not None and init_pid is not None:
        try:  # pid 1 joins before it execs the runner: every process of the program is born inside
            group.add(init_pid)
        except OSError:
            os.close(block_w)
            child.group = None  # _run removes it once _stop has waited for the program: removed once
            _stop(child)
            raise
    try:
        os.write(block_w, b"go")
    except BrokenPipeError:  # bwrap already gave up; its message is in the output
        pass
    finally:
        os.close(block_w)
    return child


def _spawn_unconfined(python: str, as_nobody: bool, timeout_s: float, memory_mb: int) -> _Child:
    """The `unsafe` mode: the runner as a plain process (rlimits, no environment, a folder of its own, the
    tripwire); nothing stops it reading what its uid can read or reaching the network."""
    workdir = tempfile.mkdtemp(prefix="pot-sandbox-")
    result_r, result_w = os.pipe()
    try:
        if as_nobody:
            os.chown(workdir, NOBODY, NOBODY)
        proc = subprocess.Popen(
            _runner_argv(python, result_w, timeout_s, memory_mb), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, pass_fds=(result_w,), cwd=workdir, env={"HOME": workdir, "TMPDIR": workdir},
            start_new_session=True, **(_as_nobody() if as_nobody else {}))
    except BaseException:
        os.close(result_r)
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    finally:
        os.close(result_w)
    return _Child(proc, result_r, workdir=workdir)


def _stop(child: _Child) -> None:
    """Kills what is left and waits until it is gone. Confined: SIGKILL to pid 1 (the runner) takes the
    whole pid namespace with it (a setsid daemon too); its pidfd turns readable only once that is done."""
    proc = child.proc
    if child.init_fd is not None:
        try:
            signal.pidfd_send_signal(child.init_fd, signal.SIGKILL)
        except ProcessLookupError:
            pass
        with selectors.DefaultSelector() as sel:
            sel.register(child.init_fd, selectors.EVENT_READ)
            sel.select(_TEARDOWN_S)
        os.close(child.init_fd)
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # bwrap itself, or the unconfined runner and its group
    except ProcessLookupError:
        pass
    proc.wait()
    proc.stdout.close()
    proc.stdin.close()
    os.close(child.result_fd)
    if child.workdir:
        shutil.rmtree(child.workdir, ignore_errors=True)
    if child.group is not None:
        child.group.remove()


def _drain(fd: int, limit: int) -> bytes:
    """What `fd` holds now, up to `limit` bytes, without waiting for writers that are still alive."""
    os.set_blocking(fd, False)
    data = bytearray()
    while len(data) < limit:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            break
        if not chunk:
            break
        data += chunk
    return bytes(data)


def _exchange(proc: subprocess.Popen, result_fd: int, code: bytes,
              deadline: float) -> tuple[bytes, int, bytes, str | None]:
    """Feeds `code` to the child's stdin and reads its output and result pipes until the child has exited
    (bwrap exits with the runner), then takes what the pipes still hold: a process the program left behind
    may keep them open, and is not waited for. Returns (kept output, output bytes seen, result bytes,
    "timeout" | "output_limit" | "result_limit" | None)."""
    stdin, out_fd = proc.stdin.fileno(), proc.stdout.fileno()
    os.set_blocking(stdin, False)  # a large program must not block us while the child writes output
    pending, output, result, seen = memoryview(code), bytearray(), bytearray(), 0

    def take(fd: int, chunk: bytes) -> str | None:
        """Keeps `chunk`; "output_limit" or "result_limit" once that pipe passed its kill limit."""
        nonlocal seen, output, result
        if fd == out_fd:
            seen += len(chunk)
            output += chunk[: max(0, OUTPUT_CAP_BYTES - len(output))]
            return "output_limit" if seen > OUTPUT_KILL_BYTES else None
        result += chunk
        return "result_limit" if len(result) > RESULT_KILL_BYTES else None

    pidfd = os.pidfd_open(proc.pid)  # readable once the child exits, even if it closed its pipes first
    try:
        with selectors.DefaultSelector() as sel:
            for fd, events in ((stdin, selectors.EVENT_WRITE), (out_fd, selectors.EVENT_READ),
                               (result_fd, selectors.EVENT_READ), (pidfd, selectors.EVENT_READ)):
                sel.register(fd, events)
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    return bytes(output), seen, bytes(result), "timeout"
                for key, _ in sel.select(left):
                    if key.fd == stdin:
                        try:
                            pending = pending[os.write(stdin, pending[:65536]):]
                        except BrokenPipeError:  # the child died before reading it all
                            pending = pending[:0]
                        if not pending:
                            sel.unregister(stdin)
                            proc.stdin.close()
                    elif key.fd == pidfd:
                        for fd, limit in ((out_fd, OUTPUT_KILL_BYTES + 1 - seen),
                                          (result_fd, RESULT_KILL_BYTES + 1 - len(result))):
                            if fd in sel.get_map() and (over := take(fd, _drain(fd, max(0, limit)))):
                                return bytes(output), seen, bytes(result), over
                        return bytes(output), seen, bytes(result), None
                    else:
                        chunk = os.read(key.fd, 65536)
                        if not chunk:
                            sel.unregister(key.fd)
                        elif over := take(key.fd, chunk):
                            return bytes(output), seen, bytes(result), over
    finally:
        os.close(pidfd)


def _report(raw: bytes) -> dict | str:
    """The runner's JSON line, validated, or why it cannot be used: the line is as untrusted as the program,
    which can write to the pipe too (a deep `[[[…` must cost this program its result, never the batch)."""
    lines = raw.strip().splitlines()
    if not lines:
        return "no report"
    try:
        data = loads(lines[-1], "its report", max_bytes=RESULT_KILL_BYTES, max_depth=2)
    except UntrustedJSONError as exc:
        return str(exc)
    if (data.keys() >= {"answer", "kind", "error"} and data["kind"] in _CHILD_KINDS
            and all(isinstance(data[k], (str, type(None))) for k in ("answer", "error"))):
        return data
    return "its report is not the runner's"


def _outcome(stopped: str | None, returncode: int, report: dict | str,
             timeout_s: float) -> tuple[str | None, str | None]:
    """(error_kind, error) of a finished run; `report` is the runner's report or why there is none."""
    if stopped == "timeout" or returncode in (-signal.SIGXCPU, 128 + signal.SIGXCPU):
        return "timeout", f"no result within {timeout_s:g} s (wall clock or CPU time)"
    if stopped == "output_limit":
        return "output_limit", f"printed more than {OUTPUT_KILL_BYTES} bytes"
    if stopped == "result_limit":
        return "output_limit", f"wrote more than {RESULT_KILL_BYTES} bytes to its result pipe"
    if isinstance(report, dict):
        return report["kind"], report["error"]
    if returncode == 0 and report != "no report":  # the runner finished, but what it read back is not a report
        return "killed", f"no usable result: {report}"
    if returncode < 0:
        return "killed", f"killed by signal {-returncode} ({signal.strsignal(-returncode)})"
    if returncode > 128:  # bwrap passes a signal death on as 128 + the signal
        return "killed", f"killed by signal {returncode - 128} ({signal.strsignal(returncode - 128)})"
    return "killed", f"exited with status {returncode} without a result"


def _run(code: str, timeout_s: float, memory_mb: int, confined: bool) -> SandboxResult:
    start = time.monotonic()
    deadline = start + timeout_s
    python, as_nobody = _interpreter()
    try:
        if confined:
            group = ProgramCgroup(_group_memory_bytes(memory_mb), MAX_PROCESSES) if cgroup.status()["cgroup"] \
                else None
            try:
                child = _spawn_confined(_bwrap_binary() or "bwrap", python, as_nobody, timeout_s, memory_mb,
                                        deadline, group)
            except BaseException:
                if group is not None:
                    group.remove()
                raise
        else:
            child = _spawn_unconfined(python, as_nobody, timeout_s, memory_mb)
    except OSError as exc:  # out of processes or memory on the host: this program gets no run, the rest do
        return SandboxResult(None, "", f"the sandbox could not start: {exc}", "killed", time.monotonic() - start)
    try:
        output, seen, raw, stopped = _exchange(child.proc, child.result_fd, code.encode(), deadline)
    finally:
        _stop(child)
    report = _report(raw) if stopped is None else "stopped"
    kind, error = _outcome(stopped, child.proc.returncode, report, timeout_s)
    text = output.decode("utf-8", "replace") + ("\n[truncated]" if seen > OUTPUT_CAP_BYTES else "")
    answer = report["answer"] if isinstance(report, dict) and kind is None else None
    return SandboxResult(answer, text, error, kind, time.monotonic() - start)


@functools.cache
def _problem(binary: str | None, uid: int) -> str | None:
    """None when bubblewrap confines programs here (a real program through the real sandbox answers),
    else what is missing and the fix, in one line."""
    if binary is None:
        return ("bubblewrap is not installed: install it (apt-get install bubblewrap; dnf or pacman install "
                "bubblewrap) or name its binary in TOOLKIT_BWRAP")
    python, as_nobody = _interpreter()
    if uid == 0 and not as_nobody:
        return "no Python that uid nobody can run for the sandbox (root runs it as nobody): apt-get install python3"
    result = _run("answer = 6 * 7", 10.0, 256, confined=True)
    if result.answer == "42":
        return None
    detail = (result.output.strip().splitlines() or [result.error or "no answer"])[0][:200]
    if "Unknown option" in detail:  # an older bubblewrap than our options need (--disable-userns, --size)
        return (f"bubblewrap ({binary}) is too old for the sandbox ({detail}): upgrade bubblewrap to "
                f"{MIN_BWRAP} or newer")
    return (f"bubblewrap ({binary}) cannot make a sandbox here ({detail}): enable unprivileged user namespaces "
            "(sysctl user.max_user_namespaces=10000 kernel.unprivileged_userns_clone=1; on Ubuntu 24.04 "
            "kernel.apparmor_restrict_unprivileged_userns=0)")


def cgroup_status() -> dict[str, bool | str]:
    """What caps a confined program's processes as a whole, for the manifest (toolkit.sandbox.cgroup): `cgroup`
    True with its version, or False with the reason, when the rlimits (per process) are all there is."""
    return cgroup.status()


def _group_memory_bytes(memory_mb: int) -> int:
    """A program's cgroup cap: one process's address-space limit, its three tmpfs folders full, and room for the
    kernel objects of its files, pipes and tasks (every file of the folders costs ~1.3 KiB)."""
    return (memory_mb << 20) + len(_FOLDERS) * TMPFS_BYTES + _KERNEL_BYTES


def confinement_problem() -> str | None:
    """None when PoT programs run confined by bubblewrap here, else the reason and the fix in one line."""
    return _problem(_bwrap_binary(), os.getuid())


def _current_mode() -> str:
    mode = _mode or os.environ.get("TOOLKIT_SANDBOX") or "bwrap"
    if mode not in MODES:
        raise SandboxUnavailable(f"TOOLKIT_SANDBOX must be one of {', '.join(MODES)}, got {mode!r}")
    return mode


def prepare(mode: str | None = None) -> bool:
    """Checks, before any work, that PoT programs can run; `mode` (bwrap | unsafe) applies from now on in
    this process (default: $TOOLKIT_SANDBOX, else bwrap). True when bubblewrap confines them. Without
    confinement: False in `unsafe` mode, after a loud warning; SandboxUnavailable (one line) in bwrap mode."""
    global _mode, _warned_unsafe
    if mode is not None:
        if mode not in MODES:
            raise SandboxUnavailable(f"sandbox mode must be one of {', '.join(MODES)}, got {mode!r}")
        _mode = mode
    problem = confinement_problem()
    if problem is None:
        return True
    if _current_mode() != "unsafe":
        raise SandboxUnavailable(f"program-of-thought needs the sandbox: {problem}; or set distill.sandbox: unsafe "
                                 "(TOOLKIT_SANDBOX=unsafe for eval) to run model-written programs unconfined")
    if not _warned_unsafe:
        _warned_unsafe = True
        message = (f"WARNING: sandbox: unsafe: model-written programs run WITHOUT kernel confinement ({problem}); "
                   "they can read your files and reach the network")
        log.warning(message)
        print(message, file=sys.stderr)
    return False


def run_program(code: str, timeout_s: float = 5.0, memory_mb: int = 256) -> SandboxResult:
    """Runs `code` (which should set `answer`) in the sandbox; see ERROR_KINDS for outcomes. Raises
    SandboxUnavailable where confinement cannot be had and `unsafe` was not chosen."""
    return _run(code, timeout_s, memory_mb, prepare())


def run_programs(codes: list[str], workers: int = 2, timeout_s: float = 5.0,
                 memory_mb: int = 256) -> list[SandboxResult]:
    """run_program over `codes`, `workers` at a time, results in input order, one for every program; a
    sandbox per program is the unit of isolation, so threads suffice to overlap them."""
    confined = prepare() if codes else True
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return list(pool.map(lambda code: _run(code, timeout_s, memory_mb, confined), codes))
