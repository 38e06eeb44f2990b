"""Where a benchmark runs: a child process here, or a device over ssh (the runner and model are copied once).

Both executors take a runner spec (see bench_runner.run) and return the runner's JSON result.
"""
from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

from toolkit.errors import ToolkitError

RUNNER_FILES = ("bench_runner.py", "machine.py", "safetar.py")  # self-contained: all the device needs besides its runtime


class BenchError(ToolkitError):
    """The benchmark could not run: the runner failed, the device is unreachable, or the model is unusable."""


def _parse(stdout: str, where: str) -> dict:
    from toolkit.eval.bench_runner import MARKER

    for line in reversed(stdout.splitlines()):
        if line.startswith(MARKER):
            return json.loads(line[len(MARKER):])
    raise BenchError(f"the bench runner on {where} printed no result (last output: {stdout.strip()[-300:]!r})")


class LocalExecutor:
    """Runs each spec in a fresh child process, so its peak RSS is the model's alone."""

    where = "localhost"

    def __call__(self, spec: dict) -> dict:
        proc = subprocess.run([sys.executable, "-m", "toolkit.eval.bench_runner", json.dumps(spec)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise BenchError(f"bench runner exited with {proc.returncode}: {proc.stderr.strip()[-400:]}")
        return _parse(proc.stdout, self.where)


class RemoteExecutor:
    """`ssh://user@host[:port]`: copies the runner and the model into a fresh remote temp folder on
    enter, runs specs there with `python`, removes the folder on exit. ssh runs in batch mode (keys,
    never a password prompt); `options` are passed as `-o KEY=VALUE` (e.g. IdentityFile=…)."""

    def __init__(self, url: str, model: Path, python: str = "python3", options: tuple[str, ...] = ()):
        parsed = urlparse(url)
        if parsed.scheme != "ssh" or not parsed.hostname:
            raise BenchError(f"--remote wants ssh://[user@]host[:port], got {url!r}")
        self.target = f"{parsed.username}@{parsed.hostname}" if parsed.username else parsed.hostname
        self.port = str(parsed.port or 22)
        self.where = f"{self.target}:{self.port}"
        self.model, self.python = Path(model), python
        self.opts = ["-o", "BatchMode=yes", "-o", "ConnectTimeout=15"] + [x for o in options for x in ("-o", o)]
        self.dir: str | None = None

    def _ssh(self, command: str, timeout: float | None = None) -> str:
        proc = subprocess.run(["ssh", "-p", self.port, *self.opts, self.target, command],
                              capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            raise BenchError(f"ssh {self.where} `{command[:60]}` failed ({proc.returncode}): "
                             f"{proc.stderr.strip()[-300:]}")
        return proc.stdout

    def __enter__(self) -> RemoteExecutor:
        self.dir = self._ssh("mktemp -d", timeout=60).strip()
        here = Path(__file__).parent
        files = [str(here / f) for f in RUNNER_FILES] + [str(self.model)]
        proc = subprocess.run(["scp", "-q", "-r", "-P", self.port, *self.opts, *files, f"{self.target}:{self.dir}/"],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            self.__exit__()
            raise BenchError(f"copying to {self.where} failed: {proc.stderr.strip()[-300:]}")
        return self

    def __call__(self, spec: dict) -> dict:
        spec = {**spec, "model": f"{self.dir}/{self.model.name}"}
        out = self._ssh(f"cd {shlex.quote(self.dir)} && {shlex.quote(self.python)} bench_runner.py "
                        f"{shlex.quote(json.dumps(spec))}")
        return _parse(out, self.where)

    def __exit__(self, *exc) -> None:
        if self.dir:
            subprocess.run(["ssh", "-p", self.port, *self.opts, self.target, f"rm -rf {shlex.quote(self.dir)}"],
                           capture_output=True, timeout=60)
            self.dir = None
