"""`toolkit bench --remote ssh://…` against a real OpenSSH server that the test starts on 127.0.0.1
with a throwaway host key and client key, and stops by its PID."""
from __future__ import annotations

import getpass
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from tests.conftest import toolkit

SSHD = "/usr/sbin/sshd"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    """A loopback sshd accepting one key; yields (url, ssh options). scripts/setup.sh installs openssh-server."""
    if not os.path.exists(SSHD) or not shutil.which("ssh") or not shutil.which("scp"):
        pytest.skip("openssh-server/client not installed (scripts/setup.sh installs them where it can)")
    if os.geteuid() == 0:  # sshd started as root insists on its privilege-separation directory
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
    d = tmp_path_factory.mktemp("sshd")
    for key in ("host_key", "client_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / key)], check=True)
    (d / "authorized_keys").write_text((d / "client_key.pub").read_text())
    port = _free_port()
    host_pub = (d / "host_key.pub").read_text().split()[:2]
    (d / "known_hosts").write_text(f"[127.0.0.1]:{port} {' '.join(host_pub)}\n")
    (d / "sshd_config").write_text(f"""\
Port {port}
ListenAddress 127.0.0.1
HostKey {d / 'host_key'}
PidFile {d / 'sshd.pid'}
AuthorizedKeysFile {d / 'authorized_keys'}
StrictModes no
UsePAM no
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
PermitRootLogin prohibit-password
Subsystem sftp internal-sftp
""")
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(d / "sshd_config")], stderr=open(d / "sshd.log", "w"))
    deadline = time.monotonic() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"sshd did not start: {(d / 'sshd.log').read_text()[-500:]}")
            time.sleep(0.1)
    options = [f"IdentityFile={d / 'client_key'}", f"UserKnownHostsFile={d / 'known_hosts'}",
               "StrictHostKeyChecking=yes"]
    yield f"ssh://{getpass.getuser()}@127.0.0.1:{port}", options
    proc.terminate()  # by its PID, the one we started
    proc.wait(timeout=10)


def remote_bench(model: str, url: str, options: list[str], out: Path, cwd: Path):
    opts = [x for o in options for x in ("--ssh-option", o)]
    return toolkit("bench", model, "--remote", url, "--remote-python", sys.executable, *opts, "--prompt-tokens", "8",
                   "--gen-tokens", "4", "--reps", "2", "--threads", "1", "--allow-busy", "--out", str(out), cwd=cwd)


def test_remote_bench_runs_on_the_device_and_cleans_up(sshd, smollm2_gguf, tmp_path):
    url, options = sshd
    proc = remote_bench("pkg:smollm2-135m-instruct", url, options, tmp_path / "remote.json", tmp_path)
    assert proc.returncode == 0, proc.stderr
    row = json.loads((tmp_path / "remote.json").read_text())
    assert row["host"] == url.removeprefix("ssh://")
    remote_model = Path(row["model_path"])
    # the runner read a copy in the remote temp folder, not the package's file, and that folder is gone
    assert remote_model != smollm2_gguf and remote_model.name == smollm2_gguf.name
    assert not remote_model.parent.exists()
    assert row["decode_tok_s"]["mean"] > 0 and row["peak_rss_bytes"] > 0
    assert row["roofline"]["ratio"] == pytest.approx(row["decode_tok_s"]["mean"] / row["roofline"]["ceiling_tok_s"])
    assert (tmp_path / "remote.csv").read_text().count("\n") == 2


def test_remote_bench_of_a_bundle(sshd, smollm2_gguf, tmp_path):
    """A .tar.gz edge bundle is shipped whole and unpacked on the device."""
    url, options = sshd
    bundle = tmp_path / "edge.tar.gz"
    with tarfile.open(bundle, "w:gz", compresslevel=1) as tar:
        tar.add(smollm2_gguf, arcname=f"edge/{smollm2_gguf.name}")
        info = tarfile.TarInfo("edge/export.json")
        meta = json.dumps({"format": "gguf", "quant": "q4_1"}).encode()
        info.size = len(meta)
        tar.addfile(info, io.BytesIO(meta))
    proc = remote_bench(str(bundle), url, options, tmp_path / "bundle.json", tmp_path)
    assert proc.returncode == 0, proc.stderr
    row = json.loads((tmp_path / "bundle.json").read_text())
    assert (row["backend"], row["format"], row["quant"]) == ("llama.cpp", "gguf", "q4_1")
    assert "bench-bundle-" in row["model_path"]


def test_unreachable_device_is_one_line_error(smollm2_gguf, tmp_path):
    proc = remote_bench("pkg:smollm2-135m-instruct", f"ssh://nobody@127.0.0.1:{_free_port()}",
                        ["StrictHostKeyChecking=no"], tmp_path / "x.json", tmp_path)
    assert proc.returncode == 2 and proc.stderr.startswith("error: ssh ") and "Traceback" not in proc.stderr
    assert not (tmp_path / "x.json").exists()


@pytest.mark.parametrize("url", [
    "ssh://-oProxyCommand=touch${IFS}{marker}",
    "ssh://-oProxyCommand=touch${IFS}{marker}@127.0.0.1",
    "ssh://nobody@-oProxyCommand=touch${IFS}{marker}",
    "ssh://user:secret@127.0.0.1",
    "ssh://us er@127.0.0.1",
    "ssh://127.0.0.1/some/path",
])
def test_a_hostile_remote_url_never_reaches_ssh(tmp_path, url):
    """A host or user that ssh would read as an option (-oProxyCommand=… runs a command here) is refused in one
    line before ssh or scp runs."""
    marker = tmp_path / "pwned"  # a relative name: no "/" to end the URL's host part early; cwd is tmp_path
    proc = toolkit("bench", "pkg:smollm2-135m-instruct", "--remote", url.replace("{marker}", "pwned"), "--allow-busy",
                   "--out", str(tmp_path / "x.json"), cwd=tmp_path, timeout=120)
    assert proc.returncode == 2 and proc.stderr.startswith("error: --remote") and proc.stderr.count("\n") == 1, \
        proc.stderr
    assert "secret" not in proc.stderr and "Traceback" not in proc.stderr
    assert not marker.exists()


def test_ssh_and_scp_get_the_destination_after_a_double_dash(tmp_path, monkeypatch):
    from toolkit.eval import remote

    calls: list[list[str]] = []

    def fake_run(argv, **kwargs):
        calls.append(list(argv))
        return subprocess.CompletedProcess(argv, 0, stdout="/tmp/remote-dir\n", stderr="")

    monkeypatch.setattr(remote.subprocess, "run", fake_run)
    model = tmp_path / "-m.gguf"  # a file name that looks like an option, too
    model.write_bytes(b"GGUF")
    with remote.RemoteExecutor("ssh://pi@raspberrypi.local:2222", model, options=("IdentityFile=/k",)):
        pass
    assert [c[0] for c in calls] == ["ssh", "scp", "ssh"]
    for argv in calls:
        at = argv.index("--")
        assert all(not a.startswith("-") for a in argv[at + 1:] if a != str(model)), argv
        assert "pi@raspberrypi.local" in argv[at + 1] or argv[0] == "scp"
    scp = calls[1]
    assert scp.index("--") < scp.index(str(model)) and scp[-1] == "pi@raspberrypi.local:/tmp/remote-dir/"
