"""Export sources (export/source.py): unsupported architectures and corrupt weights, configs and GGUFs are one
clear error each."""
from __future__ import annotations

import json
import shutil

import pytest

from tests.conftest import missing, one_line_error, toolkit
from toolkit.core.errors import ExportError, ModelError
from toolkit.export.config import ExportConfig
from toolkit.export.run import export_model


def test_unsupported_architecture_and_corrupt_inputs(tmp_path, tiny_model_dir):
    gpt2 = tmp_path / "gpt2"
    shutil.copytree(tiny_model_dir, gpt2)
    config = json.loads((gpt2 / "config.json").read_text())
    (gpt2 / "config.json").write_text(json.dumps({**config, "model_type": "gpt2"}))
    with pytest.raises(ExportError, match="--format gguf cannot take architecture 'gpt2' .*: our GGUF writer takes "
                                          "llama, qwen2"):
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


@pytest.mark.parametrize("fmt, quant, writer", [("genai", "int4", "the onnxruntime-genai export"),
                                                ("onnx", "int8", "the optimum ONNX export")])
def test_toolkit_export_refuses_an_architecture_its_format_cannot_take_in_one_line(tmp_path, gemma3_dir, fmt, quant,
                                                                                     writer):
    """A Gemma3ForCausalLM folder (model_type gemma3_text, as gemma-3-270m saves): each format's refusal names
    the format and the architecture, before any weight is read."""
    r = toolkit("export", str(gemma3_dir), "--format", fmt, "--quant", quant, "--out", str(tmp_path / "out"),
                "--threads", "1", cwd=tmp_path)
    one_line_error(r, f"--format {fmt} cannot take architecture 'gemma3_text'", f"{writer} takes llama, qwen2")
    assert not (tmp_path / "out").exists()  # refused before writing: no folder marked as a half-done export


def test_a_refusal_leaves_an_existing_empty_out_folder_empty(tmp_path, gemma3_dir):
    (tmp_path / "out").mkdir()
    with pytest.raises(ExportError, match="cannot take architecture"):
        export_model(str(gemma3_dir), tmp_path / "out", ExportConfig(format="genai", quant="int4"))
    assert list((tmp_path / "out").iterdir()) == []


def test_toolkit_export_refuses_the_packaged_gemma3_gguf_in_one_line(tmp_path):
    """The GGUF's general.architecture (gemma3) is refused by a format that cannot take it before the 268M weights
    are dequantized."""
    from toolkit.runtime.models import resolve_model

    try:
        resolve_model("pkg:gemma3-270m")  # joined into this test's cache, which the CLI below shares
    except ModelError as exc:
        if "not installed" not in str(exc):  # only a missing install skips
            raise
        missing(str(exc))
    r = toolkit("export", "pkg:gemma3-270m", "--format", "onnx", "--quant", "int8", "--out", str(tmp_path / "out"),
                cwd=tmp_path, timeout=60)
    one_line_error(r, "--format onnx cannot take architecture 'gemma3'", "gemma-3-270m-q4_k_m.gguf")


def test_a_gemma3_student_exports_to_gguf_as_llama_cpp_runs_it(tmp_path, gemma3_dir):
    """Gemma 3's norms (HF scales by 1 + w), query/key norms and query_pre_attn_scalar (256 here, against a head size
    of 16; llama.cpp's gemma3 graph scales by the head size and reads no such key, so the ratio is folded into the
    query norm): at f16 llama.cpp's greedy tokens are the source's."""
    manifest = export_model(str(gemma3_dir), tmp_path / "out", ExportConfig(format="gguf", quant="f16"))
    parity = manifest["parity"]
    assert parity["passed"] and parity["tokenizer"]["exact"] and parity["greedy"]["token_agreement"] == 1.0, parity
    assert manifest["source"]["architecture"] == "gemma3_text"
