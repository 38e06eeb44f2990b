"""A local llama.cpp OpenAI-compatible server on 127.0.0.1, started for a GGUF model and stopped by PID."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from toolkit.core.defaults import default_threads
from toolkit.core.errors import ModelError
from toolkit.core.lifetime import ends_with_this_process
from toolkit.runtime.llama_tools import require_tool


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LlamaServer:
    """A llama.cpp server for one GGUF model, as a context manager.

    `server="llama_cpp.server"` (default) runs `python -m llama_cpp.server`, which answers one
    request at a time (DESIGN.md, serving trap), so callers keep their concurrency at 1 against it.
    `server="llama-server"` runs llama.cpp's own server (toolkit/teacher/llama_tools.py finds it) with
    `slots` sequences decoded together by continuous batching; each slot gets `n_ctx` tokens.
    The log (including one access line per request) goes to `log_path`, which the tests read to
    count the requests that reached the server.
    """

    def __init__(self, model: Path, log_path: Path, n_ctx: int = 2048, threads: int | None = None,
                 port: int | None = None, server: str = "llama_cpp.server", slots: int = 1):
        self.server = server
        self.slots = slots
        self.model = Path(model)
        self.log_path = Path(log_path)
        self.n_ctx = n_ctx
        self.threads = threads or default_threads()
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    label = "llama.cpp server"  # how errors name the server
    start_timeout_s = 180.0  # seconds to wait for /v1/models to answer

    def _check_model(self) -> None:
        if not self.model.is_file():
            raise ModelError(f"teacher model not found: {self.model}")

    def start(self, timeout_s: float | None = None) -> LlamaServer:
        timeout_s = timeout_s or self.start_timeout_s
        self._check_model()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        cmd = self._command()
        log = open(self.log_path, "ab")
        # A session of its own: stop() signals the whole group, so no worker outlives the server. And it ends
        # when this process is killed outright (toolkit/core/lifetime.py), which stop() cannot see: by SIGKILL,
        # since on SIGTERM llama_cpp.server's uvicorn first finishes the generation in flight, for minutes
        # when its client is gone (a test's server spun at 97% for 10 minutes after pytest was killed).
        self.proc = subprocess.Popen(ends_with_this_process(cmd, signal.SIGKILL), stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = self.log_path.read_text(errors="replace").strip().splitlines()[-3:]
                raise ModelError(f"{self.label} for {self.model.name} exited: {' | '.join(tail)}")
            try:
                with urllib.request.urlopen(f"{self.base_url}/models", timeout=2) as r:
                    if r.status == 200:
                        return self
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.3)
        self.stop()
        raise ModelError(f"{self.label} for {self.model.name} did not answer within {timeout_s:.0f} s")

    def _command(self) -> list[str]:
        if self.server == "llama-server":
            # -c is the context of all slots together; --jinja renders the GGUF's own chat template,
            # as llama_cpp.server does.
            return [str(require_tool("llama-server")), "-m", str(self.model), "--host", "127.0.0.1",
                    "--port", str(self.port), "-c", str(self.n_ctx * self.slots), "-np", str(self.slots),
                    "-t", str(self.threads), "-tb", str(self.threads), "--jinja", "--no-webui"]
        return [sys.executable, "-m", "llama_cpp.server", "--model", str(self.model),
                "--host", "127.0.0.1", "--port", str(self.port), "--n_ctx", str(self.n_ctx),
                "--n_threads", str(self.threads), "--n_threads_batch", str(self.threads),
                # llama_cpp.server turns flash attention off unless asked; llama-server's default turns it on
                "--flash_attn", "true"]

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        except ProcessLookupError:
            pass

    def requests_served(self) -> int:
        """Chat-completion requests the server has answered, counted from its access log."""
        if not self.log_path.is_file():
            return 0
        return count_served(self.log_path)

    def __enter__(self) -> LlamaServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def count_served(log_path: Path) -> int:
    """Chat completions a server answered, from its log: llama_cpp.server writes an access line per
    request; llama-server writes no access line at its default verbosity, but one timing summary
    ("total time = ...") per finished generation."""
    lines = Path(log_path).read_text(errors="replace").splitlines()
    return sum("POST /v1/chat/completions" in line or "print_timing" in line and "total time =" in line
               for line in lines)
