"""An edge bundle's run.py with the calculator: it ships calculator.py and needs nothing but the runtime."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import build_export_model
from tests.test_export_bundle import _unpack

from toolkit.export.config import ExportConfig
from toolkit.export.run import export_model

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("fmt, quant", [("gguf", "q8_0"), ("genai", "int4")])
def test_bundle_runner_forces_the_result_with_the_runtime_only(tmp_path, fmt, quant):
    src = build_export_model(tmp_path / "qwen2", "qwen2")
    m = export_model(str(src), tmp_path / "out", ExportConfig(format=fmt, quant=quant, threads=1, bundle=True))
    folder = _unpack(tmp_path / "out" / m["bundle"]["path"], tmp_path / "unpacked")
    assert (folder / "calculator.py").read_bytes() == (ROOT / "toolkit" / "data" / "calculator.py").read_bytes()
    args = ["--threads", "1"] if fmt == "gguf" else []

    def run(*extra: str) -> subprocess.CompletedProcess:
        # -I: isolated mode, so the toolkit checkout on sys.path cannot help the runner
        return subprocess.run([sys.executable, "-I", str(folder / "run.py"), "What is 12 * 3?", "--max-tokens", "6",
                               "--prefix", "He has 12 * 3 =", *args, *extra],
                              capture_output=True, text=True, timeout=300, cwd=tmp_path)

    on, off = run(), run("--no-calculator")
    assert on.returncode == 0 and off.returncode == 0, on.stderr + off.stderr
    assert on.stdout.startswith(" 36") and not on.stdout[3:4].isdigit(), on.stdout
    assert "calculator: 1 result(s) written" in on.stderr
    assert not off.stdout.startswith(" 36") and "calculator" not in off.stderr
    cut = run("--max-tokens", "1")  # the limit falls inside the result: it is still written whole
    assert cut.returncode == 0 and cut.stdout.rstrip("\n") == " 36", cut.stdout + cut.stderr
