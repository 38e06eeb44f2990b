"""`toolkit export` as a whole (export/run.py): requests refused before any work, a kill -9 mid-export that the
same command then finishes, and the CLI's JSON manifest and one-line errors."""
from __future__ import annotations

import json
import sys

import pytest
from pydantic import ValidationError

from tests.conftest import kill_when, toolkit
from toolkit.core.errors import ExportError
from toolkit.export.config import ExportConfig
from toolkit.export.run import export_model


def test_request_errors(tmp_path, tiny_model_dir):
    with pytest.raises(ExportError, match="--format onnx takes --quant fp32, int8, int4; got 'q4_k_m'"):
        export_model(str(tiny_model_dir), tmp_path / "a", ExportConfig(format="onnx", quant="q4_k_m"))
    with pytest.raises(ValidationError, match="Input should be 'onnx', 'genai' or 'gguf'"):
        ExportConfig(format="tflite", quant="int8")
    assert not (tmp_path / "a").exists()  # refused before anything was written
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    with pytest.raises(ExportError, match="not empty and holds no previous export"):
        export_model(str(tiny_model_dir), busy, ExportConfig(format="gguf", quant="f16"))
    assert (busy / "notes.txt").read_text() == "mine"
    with pytest.raises(ExportError, match="--bundle is for --format gguf or genai"):
        export_model(str(tiny_model_dir), tmp_path / "b", ExportConfig(format="onnx", quant="fp32", bundle=True))
    assert not (tmp_path / "b").exists()
    with pytest.raises(ExportError, match="--int4-head-bits is for --quant int4 of --format genai or onnx"):
        export_model(str(tiny_model_dir), tmp_path / "c", ExportConfig(format="gguf", quant="q4_0", int4_head_bits=4))
    with pytest.raises(ValidationError, match="Input should be 8 or 4"):
        ExportConfig(format="genai", quant="int4", int4_head_bits=6)
    assert not (tmp_path / "c").exists()


def test_kill_9_mid_export_then_the_same_command_finishes(tmp_path, tiny_model_dir):
    """A killed export leaves a folder marked incomplete and a scratch folder; running the same command
    again replaces the one and sweeps the other instead of refusing a non-empty folder."""
    out = tmp_path / "exports" / "gguf"
    cmd = [sys.executable, "-m", "toolkit.cli", "export", str(tiny_model_dir), "--format", "gguf", "--quant", "q8_0",
           "--out", str(out), "--threads", "1"]
    # killed while the source is being read into scratch
    kill_when(cmd, tmp_path, lambda: bool(list(out.parent.glob(".export-scratch-*/*"))), poll_s=0.05)
    assert (out / ".export-incomplete").is_file() and not (out / "export.json").exists()
    again = toolkit(*cmd[3:], cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert sorted(p.name for p in out.parent.iterdir()) == ["gguf"]  # the killed run's scratch is gone
    manifest = json.loads((out / "export.json").read_text())
    assert manifest["passed"] and not (out / ".export-incomplete").exists()
    assert [f["path"] for f in manifest["files"]] == ["model-q8_0.gguf", "prompt.json"]


def test_cli(tmp_path, tiny_model_dir):
    proc = toolkit("export", str(tiny_model_dir), "--format", "gguf", "--quant", "q8_0", "--out", str(tmp_path / "o"),
                   "--threads", "1", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads(proc.stdout)
    assert manifest == json.loads((tmp_path / "o" / "export.json").read_text())
    assert "llama_model_loader" not in proc.stderr and "llama_model_quantize" not in proc.stderr  # quantizer's log
    bad = toolkit("export", str(tmp_path / "nope"), "--format", "gguf", "--quant", "f16", "--out",
                  str(tmp_path / "o2"), cwd=tmp_path)
    assert bad.returncode == 2 and bad.stderr.startswith("error: model") and "Traceback" not in bad.stderr
