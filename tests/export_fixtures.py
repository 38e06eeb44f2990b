"""What the export tests share: one-thread exports checked as every manifest must be, tokenizer ids, ONNX graphs."""
from __future__ import annotations

import json
from pathlib import Path

from toolkit.export.config import ExportConfig
from toolkit.export.run import export_model

TEXT = "Tom has 1,080 apples; he eats 3/4 of them. How many are left?"


def hf_ids(model_dir: Path, text: str) -> list[int]:
    # heavy optional runtime, imported on first use
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)(text, add_special_tokens=False)["input_ids"]


def exported(source: Path, out: Path, fmt: str, quant: str) -> dict:
    """The manifest of a one-thread export of `source`, checked for what every export.json holds: an exact
    tokenizer round trip, hashed files and the prompt rule (also beside the model as prompt.json)."""
    m = export_model(str(source), out, ExportConfig(format=fmt, quant=quant, threads=1))
    assert m["format"] == fmt and m["quant"] == quant
    assert {"source", "files", "versions", "seconds", "parity", "prompt", "notes", "passed"} <= set(m)
    assert json.loads((Path(out) / "prompt.json").read_text()) == m["prompt"]
    assert m["parity"]["tokenizer"]["exact"], m["parity"]["tokenizer"]
    for f in m["files"]:
        assert f["bytes"] > 0 and len(f["sha256"]) == 64
    return m


def bits(node) -> int | None:
    return next((a.i for a in node.attribute if a.name == "bits"), None)


def head_bits(out: Path) -> int:
    """The bits of the LM head (the MatMulNBits that writes `logits`) in an ONNX or genai export."""
    import onnx

    graph = onnx.load(str(out / "model.onnx"), load_external_data=False).graph
    heads = [n for n in graph.node if "logits" in n.output and n.op_type == "MatMulNBits"]
    assert len(heads) == 1, [(n.name, n.op_type) for n in graph.node if "logits" in n.output]
    return bits(heads[0])


def float_vocab_tables(graph, source: Path) -> list[str]:
    """Names of the fp32 vocab × hidden(64) initializers left in an ONNX graph (block scales are vocab × 2,
    per-channel scales 1-D): an embedding or LM head the quantizer missed."""
    import onnx

    vocab = len(json.loads((source / "tokenizer.json").read_text())["model"]["vocab"])
    return [i.name for i in graph.graph.initializer
            if i.data_type == onnx.TensorProto.FLOAT and sorted(i.dims) == sorted([vocab, 64])]
