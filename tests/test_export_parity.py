"""Parity thresholds (export/parity.py): an export below them fails --check, its files kept and marked failed."""
from __future__ import annotations

import json

import pytest

from tests.conftest import build_export_model
from toolkit.core.errors import ExportError
from toolkit.export.config import ExportConfig
from toolkit.export.run import export_model


def test_check_thresholds_fail_but_keep_files(tmp_path):
    src = build_export_model(tmp_path / "llama", "llama")
    with pytest.raises(ExportError, match="files kept"):
        export_model(str(src), tmp_path / "out",
                     ExportConfig(format="gguf", quant="q8_0", threads=1, check=True, min_token_agreement=1.01))
    saved = json.loads((tmp_path / "out" / "export.json").read_text())
    assert saved["passed"] is False and saved["parity"]["thresholds"]["min_token_agreement"] == 1.01
    assert (tmp_path / "out" / "model-q8_0.gguf").stat().st_size == saved["files"][0]["bytes"]
