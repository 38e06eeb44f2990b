"""Child processes that end with the toolkit process that started them, even when it is killed outright.

`stop()` and the CLI's SIGTERM handler end a teacher server or a training job on every exit Python sees. A
SIGKILL (the OOM killer, `kill -9`, a container's hard stop) runs none of that, and the child lived on as an
orphan: a llama.cpp teacher kept 2 cores and about 1.3 GB, a torchrun job its whole training state. On Linux
the kernel can send a signal to a process when its parent dies (prctl PR_SET_PDEATHSIG); the setting survives
exec, so a small launcher sets it and then execs the real command in its own PID, and stopping it by PID works
as before.
"""
from __future__ import annotations

import os
import signal
import sys
import threading

# argv: the signal, the parent's pid, then the command. PR_SET_PDEATHSIG is 1. If the parent died before the prctl took
# effect, getppid() is no longer its pid and the command is not started at all. A kernel that refuses the prctl
# leaves the command running as before, without the guarantee.
_LAUNCHER = (
    "import ctypes, os, signal, sys\n"
    "ctypes.CDLL(None).prctl(1, int(sys.argv[1]))\n"
    "if os.getppid() != int(sys.argv[2]):\n"
    "    sys.exit(0)\n"
    "os.execvp(sys.argv[3], sys.argv[3:])\n"
)


def ends_with_this_process(cmd: list[str], on_parent_death: int = signal.SIGTERM) -> list[str]:
    """`cmd`, behind the launcher, where the kernel can bind the child to this process (Linux, main thread).

    `on_parent_death` is the signal the child gets: SIGTERM lets a torchrun job pass it on to its workers;
    a child that treats SIGTERM as "finish what you are doing" (uvicorn, under a llama.cpp server, waits for
    the generation in flight) needs SIGKILL to end at once.

    The kernel signals the child when the *thread* that forked it ends, not the process, so the binding is
    made only for children started from the main thread, whose end is the process's end. From any other
    thread, and off Linux, the command is returned unchanged.
    """
    if sys.platform != "linux" or threading.current_thread() is not threading.main_thread():
        return list(cmd)
    return [sys.executable, "-c", _LAUNCHER, str(int(on_parent_death)), str(os.getpid()), *cmd]
