"""Export sources (export/source.py): unsupported architectures and corrupt weights, configs and GGUFs are one
clear error each."""
from __future__ import annotations

import json
import shutil

import pytest

from toolkit.core.errors import ExportError, ModelError
from toolkit.export.config import ExportConfig
from toolkit.export.run import export_model


def test_unsupported_architecture_and_corrupt_inputs(tmp_path, tiny_model_dir):
    gpt2 = tmp_path / "gpt2"
    shutil.copytree(tiny_model_dir, gpt2)
    config = json.loads((gpt2 / "config.json").read_text())
    (gpt2 / "config.json").write_text(json.dumps({**config, "model_type": "gpt2"}))
    with pytest.raises(ExportError, match="'gpt2' is not supported for export; supported: llama, qwen2"):
        export_model(str(gpt2), tmp_path / "o1", ExportConfig(format="gguf", quant="f16"))

    truncated = tmp_path / "truncated"
    shutil.copytree(tiny_model_dir, truncated)
    weights = truncated / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ModelError, match="model.safetensors: weights file is corrupt or truncated"):
        export_model(str(truncated), tmp_path / "o2", ExportConfig(format="onnx", quant="fp32"))

    bad_config = tmp_path / "bad-config"
    shutil.copytree(tiny_model_dir, bad_config)
    (bad_config / "config.json").write_text("{not json")
    with pytest.raises(ModelError, match="cannot read the model config"):
        export_model(str(bad_config), tmp_path / "o3", ExportConfig(format="genai", quant="int4"))

    gguf = tmp_path / "half.gguf"
    gguf.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\x00" * 20)
    with pytest.raises(ModelError, match="not a readable GGUF file"):
        export_model(str(gguf), tmp_path / "o4", ExportConfig(format="gguf", quant="q8_0"))
