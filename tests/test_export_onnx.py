"""optimum ONNX export (export/onnx.py): fp32, int8 and int4 load in onnxruntime and generate; int4 quantizes the
embedding and the (tied) head, is smaller than int8, and --int4-head-bits 4 shrinks the head of both ONNX formats."""
from __future__ import annotations

import pytest

from tests.conftest import build_export_model
from tests.export_fixtures import TEXT, exported, float_vocab_tables, head_bits, hf_ids
from toolkit.export.config import ExportConfig
from toolkit.export.run import export_model


@pytest.mark.parametrize("quant", ["fp32", "int8", "int4"])
def test_onnx(tiny_source, tmp_path, quant):
    import onnx
    import onnxruntime as ort
    import torch
    from optimum.onnxruntime import ORTModelForCausalLM

    out = tmp_path / "out"
    m = exported(tiny_source, out, "onnx", quant)
    if quant == "fp32":
        assert m["passed"] and m["parity"]["greedy"]["exact_sequences"] == 1.0
    names = {f["path"] for f in m["files"]}
    assert {"model.onnx", "config.json", "tokenizer.json"} <= names
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    session = ort.InferenceSession(str(out / "model.onnx"), so, providers=["CPUExecutionProvider"])
    assert "input_ids" in [i.name for i in session.get_inputs()]
    model = ORTModelForCausalLM.from_pretrained(out, session_options=so)
    ids = torch.tensor([hf_ids(tiny_source, TEXT)])
    assert model.generate(ids, max_new_tokens=3, do_sample=False).shape[1] == ids.shape[1] + 3
    graph = onnx.load(str(out / "model.onnx"))
    ops = {n.op_type for n in graph.graph.node}
    inits = {i.name: list(i.dims) for i in graph.graph.initializer}
    float_tables = float_vocab_tables(graph, tiny_source)
    if quant == "int4":  # embedding and (tied) LM head quantized too: no fp32 vocab-sized table left
        assert {"MatMulNBits", "GatherBlockQuantized"} <= ops and not float_tables, inits
        assert head_bits(out) == 8  # the LM head at 8 bits
    if quant == "int8":
        assert "MatMulInteger" in ops and not float_tables, inits


def test_onnx_int4_smaller_than_int8(tmp_path):
    """The tied embedding no longer stays fp32 in int4 (DESIGN: stock int4 was larger than int8)."""
    src = build_export_model(tmp_path / "qwen2", "qwen2")
    sizes = {q: export_model(str(src), tmp_path / q, ExportConfig(format="onnx", quant=q, threads=1))["total_bytes"]
             for q in ("int8", "int4")}
    assert sizes["int4"] < sizes["int8"], sizes


@pytest.mark.parametrize("fmt", ["genai", "onnx"])
def test_int4_head_bits_4_is_smaller(tmp_path, fmt):
    """--int4-head-bits 4 puts the head (and in genai a tied embedding) at 4 bits too: the smallest file."""
    src = build_export_model(tmp_path / "src", "qwen2")
    eight = export_model(str(src), tmp_path / "h8", ExportConfig(format=fmt, quant="int4", threads=1, max_new_tokens=2))
    four = export_model(str(src), tmp_path / "h4",
                        ExportConfig(format=fmt, quant="int4", threads=1, max_new_tokens=2, int4_head_bits=4))
    assert head_bits(tmp_path / "h8") == 8 and head_bits(tmp_path / "h4") == 4
    assert four["total_bytes"] < eight["total_bytes"]
    assert any("LM head at 4 bits" in n for n in four["notes"])
