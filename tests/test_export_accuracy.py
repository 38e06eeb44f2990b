"""The accuracy an export keeps (export/accuracy.py): source and export scored on the same math problems."""
from __future__ import annotations

import json

import pytest

from tests.conftest import build_export_model
from toolkit.core.errors import ExportError
from toolkit.export.config import ExportConfig
from toolkit.export.run import export_model


def test_accuracy_delta_on_a_math_suite(tmp_path, data_root):
    """export.json carries the source's and the export's accuracy on the same problems; an fp32 ONNX
    export answers exactly like its torch source, and --check enforces the allowed drop."""
    src = build_export_model(tmp_path / "llama", "llama")
    m = export_model(str(src), tmp_path / "out", ExportConfig(format="onnx", quant="fp32", threads=1,
                                                              eval_suite="multiarith", eval_limit=4,
                                                              data_root=str(data_root)))
    acc = json.loads((tmp_path / "out" / "export.json").read_text())["parity"]["accuracy"]
    assert acc == m["parity"]["accuracy"]
    assert acc["suite"] == "multiarith" and acc["n"] == 4 and acc["same_output"] == 1.0
    assert acc["source"] == acc["export"] and acc["delta_points"] == {"strict_match": 0.0, "flexible_extract": 0.0}
    assert acc["passed"] and m["passed"]
    with pytest.raises(ExportError, match=r"strict accuracy \+0.0 points on 4 multiarith problems, allowed drop -1"):
        export_model(str(src), tmp_path / "out", ExportConfig(format="onnx", quant="fp32", threads=1,
                                                              eval_suite="multiarith", eval_limit=4,
                                                              data_root=str(data_root), max_accuracy_drop=-1,
                                                              check=True))
    kept = json.loads((tmp_path / "out" / "export.json").read_text())
    assert kept["passed"] is False and (tmp_path / "out" / "model.onnx").is_file()
    with pytest.raises(ExportError, match="--eval-suite 'mnist': choose one of gsm8k"):
        export_model(str(src), tmp_path / "o2",
                     ExportConfig(format="onnx", quant="fp32", eval_suite="mnist", data_root=str(data_root)))
    assert not (tmp_path / "o2").exists()  # refused before any export work
