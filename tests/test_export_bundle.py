"""Edge bundles (export/bundle.py): checksummed, documented, and run by the bare runtime without the toolkit."""
from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import build_export_model
from toolkit.eval.safetar import safe_extract
from toolkit.export.config import ExportConfig
from toolkit.export.run import export_model


def _unpack(bundle: Path, into: Path) -> Path:
    safe_extract(bundle, into)  # the bench runner's member-checked unpacker (tar filters need Python >= 3.11.4)
    (folder,) = into.iterdir()
    for line in (folder / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split("  ")
        assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == digest, name
    readme = (folder / "README.md").read_text()
    assert "Raspberry Pi" in readme and "Termux" in readme and "Laptop" in readme
    runner = (folder / "run.py").read_text()
    assert "toolkit" not in runner.split('"""')[2]  # the runner imports only the runtime
    return folder


@pytest.mark.parametrize("fmt, quant", [("gguf", "q4_0"), ("genai", "int4")])
def test_bundle_runs_with_the_runtime_only(tmp_path, fmt, quant):
    src = build_export_model(tmp_path / "qwen2", "qwen2")
    m = export_model(str(src), tmp_path / "out", ExportConfig(format=fmt, quant=quant, threads=1, bundle=True))
    folder = _unpack(tmp_path / "out" / m["bundle"]["path"], tmp_path / "unpacked")
    args = ["--threads", "1"] if fmt == "gguf" else []
    # -I: isolated mode, so the toolkit checkout on sys.path cannot help the runner
    proc = subprocess.run([sys.executable, "-I", str(folder / "run.py"), "What is 2 plus 3?", "--max-tokens", "4",
                           *args], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip()
