"""The PoT sandbox: runs untrusted model-written Python in a confined process and reads back its `answer`."""
from __future__ import annotations

import ctypes
import functools
import json
import logging
import os
import resource
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

log = logging.getLogger(__name__)

# error_kind values:
#   None           the program ran to the end and set `answer`
#   "no_answer"    it ran to the end without setting `answer` (or set it to None)
#   "exception"    it raised (error = "Type: message"); syntax errors included
#   "forbidden"    it tried something the sandbox refuses: network, processes, ctypes, files outside
#                  its folder (answer is then None even if the program caught the refusal)
#   "memory"       MemoryError under the address-space limit
#   "timeout"      the wall-clock timeout or the CPU-time limit; the whole process group was killed
#   "output_limit" it printed more than OUTPUT_KILL_BYTES and was killed
#   "killed"       it ended without reporting: a signal (a crash) or an abrupt exit such as os._exit
ERROR_KINDS = (None, "no_answer", "exception", "forbidden", "memory", "timeout", "output_limit", "killed")
_CHILD_KINDS = (None, "no_answer", "exception", "forbidden", "memory")  # the only kinds the runner may report

OUTPUT_CAP_BYTES = 4096  # output kept in the result
OUTPUT_KILL_BYTES = 1 << 20  # output after which the program is killed: print loops must not cost the parent
_RESULT_CAP_BYTES = 64 << 10
FILE_SIZE_BYTES = 1 << 20
MAX_PROCESSES = 16  # RLIMIT_NPROC counts every task (threads too) of the uid, across concurrent sandboxes
MAX_OPEN_FILES = 32
NOBODY = 65534
_CLONE_NEWNET = 0x40000000
_PR_SET_PDEATHSIG = 1
_LIBC = ctypes.CDLL(None, use_errno=True)

# Runs in the child under `python -I -S -B`: reads the program from stdin, installs an audit hook (which
# cannot be removed from Python code), execs the program in a fresh namespace, writes one JSON line to
# the result pipe. The hook is a tripwire for what a model's program might do by accident, not a wall
# (importlib.import_module, for one, skips the "import" event and can reach _posixsubprocess); the hard
# boundary is the kernel's: the unprivileged uid, the rlimits and the empty network namespace.
_RUNNER = r'''
import builtins, json, os, sys

DENIED_EVENTS = ("socket.", "ctypes.", "subprocess.", "os.system", "os.exec", "os.fork", "os.forkpty",
                 "os.posix_spawn", "os.spawn", "os.kill", "os.killpg", "signal.pthread_kill", "os.link",
                 "os.symlink", "resource.setrlimit", "resource.prlimit", "pty.")
DENIED_MODULES = {"ctypes", "_ctypes", "_posixsubprocess", "pty", "_xxsubinterpreters", "_testcapi",
                  "_testinternalcapi"}
WRITE_EVENTS = {"os.mkdir", "os.remove", "os.rmdir", "os.rename", "os.truncate", "os.chmod", "os.chown", "os.utime"}
READ_EVENTS = {"os.listdir", "os.scandir", "os.chdir"}
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
write, exit_now, dumps = os.write, os._exit, json.dumps  # bound now: the program may patch the modules

result_fd = int(sys.argv[1])
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


@dataclass(frozen=True)
class SandboxResult:
    """What one program produced; `error_kind` is one of ERROR_KINDS (see above), `seconds` the wall time."""

    answer: str | None
    output: str
    error: str | None
    error_kind: str | None
    seconds: float


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
    """The child's interpreter and whether to drop to uid `nobody`. As root the drop is what makes
    RLIMIT_NPROC count (the kernel exempts root), so a system Python that `nobody` can run beats ours;
    the runner needs only the stdlib."""
    own = os.path.realpath(sys.executable)  # the base interpreter, not the venv: -S skips site-packages anyway
    if os.getuid() != 0:
        return own, False
    for candidate in (own, "/usr/local/bin/python3", "/usr/bin/python3"):
        if os.path.exists(candidate) and _world_runnable(candidate):
            return os.path.realpath(candidate), True
    log.warning("sandbox: no Python that uid %d can run; PoT programs run as root, without a process limit", NOBODY)
    return own, False


def _confine(cpu_s: int, memory_bytes: int, drop: bool) -> None:
    """Runs in the forked child before exec (so it may only call the kernel, no imports): new network
    namespace, rlimits, then the uid drop (after unshare, which needs CAP_SYS_ADMIN; that is why
    Popen's own user= cannot be used: it switches uid before preexec_fn)."""
    _LIBC.unshare(_CLONE_NEWNET)  # EPERM in unprivileged containers: the audit hook still refuses sockets
    for limit, value in ((resource.RLIMIT_CPU, cpu_s), (resource.RLIMIT_AS, memory_bytes),
                         (resource.RLIMIT_FSIZE, FILE_SIZE_BYTES), (resource.RLIMIT_NOFILE, MAX_OPEN_FILES),
                         (resource.RLIMIT_CORE, 0), (resource.RLIMIT_NPROC, MAX_PROCESSES)):
        hard = resource.getrlimit(limit)[1]
        value = value if hard == resource.RLIM_INFINITY else min(value, hard)  # a non-root parent cannot raise
        resource.setrlimit(limit, (value, value))
    if drop:
        os.setgroups([])
        os.setgid(NOBODY)
        os.setuid(NOBODY)
    # After the uid change, which clears it: the child dies with the thread that started it.
    _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _exchange(proc: subprocess.Popen, result_fd: int, code: bytes,
              deadline: float) -> tuple[bytes, int, bytes, str | None]:
    """Feeds `code` to the child's stdin and drains its output and result pipes until both close and the
    child has exited (without reaping it: its pid must stay reserved for the killpg that follows).
    Returns (kept output, output bytes seen, result bytes, "timeout" | "output_limit" | None)."""
    stdin, out_fd = proc.stdin.fileno(), proc.stdout.fileno()
    os.set_blocking(stdin, False)  # a large program must not block us while the child writes output
    pending, output, result, seen = memoryview(code), bytearray(), bytearray(), 0
    pidfd = os.pidfd_open(proc.pid)  # readable once the child exits, even if it closed its pipes first
    try:
        with selectors.DefaultSelector() as sel:
            for fd, events in ((stdin, selectors.EVENT_WRITE), (out_fd, selectors.EVENT_READ),
                               (result_fd, selectors.EVENT_READ), (pidfd, selectors.EVENT_READ)):
                sel.register(fd, events)
            while sel.get_map():
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
                        continue
                    if key.fd == pidfd:
                        sel.unregister(pidfd)
                        continue
                    chunk = os.read(key.fd, 65536)
                    if not chunk:
                        sel.unregister(key.fd)
                    elif key.fd == out_fd:
                        seen += len(chunk)
                        output += chunk[: max(0, OUTPUT_CAP_BYTES - len(output))]
                        if seen > OUTPUT_KILL_BYTES:
                            return bytes(output), seen, bytes(result), "output_limit"
                    elif len(result) < _RESULT_CAP_BYTES:
                        result += chunk
    finally:
        os.close(pidfd)
    return bytes(output), seen, bytes(result), None


def _report(raw: bytes) -> dict | None:
    """The runner's JSON line, validated: it is as untrusted as the program, which can write to the pipe."""
    try:
        data = json.loads(raw.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return None
    if (isinstance(data, dict) and data.get("kind") in _CHILD_KINDS
            and all(isinstance(data.get(k), (str, type(None))) for k in ("answer", "error"))):
        return data
    return None


def run_program(code: str, timeout_s: float = 5.0, memory_mb: int = 256) -> SandboxResult:
    """Runs `code` (which should set `answer`) in a confined child process; see ERROR_KINDS for outcomes."""
    start = time.monotonic()
    python, drop = _interpreter()
    workdir = tempfile.mkdtemp(prefix="pot-sandbox-")
    read_fd, write_fd = os.pipe()
    proc = None
    try:
        if drop:
            os.chown(workdir, NOBODY, NOBODY)
        proc = subprocess.Popen(
            [python, "-I", "-S", "-B", "-c", _RUNNER, str(write_fd)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, pass_fds=(write_fd,),
            cwd=workdir, env={"HOME": workdir, "TMPDIR": workdir}, start_new_session=True,
            # preexec_fn is fine under run_programs' threads: _confine takes no locks another thread may hold.
            preexec_fn=functools.partial(_confine, int(timeout_s) + 2, memory_mb << 20, drop))
        os.close(write_fd)
        write_fd = -1
        output, seen, raw, stopped = _exchange(proc, read_fd, code.encode(), start + timeout_s)
    finally:
        if proc is not None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # the group outlives its leader if anything forked
            except ProcessLookupError:
                pass
            proc.wait()
            proc.stdout.close()
            proc.stdin.close()
        for fd in (read_fd, write_fd):
            if fd >= 0:
                os.close(fd)
        shutil.rmtree(workdir, ignore_errors=True)
    report = _report(raw) if stopped is None else None
    if stopped == "timeout" or proc.returncode == -signal.SIGXCPU:
        kind, error = "timeout", f"no result within {timeout_s:g} s (wall clock or CPU time)"
    elif stopped == "output_limit":
        kind, error = "output_limit", f"printed more than {OUTPUT_KILL_BYTES} bytes"
    elif report is not None:
        kind, error = report["kind"], report["error"]
    elif proc.returncode < 0:
        kind, error = "killed", f"killed by signal {-proc.returncode} ({signal.strsignal(-proc.returncode)})"
    else:
        kind, error = "killed", f"exited with status {proc.returncode} without a result"
    text = output.decode("utf-8", "replace") + ("\n[truncated]" if seen > OUTPUT_CAP_BYTES else "")
    answer = report["answer"] if report is not None and kind is None else None
    return SandboxResult(answer, text, error, kind, time.monotonic() - start)


def run_programs(codes: list[str], workers: int = 2, **kw) -> list[SandboxResult]:
    """run_program over `codes`, `workers` at a time, results in input order; a process per program is
    the unit of isolation, so threads suffice to overlap them."""
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return list(pool.map(lambda code: run_program(code, **kw), codes))
