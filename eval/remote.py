"""Where a benchmark runs: a child process here, or a device over ssh (the runner and model are copied once).

Both executors take a runner spec (see bench_runner.run) and return the runner's JSON result.
"""
from __future__ import annotations

import ipaddress
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

from toolkit.core import model_kind
from toolkit.core.errors import ToolkitError
from toolkit.eval.bench_runner import MARKER

# Self-contained: all the device needs besides its runtime (safetar.py unpacks a bundle there, model_kind.py tells
# what a model path holds).
RUNNER_FILES = (*(Path(__file__).parent / name for name in ("bench_runner.py", "machine.py", "safetar.py")),
                Path(model_kind.__file__))


class BenchError(ToolkitError):
    """The benchmark could not run: the runner failed, the device is unreachable, or the model is unusable."""


# What ssh and scp accept as a destination without reading it as an option or a second word: DNS names
# (labels of letters, digits and inner hyphens), IP literals, and POSIX-style user names. Nothing may
# start with "-" (ssh would take `-oProxyCommand=…` as an option and run it).
_HOSTNAME = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                       r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$")
_USER = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")


def parse_remote(url: str) -> tuple[str | None, str, int]:
    """(user, host, port) of `ssh://[user@]host[:port]`; a BenchError for anything else (the URL is not echoed
    whole: it may hold a password)."""
    usage = "--remote wants ssh://[user@]host[:port]"
    try:
        parts = urlsplit(url)
        port = parts.port or 22
    except ValueError:
        raise BenchError(f"{usage}: the port is not a number from 1 to 65535") from None
    if parts.scheme != "ssh" or not parts.hostname:
        raise BenchError(f"{usage} (no ssh:// or no host)")
    if parts.password is not None:
        raise BenchError(f"{usage}: no password in the URL; ssh logs in with keys (--ssh-option IdentityFile=…)")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise BenchError(f"{usage}: no path, query or fragment")
    host = parts.hostname
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if not _HOSTNAME.match(host):
            raise BenchError(f"{usage}: host {host[:80]!r} is not a host name or IP address") from None
    user = parts.username
    if user is not None and not _USER.match(user):
        raise BenchError(f"{usage}: user {user[:40]!r} is not a plain user name")
    return user, host, port


def _parse(stdout: str, where: str) -> dict:
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
        user, host, port = parse_remote(url)
        self.target = f"{user}@{host}" if user else host
        # scp reads HOST:PATH, so an IPv6 literal needs its brackets there
        self.scp_target = f"{user}@[{host}]" if ":" in host and user else f"[{host}]" if ":" in host else self.target
        self.port = str(port)
        self.where = f"{self.target}:{self.port}"
        self.model, self.python = Path(model), python
        self.opts = ["-o", "BatchMode=yes", "-o", "ConnectTimeout=15"] + [x for o in options for x in ("-o", o)]
        self.dir: str | None = None

    def _ssh(self, command: str, timeout: float | None = None) -> str:
        # "--": nothing after it is read as an option, whatever the destination looks like
        proc = subprocess.run(["ssh", "-p", self.port, *self.opts, "--", self.target, command],
                              capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            raise BenchError(f"ssh {self.where} `{command[:60]}` failed ({proc.returncode}): "
                             f"{proc.stderr.strip()[-300:]}")
        return proc.stdout

    def __enter__(self) -> RemoteExecutor:
        self.dir = self._ssh("mktemp -d", timeout=60).strip()
        files = [str(f) for f in RUNNER_FILES] + [str(self.model)]
        proc = subprocess.run(["scp", "-q", "-r", "-P", self.port, *self.opts, "--", *files,
                               f"{self.scp_target}:{self.dir}/"],
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
            subprocess.run(["ssh", "-p", self.port, *self.opts, "--", self.target, f"rm -rf {shlex.quote(self.dir)}"],
                           capture_output=True, timeout=60)
            self.dir = None
