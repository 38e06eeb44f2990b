"""The PoT sandbox: answers come back, and each defence (limits, uid, network, files, processes, output) holds."""
from __future__ import annotations

import ast
import json
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from toolkit.sandbox import runner as sandbox, seccomp
from toolkit.sandbox.runner import SandboxResult, run_program, run_programs


# Empties the tripwire: the hook looks these names up in the runner's globals at every event.
HOOK_OFF = ("import sys\n_m = sys.modules['__main__']\n_m.may_read = _m.may_write = lambda *a: True\n"
            "_m.DENIED_EVENTS, _m.DENIED_MODULES = ('\\0',), set()\n")


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


def _settled(baseline: tuple[int, int], within_s: float = 5.0) -> bool:
    """True once neither count is above the baseline. Not 'equal': a process that an earlier test left
    dying may be counted in the baseline and be gone by now (seen in the full suite)."""
    deadline = time.monotonic() + within_s
    while any(n > b for n, b in zip(_census(), baseline)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return all(n <= b for n, b in zip(_census(), baseline))


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


def test_a_private_tmpdir_does_not_stop_the_sandbox(monkeypatch, tmp_path):
    """As root the mounts helper runs as nobody: its mount points must not sit in a $TMPDIR only root reaches."""
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    monkeypatch.setattr(tempfile, "tempdir", str(private))  # what gettempdir() returns from now on
    _assert_normal(run_program("answer = 6 * 7"), "42")


def test_limits_uid_and_environment_in_the_child():
    code = ("import json, os, resource as r\nanswer = json.dumps({'uid': os.getuid(), 'env': dict(os.environ),"
            " 'cwd': os.getcwd(), 'limits': {n: r.getrlimit(getattr(r, n))[1] for n in"
            " ('RLIMIT_CPU', 'RLIMIT_AS', 'RLIMIT_FSIZE', 'RLIMIT_NPROC', 'RLIMIT_NOFILE', 'RLIMIT_CORE')}})")
    child = json.loads(run_program(code, timeout_s=3, memory_mb=200).answer)
    assert child["uid"] == sandbox.NOBODY  # inside its user namespace, as root and as an ordinary user
    assert child["limits"]["RLIMIT_CPU"] <= 5 and child["limits"]["RLIMIT_AS"] == 200 << 20
    assert child["limits"]["RLIMIT_FSIZE"] == sandbox.FILE_SIZE_BYTES and child["limits"]["RLIMIT_CORE"] == 0
    assert child["limits"]["RLIMIT_NPROC"] <= sandbox.MAX_PROCESSES
    assert child["limits"]["RLIMIT_NOFILE"] <= sandbox.MAX_OPEN_FILES
    # PWD is bwrap's: it sets it after --clearenv.
    assert child["env"]["HOME"] == child["cwd"] and set(child["env"]) <= {"HOME", "TMPDIR", "LC_CTYPE", "PWD"}


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
    # Without the tripwire the kernel says no: fork fails with EAGAIN at RLIMIT_NPROC, or multiprocessing's
    # pipes hit RLIMIT_NOFILE first (EMFILE; which comes first depends on how fast its children end), or it
    # reaps its finished children as it goes and spins until the timeout.
    result = run_program(HOOK_OFF + FORK_BOMBS[name], timeout_s=3)
    assert result.error_kind in ("forbidden", "timeout") and result.answer is None, result
    assert _settled(baseline)
    _assert_normal(run_program("answer = 2 + 2"), "4")


def test_open_file_limit_is_a_refusal():
    """EMFILE at RLIMIT_NOFILE is the sandbox saying no, reported like the other kernel refusals."""
    opener = f"import os\npipes = [os.pipe() for _ in range({sandbox.MAX_OPEN_FILES})]\nanswer = 1\n"
    result = run_program(HOOK_OFF + opener, timeout_s=3)
    assert (result.error_kind, result.answer) == ("forbidden", None) and "Errno 24" in result.error, result


def test_process_limit_holds_without_the_audit_hook():
    """The kernel layer alone: forks beyond RLIMIT_NPROC fail, counted in the sandbox's own user namespace."""
    forker = ("import os, time\nkids = []\nfor _ in range(64):\n    try:\n        pid = os.fork()\n"
              "    except OSError:\n        break\n    if pid == 0:\n        time.sleep(30)\n        os._exit(0)\n"
              "    kids.append(pid)\nanswer = len(kids)\n")
    baseline = _census()
    result = run_program(HOOK_OFF + forker, timeout_s=5)
    assert result.error_kind is None and 0 < int(result.answer) < sandbox.MAX_PROCESSES, result
    assert _settled(baseline)


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
    result = run_program(HOOK_OFF + connect.format(port=port) + "\nanswer = 'connected'")
    time.sleep(0.3)  # give a connection that got through time to be accepted
    assert result.error_kind == "forbidden" and result.answer is None, result
    assert accepted == []


def test_network_namespace_holds_without_the_audit_hook(listener):
    """The kernel layer alone: the program is in a network namespace of its own, and 127.0.0.1 of the host
    is out of its reach."""
    port, accepted = listener
    probe = ("import os, socket\nseen = [os.readlink('/proc/self/ns/net')]\n"
             f"try:\n    socket.create_connection(('127.0.0.1', {port}), timeout=2)\n    seen.append('connected')\n"
             "except OSError as exc:\n    seen.append(f'refused {exc}')\nanswer = '\\n'.join(seen)")
    result = run_program(HOOK_OFF + probe)
    namespace, outcome = result.answer.splitlines()
    assert namespace != os.readlink("/proc/self/ns/net")
    assert outcome.startswith("refused") and accepted == []


@pytest.mark.parametrize("write", [
    "open({path!r}, 'w').write('escaped')",
    "import os\nos.close(os.open({path!r}, os.O_WRONLY | os.O_CREAT))",
    "import os\nopen('here', 'w').close()\nos.rename('here', {path!r})",
])
@pytest.mark.parametrize("where", ["host", "system"])
def test_writes_outside_the_folder_are_refused(write, where, host_folder):
    """A host folder anyone may write to is not in the sandbox at all; what it does see is read-only."""
    path = str(host_folder / "escaped") if where == "host" else f"/usr/lib/sandbox_escape_{secrets.token_hex(8)}"
    result = run_program(HOOK_OFF + write.format(path=path) + "\nanswer = 'written'")
    assert result.error_kind in ("forbidden", "exception") and result.answer is None, result
    assert not os.path.exists(path)


def test_file_size_limit():
    result = run_program("open('big', 'wb').write(b'x' * (2 << 20))\nanswer = 'wrote'")
    assert result.error_kind == "exception" and "File too large" in result.error, result


def test_parent_environment_does_not_leak(monkeypatch):
    token = secrets.token_hex(16)
    monkeypatch.setenv("SANDBOX_SECRET", token)
    shown = run_program(HOOK_OFF + "import os\nprint(dict(os.environ))\nanswer = repr(dict(os.environ))")
    assert shown.error_kind is None and token not in shown.answer + shown.output
    # /proc/<ppid>/environ holds the environment the test process started with, not the token.
    started_with = [e for e in Path("/proc/self/environ").read_bytes().decode("latin-1").split("\0") if len(e) > 8]
    read = run_program(HOOK_OFF + "import os\nfor pid in os.listdir('/proc'):\n    try:\n"
                       "        print(open(f'/proc/{pid}/environ', 'rb').read().decode('latin-1'))\n"
                       "    except OSError:\n        pass\nanswer = 'read'")
    assert not any(entry in read.output for entry in started_with), read


def test_home_files_are_not_readable():
    token = secrets.token_hex(16)
    secret = Path.home() / f".sandbox_secret_{secrets.token_hex(8)}"
    secret.write_text(token)
    try:
        result = run_program(HOOK_OFF + f"data = open({str(secret)!r}).read()\nprint(data)\nanswer = data")
        assert result.error_kind in ("forbidden", "exception") and token not in (result.answer or "") + result.output
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
    """No shell and no command binaries inside: only the interpreter and shared libraries are mounted."""
    result = run_program(HOOK_OFF + code + "\nanswer = 'ran'")
    assert "hi" not in result.output, result


def test_the_audit_hook_still_trips_on_accidents():
    """The tripwire (not a boundary: every test above runs with it off) names what a program tried."""
    result = run_program("import socket\nsocket.socket()\nanswer = 1")
    assert result.error_kind == "forbidden" and "socket" in result.error, result


def test_huge_output_is_capped_then_the_next_program_runs():
    # 1 GiB address space: the 100 MB string and its encoded copy must fit, so that the output cap
    # (not the memory limit) is what stops this program.
    result = run_program("print('x' * 10**8)", timeout_s=10, memory_mb=1024)
    assert result.error_kind == "output_limit", result
    assert len(result.output) <= sandbox.OUTPUT_CAP_BYTES + 20 and result.output.endswith("[truncated]")
    _assert_normal(run_program("answer = 6 * 7"), "42")


# The runner writes its report to the fd in argv[1]; the program can write there too.
RESULT_FD = "import os, sys\nfd = int(sys.argv[1])\n"


@pytest.mark.parametrize("forged, why", [
    ("os.write(fd, b'[' * 60000)\nanswer = 1", "nested deeper than"),  # json.loads: RecursionError
    ("os.write(fd, b'{}\\n')\nos._exit(0)", "not the runner's"),  # a report without its keys: KeyError
])
def test_a_forged_report_costs_that_program_only(forged, why):
    """What a program writes to the result pipe once made run_programs raise, and the whole batch was lost. Now
    that program alone fails, in one line, and the harmless ones around it keep their answers."""
    results = run_programs(["answer = 1 + 1", HOOK_OFF + RESULT_FD + forged, "answer = 3 * 3"], workers=2)
    assert [r.answer for r in results] == ["2", None, "9"], results
    assert results[1].error_kind == "killed" and why in results[1].error, results[1]
    assert "\n" not in results[1].error


@given(st.one_of(st.binary(max_size=300), st.builds(lambda n, tail: b"[" * n + tail, st.integers(0, 60000),
                                                    st.binary(max_size=50)),
                 st.builds(lambda d: json.dumps(d).encode(), st.dictionaries(
                     st.sampled_from(["answer", "kind", "error", "x"]),
                     st.one_of(st.none(), st.text(max_size=5), st.integers(), st.lists(st.none(), max_size=2))))))
def test_any_bytes_on_the_result_pipe_are_a_report_or_a_reason(raw):
    """Whatever a program writes to the result pipe, reading it yields the runner's report or why there is none,
    in one line: never an exception that would take the batch down."""
    report = sandbox._report(raw)
    if isinstance(report, dict):
        assert report["kind"] in sandbox.ERROR_KINDS and all(isinstance(report.get(k), (str, type(None)))
                                                              for k in ("answer", "error"))
    else:
        assert isinstance(report, str) and "\n" not in report


def test_flooding_the_result_pipe_is_killed_at_its_limit():
    """The result pipe is bounded like the output: a program that floods it is killed at RESULT_KILL_BYTES."""
    flood = HOOK_OFF + RESULT_FD + "while True:\n    os.write(fd, b'x' * 65536)"
    start = time.monotonic()
    results = run_programs([flood, "answer = 6 * 7"], workers=2, timeout_s=10)
    assert time.monotonic() - start < 5, results  # killed at the limit, not at the timeout
    assert (results[0].error_kind, results[0].answer) == ("output_limit", None), results[0]
    assert f"more than {sandbox.RESULT_KILL_BYTES} bytes to its result pipe" in results[0].error
    _assert_normal(results[1], "42")


def test_run_programs_keeps_order():
    codes = [f"answer = {i} * {i}" for i in range(6)] + ["raise KeyError('k')"]
    results = run_programs(codes, workers=2)
    assert [r.answer for r in results] == [str(i * i) for i in range(6)] + [None]
    assert results[-1].error_kind == "exception" and all(r.error_kind in sandbox.ERROR_KINDS for r in results)


# ---------------------------------------------------------------------------------------------------------
# Attacks. Each runs from a helper process, as the invoking user (root in CI) and as an ordinary user made
# for the test (setpriv), with a fake API key in the helper's environment. Every attack program first
# switches the audit hook off, so what holds is the kernel's doing, never the tripwire's.

ROOT = Path(__file__).resolve().parents[1]
ATTACK_USER = "tk-sandbox-attack"
HELPER = r'''
import json, os, sys
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from toolkit.sandbox import runner as sandbox, seccomp

def survivors(marker):
    found = []
    for pid in os.listdir("/proc"):
        try:
            if pid.isdigit() and marker.encode() in open(f"/proc/{pid}/cmdline", "rb").read():
                found.append(int(pid))
        except OSError:
            pass
    return found

request = json.load(sys.stdin)
try:
    results = [r.__dict__ for r in sandbox.run_programs(request["codes"], workers=request["workers"],
                                                        timeout_s=request["timeout_s"])]
except BaseException as exc:
    results = f"{type(exc).__name__}: {exc}"
print(json.dumps({"results": results, "survivors": survivors(request["marker"]) if request["marker"] else [],
                  "cgroup": sandbox.cgroup_status()}))
'''


@dataclass
class Attacker:
    """Runs programs through toolkit.sandbox.runner from a helper process as `who` ("invoker" or "user")."""

    who: str
    folder: Path
    secret: str
    user: pwd.struct_passwd | None = None

    @property
    def home(self) -> Path:
        return Path(self.user.pw_dir) if self.user else Path.home()

    def run(self, codes: list[str], workers: int = 1, timeout_s: float = 5.0, marker: str = "") -> dict:
        request = json.dumps({"codes": [HOOK_OFF + c for c in codes], "workers": workers, "timeout_s": timeout_s,
                              "marker": marker})
        env = {"PATH": "/usr/bin:/bin", "HOME": str(self.home), "OPENAI_API_KEY": self.secret,
               "TOOLKIT_BWRAP": os.environ.get("TOOLKIT_BWRAP", "")}
        env = {k: v for k, v in env.items() if v}
        if self.user:
            command = ["setpriv", f"--reuid={self.user.pw_uid}", f"--regid={self.user.pw_gid}", "--clear-groups",
                       "/usr/bin/python3", "-I", str(self.folder / "helper.py")]
        else:
            command = [sys.executable, "-I", str(self.folder / "helper.py")]
        proc = subprocess.run(command, input=request, capture_output=True, text=True, env=env, cwd=self.folder,
                              timeout=120)
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout.splitlines()[-1])


def _ordinary_user() -> pwd.struct_passwd:
    if os.getuid() != 0:
        pytest.skip("as an ordinary user the 'invoker' runs already are the ordinary-user attacks")
    # root's tools live in /usr/sbin, which a PATH such as /usr/bin:/bin leaves out: these attacks then skipped
    useradd = shutil.which("useradd", path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"]))
    if not (useradd and shutil.which("setpriv") and os.path.exists("/usr/bin/python3")):
        pytest.skip("switching to an ordinary user needs useradd, setpriv and /usr/bin/python3")
    try:
        return pwd.getpwnam(ATTACK_USER)
    except KeyError:
        subprocess.run([useradd, "--create-home", "--shell", "/usr/sbin/nologin", ATTACK_USER], check=True)
        return pwd.getpwnam(ATTACK_USER)


@pytest.fixture(scope="module")
def attack_kit():
    """A world-readable copy of the modules the helper imports: the checkout may sit under a 0700 home."""
    folder = Path(tempfile.mkdtemp(prefix="sandbox-attack-"))
    folder.chmod(0o755)
    for name in ("__init__.py", "core/__init__.py", "core/errors.py", "core/untrusted_json.py", "sandbox/__init__.py",
                 "sandbox/runner.py", "sandbox/seccomp.py", "sandbox/cgroup.py"):
        (folder / "toolkit" / name).parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        shutil.copy(ROOT / "toolkit" / name, folder / "toolkit" / name)
    (folder / "helper.py").write_text(HELPER)
    for path in folder.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    yield folder
    shutil.rmtree(folder)


@pytest.fixture(params=["invoker", "user"])
def attacker(request, attack_kit):
    user = _ordinary_user() if request.param == "user" else None
    return Attacker(request.param, attack_kit, "sk-" + secrets.token_hex(16), user)


@pytest.fixture
def host_folder():
    """A folder on the host that any uid may write to: a side effect that escaped would land here."""
    folder = Path(tempfile.mkdtemp(prefix="sandbox-host-"))
    folder.chmod(0o1777)
    yield folder
    shutil.rmtree(folder)


def _kill_marked(marker: str) -> list[int]:
    """Kills (and lists) processes whose command line carries `marker`: what an attack left running."""
    found = []
    for entry in os.listdir("/proc"):
        try:
            if entry.isdigit() and marker.encode() in Path(f"/proc/{entry}/cmdline").read_bytes():
                os.kill(int(entry), signal.SIGKILL)
                found.append(int(entry))
        except OSError:
            continue
    return found


def _text(result: dict) -> str:
    return f"{result['answer']}\n{result['output']}\n{result['error']}"


def test_attack_forked_processes_share_one_memory_cap(attacker):
    """The rlimits hold per process; a program's cgroup caps its processes together (here at 312 MiB), so not
    all six 150 MiB children live. Without a cgroup (an ordinary user on a cgroup v1 host) all six do: the
    manifest's cgroup_reason says so."""
    out = attacker.run([FORKED_MEMORY], timeout_s=30)
    result, status = out["results"][0], out["cgroup"]
    assert result["error_kind"] is None, result
    if status["cgroup"]:
        assert int(result["answer"]) < 6, (status, result)
    else:
        assert status["cgroup_reason"] and int(result["answer"]) == 6, (status, result)


def test_attack_hook_off_prelude_really_disables_the_tripwire(attacker):
    """Guards the other attacks: after HOOK_OFF the audit hook refuses nothing, so they test the kernel."""
    out = attacker.run(["import socket\ntry:\n    socket.socket().close()\nexcept OSError as exc:\n"
                        "    print(exc)\nanswer = 'done'"])
    assert "sandbox:" not in _text(out["results"][0]), out


def test_attack_parent_environment_and_proc_environ(attacker):
    code = ("import os\nseen = [repr(dict(os.environ))]\nfor pid in ['self', str(os.getppid())] + os.listdir('/proc'):\n"
            "    try:\n        seen.append(open(f'/proc/{pid}/environ', 'rb').read().decode('latin-1'))\n"
            "    except OSError:\n        pass\nprint('\\n'.join(seen))\nanswer = '\\n'.join(seen)")
    result = attacker.run([code])["results"][0]
    assert attacker.secret not in _text(result), result


def test_attack_loopback_listener(attacker, listener):
    port, accepted = listener
    code = (f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=2)\n"
            f"s.sendall({attacker.secret!r}.encode())\nanswer = 'sent'")
    result = attacker.run([code])["results"][0]
    time.sleep(0.3)  # a connection that got through is accepted by now
    assert accepted == [] and result["answer"] != "sent", result


def test_attack_posixsubprocess_fork_exec(attacker, host_folder):
    """_posixsubprocess.fork_exec raises no audit event; whatever it starts stays inside the sandbox."""
    marker = host_folder / "pwned"
    code = (
        f"import importlib, os, sys\nmarker = {str(marker)!r}\nps = importlib.import_module('_posixsubprocess')\n"
        "ran = []\nfor argv in (['/bin/sh', '-c', 'echo pwned > ' + marker],\n"
        "             [sys.executable, '-c', f'open({marker!r}, \"w\").write(\"pwned\")']):\n"
        "    try:\n        pid = ps.fork_exec(argv, [os.fsencode(argv[0])], True, (), None, None, -1, -1, -1, -1,"
        " -1, -1, *os.pipe(), False, False, -1, None, None, None, -1, None, False)\n"
        "        ran.append(os.waitpid(pid, 0)[1])\n    except BaseException as exc:\n        ran.append(repr(exc))\n"
        "answer = repr(ran)")
    result = attacker.run([code])["results"][0]
    assert not marker.exists(), result


def test_attack_double_forked_daemon_dies_with_the_run(attacker):
    marker = "sandbox-daemon-" + secrets.token_hex(8)
    code = ("import os, sys, time\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
            f"        os.execv(sys.executable, [sys.executable, '-c', 'import time; time.sleep(60)', {marker!r}])\n"
            "    os._exit(0)\ntime.sleep(0.5)\nanswer = 'spawned'")
    try:
        out = attacker.run([code], marker=marker)
        assert out["results"][0]["answer"] == "spawned", out  # the daemon did start
        assert out["survivors"] == [], out
    finally:
        assert _kill_marked(marker) == []


KILLER = """
import os, signal, time
forged = b'{"answer": "666", "kind": null, "error": null}\\n'
hits, end = 0, time.time() + 3
while time.time() < end:
    for pid in os.listdir('/proc'):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            if b'-I\\0-S\\0-B' not in open(f'/proc/{pid}/cmdline', 'rb').read():
                continue
            for fd in os.listdir(f'/proc/{pid}/fd'):
                try:
                    with open(f'/proc/{pid}/fd/{fd}', 'wb') as f:
                        f.write(forged)
                except OSError:
                    pass
            os.kill(int(pid), signal.SIGKILL)
            hits += 1
        except OSError:
            pass
    time.sleep(0.02)
answer = str(hits)
"""


def test_attack_one_program_cannot_touch_another(attacker):
    victim = "import time\ntime.sleep(1.5)\nanswer = 6 * 7"
    out = attacker.run([KILLER, victim, victim], workers=3, timeout_s=6)
    assert [r["answer"] for r in out["results"][1:]] == ["42", "42"], out


def test_attack_filling_the_process_limit(attacker):
    marker = "sandbox-holder-" + secrets.token_hex(8)
    holder = ("import os, sys\nn = 0\nwhile n < 200:\n    try:\n        pid = os.fork()\n    except OSError:\n"
              "        break\n    if pid == 0:\n        os.setsid()\n"
              f"        os.execv(sys.executable, [sys.executable, '-c', 'import time; time.sleep(30)', {marker!r}])\n"
              "    n += 1\nanswer = str(n)")
    try:
        # Two holders one after the other: what the first leaves behind must not starve the second or the rest.
        out = attacker.run([holder, holder] + [f"answer = {i}" for i in range(3)], marker=marker)
        assert isinstance(out["results"], list) and len(out["results"]) == 5, out
        assert [r["answer"] for r in out["results"][2:]] == ["0", "1", "2"], out
        assert all(int(r["answer"]) < sandbox.MAX_PROCESSES for r in out["results"][:2]), out
    finally:
        _kill_marked(marker)


def test_attack_tmp_and_shm_do_not_persist(attacker):
    token = secrets.token_hex(8)
    writer = ("import os\nfor folder in ('/tmp', '/dev/shm', '.'):\n"
              f"    open(os.path.join(folder, 'tk-{token}'), 'w').write('{token}')\nanswer = 'written'")
    reader = ("import os\nseen = []\nfor folder in ('/tmp', '/dev/shm', '.'):\n    try:\n"
              "        seen += os.listdir(folder)\n    except OSError:\n        pass\nanswer = repr(seen)")
    try:
        out = attacker.run([writer, reader])
        assert out["results"][0]["answer"] == "written", out  # the writes themselves are allowed
        assert token not in _text(out["results"][1]), out
        assert not any(Path(folder, f"tk-{token}").exists() for folder in ("/tmp", "/dev/shm"))
    finally:
        for folder in ("/tmp", "/dev/shm"):
            Path(folder, f"tk-{token}").unlink(missing_ok=True)


def test_attack_many_empty_files_stop_at_the_file_limit(attacker):
    """Empty files cost the kernel memory that the tmpfs byte limit never counts (199k cost 256 MiB): each of
    the three writable folders now also holds at most TMPFS_FILES files (nr_inodes), then ENOSPC."""
    code = ("import errno, os\nmade = []\nfor folder in ('.', '/tmp', '/dev/shm'):\n    n = 0\n    try:\n"
            "        while n < 20000:\n            os.close(os.open(f'{folder}/f{n}', os.O_CREAT | os.O_WRONLY))\n"
            "            n += 1\n    except OSError as exc:\n        n = (n, errno.errorcode[exc.errno])\n"
            "    made.append(n)\nanswer = repr(made)")
    made = ast.literal_eval(attacker.run([code], timeout_s=20)["results"][0]["answer"])
    assert all(n == (sandbox.TMPFS_FILES - 1, "ENOSPC") for n in made), made  # the folder itself is one inode


# Creates, fills and detaches SysV shared memory segments of 128 MiB: a detached segment belongs to no process
# and counts against no rlimit, so without the filter each one is host memory that the program's limits miss.
SHM_HOARDER = """
import ctypes, errno
libc = ctypes.CDLL(None, use_errno=True)
libc.shmat.restype = ctypes.c_void_p
made, why = 0, 'all made'
for _ in range(4):
    shmid = libc.shmget(0, 128 << 20, 0o1600)  # IPC_PRIVATE, IPC_CREAT | 0600
    if shmid < 0:
        why = errno.errorcode[ctypes.get_errno()]
        break
    address = libc.shmat(shmid, None, 0)
    ctypes.memset(address, 1, 128 << 20)
    libc.shmdt(ctypes.c_void_p(address))
    made += 1
answer = f'{made} {why}'
"""


def test_attack_sysv_shared_memory_is_refused(attacker):
    """The SysV IPC calls are refused by seccomp (EPERM): no segment is made, so none outlives the program."""
    ipc = ("import ctypes, errno, socket\nlibc = ctypes.CDLL(None, use_errno=True)\nseen = []\n"
           "for call in (lambda: libc.msgget(0, 0o1600), lambda: libc.semget(0, 1, 0o1600)):\n"
           "    seen.append(call() == -1 and errno.errorcode[ctypes.get_errno()])\n"
           "try:\n    socket.socketpair()\n    seen.append('socketpair made')\nexcept PermissionError:\n"
           "    seen.append('EPERM')\nanswer = repr(seen)")
    out = attacker.run([SHM_HOARDER, ipc], timeout_s=20)
    assert [r["answer"] for r in out["results"]] == ["0 EPERM", "['EPERM', 'EPERM', 'EPERM']"], out


def test_attack_other_processes_command_lines(attacker):
    token = "sk-" + secrets.token_hex(16)
    server = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", f"--api-key={token}"])
    try:
        code = ("import os\nseen = []\nfor pid in os.listdir('/proc'):\n    try:\n"
                "        seen.append(open(f'/proc/{pid}/cmdline', 'rb').read().decode('latin-1'))\n"
                "    except OSError:\n        pass\nanswer = repr(seen)")
        result = attacker.run([code])["results"][0]
        assert token not in _text(result), result
    finally:
        server.kill()
        server.wait()


def test_attack_home_and_project_are_not_readable(attacker):
    token = secrets.token_hex(16)
    secret = attacker.home / f".sandbox-secret-{secrets.token_hex(4)}"
    secret.write_text(token)
    if attacker.user:
        os.chown(secret, attacker.user.pw_uid, attacker.user.pw_gid)
    secret.chmod(0o600)
    project_line = (ROOT / "toolkit" / "sandbox" / "runner.py").read_text().splitlines()[0]
    try:
        code = ("import os\nseen = []\n"
                f"for path in ({str(secret)!r}, {str(ROOT / 'toolkit' / 'sandbox' / 'runner.py')!r}):\n"
                "    try:\n        seen.append(open(path).read())\n    except OSError as exc:\n        seen.append(str(exc))\n"
                f"for folder in ({str(attacker.home)!r}, {str(ROOT)!r}):\n"
                "    try:\n        seen.append(repr(os.listdir(folder)))\n    except OSError as exc:\n"
                "        seen.append(str(exc))\nanswer = repr(seen)")
        result = attacker.run([code])["results"][0]
        text = _text(result)
        assert token not in text and project_line not in text and "pyproject.toml" not in text, result
    finally:
        secret.unlink()



# ---------------------------------------------------------------------------------------------------------
# The seccomp filter.

HEADERS = {"x86_64": "/usr/include/x86_64-linux-gnu/asm/unistd_64.h", "aarch64": "/usr/include/asm-generic/unistd.h"}


@pytest.mark.parametrize("machine, column", [("x86_64", 0), ("aarch64", 1)])
def test_seccomp_syscall_numbers_match_the_kernel_headers(machine, column):
    header = Path(HEADERS[machine])
    if not header.is_file():
        pytest.skip(f"{header} is not installed (Debian: linux-libc-dev)")
    defined = dict(re.findall(r"#define __NR_(\w+)\s+(\d+)", header.read_text()))
    assert {name: int(defined[name]) for name in seccomp.DENIED} == {n: nrs[column] for n, nrs in seccomp.DENIED.items()}


def test_seccomp_filter_is_in_force():
    if seccomp.program() is None:
        pytest.skip("no seccomp syscall table for this machine")
    # keyctl reads the kernel keyring, which no namespace hides; socket would open the network stack.
    code = ("import ctypes, errno, socket\nlibc = ctypes.CDLL(None, use_errno=True)\nseen = []\n"
            "seen.append(libc.syscall(%d, 0, -3, 0, 0, 0) == -1 and ctypes.get_errno() == errno.EPERM)\n"
            "try:\n    socket.socket(socket.AF_UNIX)\n    seen.append(False)\nexcept PermissionError:\n"
            "    seen.append(True)\nanswer = repr(seen)") % seccomp.DENIED["keyctl"][seccomp.ARCHES[os.uname().machine][1]]
    _assert_normal(run_program(HOOK_OFF + code), "[True, True]")


# ---------------------------------------------------------------------------------------------------------
# Where confinement cannot be had: PoT refuses in one line, unless `unsafe` was chosen.


def _one_line_refusal(stderr: str) -> None:
    assert stderr.strip().startswith("error: program-of-thought needs the sandbox: bubblewrap is not installed")
    assert "apt-get install bubblewrap" in stderr and len(stderr.strip().splitlines()) == 1, stderr


def test_without_bubblewrap_programs_are_refused(no_bwrap):
    for call in (lambda: run_program("answer = 1"), lambda: run_programs(["answer = 1", "answer = 2"])):
        with pytest.raises(sandbox.SandboxUnavailable) as refused:
            call()
        _one_line_refusal(f"error: {refused.value}")


def test_a_bubblewrap_that_cannot_make_a_sandbox_is_refused(no_bwrap, monkeypatch):
    """The self-test runs a real program: a bwrap that starts but cannot confine (here one that fails at
    once, as bwrap does where user namespaces are disabled) is as good as none."""
    monkeypatch.setenv("TOOLKIT_BWRAP", shutil.which("false"))
    with pytest.raises(sandbox.SandboxUnavailable, match="cannot make a sandbox here .*user namespaces") as refused:
        run_program("answer = 1")
    assert "\n" not in str(refused.value)


def test_an_old_bubblewrap_is_told_to_upgrade(no_bwrap, monkeypatch, host_folder):
    """A bubblewrap without an option we use (here --size) stops at "Unknown option": the fix is a newer
    bubblewrap, not user namespaces. (In a folder that uid nobody can reach: as root bwrap starts as nobody.)"""
    old = host_folder / "bwrap"
    old.write_text("#!/bin/sh\necho 'bwrap: Unknown option --size' >&2\nexit 1\n")
    old.chmod(0o755)
    monkeypatch.setenv("TOOLKIT_BWRAP", str(old))
    with pytest.raises(sandbox.SandboxUnavailable, match="too old .*upgrade bubblewrap to 0.8.0") as refused:
        run_program("answer = 1")
    assert "user namespaces" not in str(refused.value) and "\n" not in str(refused.value)


def test_cgroup_status_names_the_cap_or_why_there_is_none():
    """The manifest records whether a cgroup caps each program as a whole: its version, or the reason in one line."""
    status = sandbox.cgroup_status()
    assert status in ({"cgroup": True, "cgroup_version": 1}, {"cgroup": True, "cgroup_version": 2}) or (
        status["cgroup"] is False and status["cgroup_reason"] and "\n" not in status["cgroup_reason"])


def test_every_program_cgroup_is_removed():
    from toolkit.sandbox import cgroup

    layout, why = cgroup._layout()
    if layout is None:
        pytest.skip(f"no cgroup for the sandbox here: {why}")
    results = run_programs(["answer = 1", "raise ValueError('x')", "while True:\n    pass"], workers=2,
                           timeout_s=2)
    assert [r.error_kind for r in results] == [None, "exception", "timeout"]
    assert not [p for folder in {layout.memory, layout.pids} for p in folder.glob("toolkit-sandbox-*")]
    # What a toolkit killed with SIGKILL leaves (its pid gone) is removed when the next one looks for its layout.
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = [folder / f"toolkit-sandbox-{dead.pid}-0" for folder in {layout.memory, layout.pids}]
    for folder in stale:
        folder.mkdir()
    cgroup._layout.cache_clear()
    assert cgroup._layout()[0] == layout and not [folder for folder in stale if folder.exists()]


# Six processes (the tripwire off), each holding 150 MiB: 900 MiB, each within the 256 MiB address-space limit.
FORKED_MEMORY = ("import os, time\nkids = []\nfor _ in range(6):\n    pid = os.fork()\n    if pid == 0:\n"
                 "        block = b'\\x01' * (150 << 20)\n        time.sleep(1.5)\n        os._exit(0)\n"
                 "    kids.append(pid)\nanswer = sum(os.waitpid(pid, 0)[1] == 0 for pid in kids)\n")


def test_unsafe_mode_runs_unconfined_and_warns(no_bwrap, monkeypatch, capsys):
    monkeypatch.setenv("TOOLKIT_SANDBOX", "unsafe")
    _assert_normal(run_program("answer = 6 * 7"), "42")
    assert "WARNING: sandbox: unsafe" in capsys.readouterr().err


def test_cli_refuses_pot_before_any_work(no_bwrap, tmp_path, tiny_model_dir):
    from tests.conftest import toolkit, write_tiny_recipe
    from toolkit.runtime.llama_server import free_port

    r = toolkit("eval", "pkg:smollm2-135m-instruct", "--suite", "multiarith", "--strategy", "pot",
                "--out", str(tmp_path / "results.json"), cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    _one_line_refusal(r.stderr)
    recipe = write_tiny_recipe(tmp_path, tiny_model_dir, f"http://127.0.0.1:{free_port()}/v1")
    r = toolkit("distill", str(recipe), "distill.strategies=[cot, pot]", cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    _one_line_refusal(r.stderr)
    assert not (tmp_path / "runs").exists()  # refused before the run folder, let alone a teacher call


def test_distill_unsafe_warns_and_is_recorded_in_the_manifest(no_bwrap, tmp_path, tiny_model_dir):
    from tests.conftest import toolkit, write_tiny_recipe
    from toolkit.runtime.llama_server import free_port

    # The teacher is unreachable: the run stops at the rationales, after the manifest is written.
    recipe = write_tiny_recipe(tmp_path, tiny_model_dir, f"http://127.0.0.1:{free_port()}/v1")
    r = toolkit("distill", str(recipe), "distill.strategies=[cot, pot]", "distill.sandbox=unsafe",
                "teacher.max_retries=1", "teacher.timeout_s=2", cwd=tmp_path)
    assert "WARNING: sandbox: unsafe" in r.stderr and "run unconfined" in r.stdout, r
    manifest = json.loads((tmp_path / "runs" / "tiny" / "manifest.json").read_text())
    assert manifest["sandbox"] == {"mode": "unsafe", "confined": False, "pot_allowed": True} | sandbox.cgroup_status()
