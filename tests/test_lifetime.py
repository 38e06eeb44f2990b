"""Children bound to the toolkit process: a SIGKILLed parent leaves no teacher server or job behind."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from toolkit.core.lifetime import ends_with_this_process

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="PR_SET_PDEATHSIG is Linux's")
ROOT = Path(__file__).resolve().parents[1]


def _alive(pid: int) -> bool:
    """Running or sleeping; a zombie (killed, waiting for a reaper that may never come in a container) is not."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


def _gone_within(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.1)
    return False


def _parent(body: str) -> subprocess.Popen:
    """A python process that runs `body` (which prints its child's pid) and then waits to be killed."""
    code = textwrap.dedent(body) + "\nimport sys, time\nsys.stdout.flush()\ntime.sleep(300)\n"
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=ROOT)


def _kill_parent_and_get_child(parent: subprocess.Popen) -> int:
    child = int(parent.stdout.readline())
    assert _alive(child)
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    return child


def test_a_bound_child_ends_when_its_parent_is_killed_and_keeps_its_pid():
    parent = _parent("""
        import subprocess, time
        from toolkit.core.lifetime import ends_with_this_process
        p = subprocess.Popen(ends_with_this_process(["sleep", "120"]))
        time.sleep(0.5)  # the launcher has exec'd by now
        print(p.pid)
        print(open(f"/proc/{p.pid}/cmdline").read().replace("\\0", " ").strip())
    """)
    child = int(parent.stdout.readline())
    assert parent.stdout.readline().strip() == "sleep 120"  # the launcher became the command: stop by PID works
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    try:
        assert _gone_within(child, 10), "the child outlived its SIGKILLed parent"
    finally:
        if _alive(child):
            os.kill(child, signal.SIGKILL)


def test_a_child_that_ignores_sigterm_is_bound_by_sigkill():
    # Like uvicorn finishing a generation whose client is gone: SIGTERM alone would leave it running.
    body = """
        import signal, subprocess, sys, time
        from toolkit.core.lifetime import ends_with_this_process
        deaf = [sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(120)"]
        p = subprocess.Popen(ends_with_this_process(deaf, {sig}))
        time.sleep(1.5)  # until the child has set SIG_IGN (a python start, tens of milliseconds)
        print(p.pid)
    """
    survivors = []
    for sig, should_end in ((signal.SIGTERM, False), (signal.SIGKILL, True)):
        child = _kill_parent_and_get_child(_parent(body.format(sig=int(sig))))
        try:
            assert _gone_within(child, 5) is should_end, f"bound by {sig.name}"
        finally:
            if _alive(child):
                survivors.append(child)
                os.kill(child, signal.SIGKILL)
    assert len(survivors) == 1  # the SIGTERM-bound one: the control that shows the child really ignores it


def _server_ends_with_its_parent(start: str, seconds: float, what: str) -> None:
    """`start` (code that sets `srv`, whose `proc` is the server) runs in a parent that is then SIGKILLed: the
    server must be gone within `seconds`."""
    child = _kill_parent_and_get_child(_parent(start + "\nprint(srv.proc.pid)\n"))
    try:
        assert _gone_within(child, seconds), f"{what} outlived the process that started it"
    finally:
        if _alive(child):
            os.killpg(child, signal.SIGKILL)


def test_the_fault_teacher_ends_with_a_killed_test_process(tmp_path):
    _server_ends_with_its_parent(f"from tests.fault_teacher import FaultTeacher\n"
                                 f"srv = FaultTeacher({str(tmp_path / 'server.jsonl')!r}).__enter__()",
                                 10, "the fault teacher")


def test_an_unbound_child_outlives_its_parent():
    """The control: without the launcher the same child is orphaned, so the test above can fail."""
    parent = _parent("""
        import subprocess
        print(subprocess.Popen(["sleep", "120"]).pid)
    """)
    child = _kill_parent_and_get_child(parent)
    try:
        assert not _gone_within(child, 2)
    finally:
        os.kill(child, signal.SIGKILL)


def test_only_the_main_thread_binds():
    """The kernel signals when the forking *thread* ends: from a worker thread the command is left as it is."""
    cmd = ["sleep", "1"]
    assert ends_with_this_process(cmd)[-2:] == cmd and len(ends_with_this_process(cmd)) > 2
    seen = []
    t = threading.Thread(target=lambda: seen.append(ends_with_this_process(cmd)))
    t.start()
    t.join()
    assert seen == [cmd]


def test_a_teacher_server_ends_when_the_distill_process_is_killed(smollm2_gguf, tmp_path):
    _server_ends_with_its_parent(f"from toolkit.runtime.llama_server import LlamaServer\n"
                                 f"srv = LlamaServer({str(smollm2_gguf)!r}, {str(tmp_path / 'server.log')!r}, "
                                 f"n_ctx=512, threads=1).start()", 20, "the llama.cpp server")
