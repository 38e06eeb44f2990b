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
import sys
import threading

# argv: the parent's pid, then the command. PR_SET_PDEATHSIG is 1. If the parent died before the prctl took
# effect, getppid() is no longer its pid and the command is not started at all. A kernel that refuses the prctl
# leaves the command running as before, without the guarantee.
_LAUNCHER = (
    "import ctypes, os, signal, sys\n"
    "ctypes.CDLL(None).prctl(1, signal.SIGTERM)\n"
    "if os.getppid() != int(sys.argv[1]):\n"
    "    sys.exit(0)\n"
    "os.execvp(sys.argv[2], sys.argv[2:])\n"
)


def ends_with_this_process(cmd: list[str]) -> list[str]:
    """`cmd`, behind the launcher, where the kernel can bind the child to this process (Linux, main thread).

    The kernel signals the child when the *thread* that forked it ends, not the process, so the binding is
    made only for children started from the main thread, whose end is the process's end. From any other
    thread, and off Linux, the command is returned unchanged.
    """
    if sys.platform != "linux" or threading.current_thread() is not threading.main_thread():
        return list(cmd)
    return [sys.executable, "-c", _LAUNCHER, str(os.getpid()), *cmd]
