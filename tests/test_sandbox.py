"""The PoT sandbox: answers come back, and each defence (limits, uid, network, files, processes, output) holds."""
from __future__ import annotations

import ctypes
import functools
import json
import os
import secrets
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from toolkit import sandbox
from toolkit.sandbox import SandboxResult, run_program, run_programs


def _processes() -> dict[int, tuple[int, int]]:
    """pid -> (ppid, uid) for every process visible in /proc."""
    table = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat_line = Path(f"/proc/{entry}/stat").read_text()
                table[int(entry)] = (int(stat_line[stat_line.rindex(")") + 2:].split()[1]),
                                     os.stat(f"/proc/{entry}").st_uid)
            except (OSError, ValueError):
                continue  # it exited while we looked
    return table


def _descendants() -> set[int]:
    table, found, frontier = _processes(), set(), {os.getpid()}
    while frontier:
        frontier = {pid for pid, (ppid, _) in table.items() if ppid in frontier} - found
        found |= frontier
    return found


def _census() -> tuple[int, int]:
    """(descendants of this test process, processes of uid nobody): a contained program leaves neither."""
    return len(_descendants()), sum(uid == sandbox.NOBODY for _, uid in _processes().values())


def _settled(baseline: tuple[int, int], within_s: float = 5.0) -> tuple[int, int]:
    deadline = time.monotonic() + within_s
    while (now := _census()) != baseline and time.monotonic() < deadline:
        time.sleep(0.05)
    return now


def _assert_normal(result: SandboxResult, answer: str) -> None:
    assert (result.error_kind, result.error, result.answer) == (None, None, answer), result


@pytest.mark.parametrize("code, answer", [
    ("answer = 3 * 4", "12"),
    ("answer = 7 / 2", "3.5"),
    ("from fractions import Fraction\nanswer = Fraction(1, 3) + Fraction(1, 4)", "7/12"),
    ("import math, itertools, decimal\nanswer = math.comb(5, 2) + len(list(itertools.permutations('abc')))"
     " + int(decimal.Decimal('1.5') * 2)", "19"),
    ("answer = 'forty-two'", "forty-two"),
])
def test_answers_come_back_as_text(code, answer):
    _assert_normal(run_program(code), answer)


def test_output_is_captured_and_the_folder_removed():
    result = run_program("import os, sys\nprint('step one')\nprint('warn', file=sys.stderr)\n"
                         "open('notes.txt', 'w').write('ok')\nanswer = os.getcwd() + ' ' + open('notes.txt').read()")
    assert result.error_kind is None and "step one" in result.output and "warn" in result.output
    workdir, content = result.answer.split()
    assert content == "ok" and not os.path.exists(workdir)


def test_limits_uid_and_environment_in_the_child():
    code = ("import json, os, resource as r\nanswer = json.dumps({'uid': os.getuid(), 'env': dict(os.environ),"
            " 'cwd': os.getcwd(), 'limits': {n: r.getrlimit(getattr(r, n))[1] for n in"
            " ('RLIMIT_CPU', 'RLIMIT_AS', 'RLIMIT_FSIZE', 'RLIMIT_NPROC', 'RLIMIT_NOFILE', 'RLIMIT_CORE')}})")
    child = json.loads(run_program(code, timeout_s=3, memory_mb=200).answer)
    _, drop = sandbox._interpreter()
    assert child["uid"] == (sandbox.NOBODY if drop else os.getuid())
    assert child["limits"]["RLIMIT_CPU"] <= 5 and child["limits"]["RLIMIT_AS"] == 200 << 20
    assert child["limits"]["RLIMIT_FSIZE"] == sandbox.FILE_SIZE_BYTES and child["limits"]["RLIMIT_CORE"] == 0
    assert child["limits"]["RLIMIT_NPROC"] <= sandbox.MAX_PROCESSES
    assert child["limits"]["RLIMIT_NOFILE"] <= sandbox.MAX_OPEN_FILES
    assert child["env"]["HOME"] == child["cwd"] and set(child["env"]) <= {"HOME", "TMPDIR", "LC_CTYPE"}


def test_no_answer_and_exceptions():
    assert run_program("x = 1").error_kind == "no_answer"
    raised = run_program("answer = 1\nraise ValueError('bad input 17')")
    assert (raised.error_kind, raised.answer) == ("exception", None) and raised.error == "ValueError: bad input 17"
    assert run_program("answer = (").error_kind == "exception"


@pytest.mark.parametrize("code", ["while True: pass", "import time\ntime.sleep(100)"])
def test_timeout_kills_quickly(code):
    result = run_program(code, timeout_s=1.0)
    assert result.error_kind == "timeout" and result.seconds < 1.0 + 2


FORK_BOMBS = {
    "os.fork": "import os\nwhile True:\n    os.fork()",
    "multiprocessing": ("import multiprocessing\ndef spin():\n    pass\n"
                        "while True:\n    multiprocessing.Process(target=spin).start()"),
}


@pytest.mark.parametrize("name", FORK_BOMBS)
def test_fork_bomb_is_contained(name):
    baseline = _census()
    result = run_program(FORK_BOMBS[name], timeout_s=3)
    assert result.error_kind == "forbidden" and result.answer is None, result
    assert _settled(baseline) == baseline
    _assert_normal(run_program("answer = 2 + 2"), "4")


def test_process_limit_holds_without_the_audit_hook():
    """The kernel layer alone: forks beyond RLIMIT_NPROC fail (as root only after the uid drop)."""
    python, drop = sandbox._interpreter()
    if os.getuid() == 0 and not drop:
        pytest.skip("no interpreter that uid nobody can run: NPROC cannot bind root")
    forker = ("import os, time\nkids = []\nfor _ in range(64):\n    try:\n        pid = os.fork()\n"
              "    except OSError:\n        break\n    if pid == 0:\n        time.sleep(30)\n        os._exit(0)\n"
              "    kids.append(pid)\nprint(len(kids), flush=True)\nfor pid in kids:\n"
              "    os.kill(pid, 9)\n    os.waitpid(pid, 0)\n")
    baseline = _census()
    proc = subprocess.run([python, "-I", "-S", "-c", forker], capture_output=True, text=True, timeout=30, cwd="/",
                          env={}, start_new_session=True,
                          preexec_fn=functools.partial(sandbox._confine, 10, 256 << 20, drop))
    assert proc.returncode == 0, proc.stderr
    assert int(proc.stdout) < sandbox.MAX_PROCESSES
    assert _settled(baseline) == baseline


@pytest.mark.parametrize("code", ["x = bytearray(10**10)", "x = []\nwhile True:\n    x.append(bytearray(10**6))"])
def test_memory_bomb(code):
    result = run_program(code, timeout_s=5, memory_mb=256)
    assert result.error_kind == "memory", result


@pytest.fixture
def listener():
    """A real TCP server on 127.0.0.1; yields (port, accepted connections)."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.1)
    accepted, stop = [], threading.Event()

    def serve():
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1], accepted
    stop.set()
    thread.join()
    server.close()
    for conn in accepted:
        conn.close()


@pytest.mark.parametrize("connect", [
    "import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=2)",
    "import _socket\ns = _socket.socket()\ns.settimeout(2)\ns.connect(('127.0.0.1', {port}))",
])
def test_network_is_refused(listener, connect):
    port, accepted = listener
    result = run_program(connect.format(port=port) + "\nanswer = 'connected'")
    time.sleep(0.3)  # give a connection that got through time to be accepted
    assert result.error_kind == "forbidden" and result.answer is None, result
    assert accepted == []


def _unshare_net() -> None:
    if sandbox._LIBC.unshare(sandbox._CLONE_NEWNET) != 0:
        raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNET)")


def test_network_namespace_holds_without_the_audit_hook(listener):
    """The kernel layer alone: where this kernel grants a network namespace, the sandbox child is in
    one, and 127.0.0.1 of the host is out of its reach."""
    port, accepted = listener
    try:
        subprocess.run(["true"], check=True, preexec_fn=_unshare_net)
    except subprocess.SubprocessError:
        pytest.skip("this kernel refuses new network namespaces here; the audit hook is the only network guard")
    python, drop = sandbox._interpreter()
    probe = ("import os, socket\nprint(os.readlink('/proc/self/ns/net'))\n"
             f"try:\n    socket.create_connection(('127.0.0.1', {port}), timeout=2)\n    print('connected')\n"
             "except OSError as exc:\n    print('refused', exc)\n")
    proc = subprocess.run([python, "-I", "-S", "-c", probe], capture_output=True, text=True, timeout=30, cwd="/",
                          env={}, start_new_session=True,
                          preexec_fn=functools.partial(sandbox._confine, 10, 256 << 20, drop))
    namespace, outcome = proc.stdout.splitlines()
    assert namespace != os.readlink("/proc/self/ns/net")
    assert outcome.startswith("refused") and accepted == []


@pytest.mark.parametrize("write", [
    "open({path!r}, 'w').write('escaped')",
    "import os\nos.close(os.open({path!r}, os.O_WRONLY | os.O_CREAT))",
    "import os\nopen('here', 'w').close()\nos.rename('here', {path!r})",
])
def test_writes_outside_the_folder_are_refused(write):
    path = f"/tmp/sandbox_escape_{secrets.token_hex(8)}"
    try:
        result = run_program(write.format(path=path) + "\nanswer = 'written'")
        assert result.error_kind == "forbidden", result
        assert not os.path.exists(path)
    finally:
        if os.path.exists(path):
            os.unlink(path)


def test_file_size_limit():
    result = run_program("open('big', 'wb').write(b'x' * (2 << 20))\nanswer = 'wrote'")
    assert result.error_kind == "exception" and "File too large" in result.error, result


def test_parent_environment_does_not_leak(monkeypatch):
    token = secrets.token_hex(16)
    monkeypatch.setenv("SANDBOX_SECRET", token)
    shown = run_program("import os\nprint(dict(os.environ))\nanswer = repr(dict(os.environ))")
    assert shown.error_kind is None and token not in shown.answer + shown.output
    # /proc/<ppid>/environ holds the environment the test process started with, not the token.
    started_with = [e for e in Path("/proc/self/environ").read_bytes().decode("latin-1").split("\0") if len(e) > 8]
    read = run_program("import os\ndata = open(f'/proc/{os.getppid()}/environ', 'rb').read().decode('latin-1')\n"
                       "print(data)\nanswer = data")
    assert read.error_kind == "forbidden" and read.answer is None, read
    assert not any(entry in read.output for entry in started_with)


def test_home_files_are_not_readable():
    token = secrets.token_hex(16)
    secret = Path.home() / f".sandbox_secret_{secrets.token_hex(8)}"
    secret.write_text(token)
    try:
        result = run_program(f"data = open({str(secret)!r}).read()\nprint(data)\nanswer = data")
        assert result.error_kind == "forbidden" and token not in (result.answer or "") + result.output, result
    finally:
        secret.unlink()


@pytest.mark.parametrize("code", [
    "import os\nos.system('echo hi')",
    "import subprocess\nsubprocess.run(['echo', 'hi'])",
    "import os\nos.execv('/bin/echo', ['echo', 'hi'])",
    "import os\nos.posix_spawn('/bin/echo', ['echo', 'hi'], {})",
    "import ctypes\nctypes.CDLL(None).system(b'echo hi')",
])
def test_commands_are_refused(code):
    result = run_program(code + "\nanswer = 'ran'")
    assert result.error_kind == "forbidden" and "hi" not in result.output, result


def test_huge_output_is_capped_then_the_next_program_runs():
    # 1 GiB address space: the 100 MB string and its encoded copy must fit, so that the output cap
    # (not the memory limit) is what stops this program.
    result = run_program("print('x' * 10**8)", timeout_s=10, memory_mb=1024)
    assert result.error_kind == "output_limit", result
    assert len(result.output) <= sandbox.OUTPUT_CAP_BYTES + 20 and result.output.endswith("[truncated]")
    _assert_normal(run_program("answer = 6 * 7"), "42")


def test_run_programs_keeps_order():
    codes = [f"answer = {i} * {i}" for i in range(6)] + ["raise KeyError('k')"]
    results = run_programs(codes, workers=2)
    assert [r.answer for r in results] == [str(i * i) for i in range(6)] + [None]
    assert results[-1].error_kind == "exception" and all(r.error_kind in sandbox.ERROR_KINDS for r in results)
