"""Bytes a decode step reads, the bandwidth roofline they imply, and a model's format/quant/size.

Decoding one token reads every weight matrix once, so tokens/s ≤ memory bandwidth ÷ bytes read
per token. Embedding tables that are only gathered (one row per token) are left out; a table tied
to the output projection is read in full and counted. KV-cache reads are left out too: at the
few hundred positions benchmarked they are well under 1% of the weights of these models.
"""
from __future__ import annotations

import json
import math
import struct
from pathlib import Path

# ONNX TensorProto element types of 4 bits (INT4, UINT4, FLOAT4E2M1); the rest come from numpy.
_FOUR_BIT = {21, 22, 23}
# Ops that read one row per token of a table input: embedding lookups, and rotary cos/sin caches
# (an initializer feeding GroupQueryAttention is such a cache: its weights come through MatMuls).
_GATHERS = {"Gather", "GatherBlockQuantized", "RotaryEmbedding", "GroupQueryAttention"}


def ceiling_tok_s(mem_bw_gbps: float | None, bytes_per_token: int) -> float | None:
    """The decode ceiling in tokens/s, or None where the bandwidth is unknown."""
    if not mem_bw_gbps or bytes_per_token <= 0:
        return None
    return mem_bw_gbps * 1e9 / bytes_per_token


def folder_size(path: Path) -> int:
    """Bytes on disk of a file, or of every file under a folder (tokenizer and config included)."""
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def gguf_facts(path: Path) -> dict:
    from gguf import GGUFReader, LlamaFileType

    reader = GGUFReader(path)
    sizes = {t.name: int(t.n_bytes) for t in reader.tensors}
    tied = "output.weight" not in sizes
    read = sum(sizes.values()) - (0 if tied else sizes.get("token_embd.weight", 0))
    field = reader.fields.get("general.file_type")
    quant = "?"
    if field:  # MOSTLY_Q4_K_M -> q4_k_m, ALL_F32 -> f32
        quant = LlamaFileType(int(field.parts[field.data[0]][0])).name.removeprefix("MOSTLY_").removeprefix("ALL_")
        quant = quant.lower()
    return {"format": "gguf", "quant": quant, "bytes_per_token": read,
            "bytes_note": "all tensors; token_embd is the tied output matrix, read every step" if tied
            else "all tensors except token_embd (gathered, one row per token)"}


def _initializer_bytes(t) -> int:
    from onnx import helper

    n = math.prod(t.dims)
    if t.data_type in _FOUR_BIT:
        return (n + 1) // 2
    return n * helper.tensor_dtype_to_np_dtype(t.data_type).itemsize


def onnx_decoder_file(folder: Path) -> Path:
    """The decoder graph of an onnxruntime-genai folder (from its config) or of an optimum folder."""
    cfg = folder / "genai_config.json"
    if cfg.is_file():
        return folder / json.loads(cfg.read_text())["model"]["decoder"]["filename"]
    for name in ("model.onnx", "decoder_model_merged.onnx"):
        if (folder / name).is_file():
            return folder / name
    return max(folder.glob("*.onnx"), key=lambda p: p.stat().st_size)


def onnx_facts(folder: Path, fmt: str) -> dict:
    """Initializer bytes from the graph's shapes (external data is never loaded), minus gathered-only ones."""
    import onnx

    graph = onnx.load(str(onnx_decoder_file(folder)), load_external_data=False).graph
    users: dict[str, set[str]] = {}
    for node in graph.node:
        for name in node.input:
            users.setdefault(name, set()).add(node.op_type)
    read = gathered = 0
    for t in graph.initializer:
        size = _initializer_bytes(t)
        if users.get(t.name) and users[t.name] <= _GATHERS:
            gathered += size
        else:
            read += size
    ops = {n.op_type for n in graph.node}
    float_types = {t.data_type for t in graph.initializer if t.data_type in (1, 10, 16)}
    quant = ("int4" if "MatMulNBits" in ops else "int8" if ops & {"MatMulInteger", "DynamicQuantizeLinear"}
             else "fp16" if float_types == {10} else "fp32")
    return {"format": fmt, "quant": quant, "bytes_per_token": read,
            "bytes_note": f"ONNX initializers; {gathered} B only gathered by row (embedding, rotary tables) left out"}


def _safetensors_sizes(path: Path) -> dict[str, int]:
    with path.open("rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))  # little-endian u64 header length, then the JSON header
        header = json.loads(f.read(n))
    return {k: v["data_offsets"][1] - v["data_offsets"][0] for k, v in header.items() if k != "__metadata__"}


def hf_facts(folder: Path) -> dict:
    cfg = json.loads((folder / "config.json").read_text())
    sizes: dict[str, int] = {}
    for f in folder.glob("*.safetensors"):
        sizes.update(_safetensors_sizes(f))
    tied = cfg.get("tie_word_embeddings", True)
    embed = sum(v for k, v in sizes.items() if k.endswith("embed_tokens.weight"))
    read = sum(sizes.values()) - (0 if tied else embed) if sizes else folder_size(folder)
    return {"format": "hf", "quant": str(cfg.get("torch_dtype") or cfg.get("dtype") or "float32"),
            "bytes_per_token": read,
            "bytes_note": "safetensors weights; embed_tokens is the tied output matrix" if tied
            else "safetensors weights except embed_tokens (gathered)"}


def model_facts(backend: str, path: Path) -> dict:
    """format, quant, file_size_bytes and bytes_per_token (with how they were counted) of a detected model.

    An export.json beside the model (written by `toolkit export`) names format and quant authoritatively.
    """
    path = Path(path)
    if backend == "llama.cpp":
        facts = gguf_facts(path)
    elif backend in ("genai", "onnx"):
        facts = onnx_facts(path, backend)
    else:
        facts = hf_facts(path)
    for meta in (path / "export.json", path.parent / "export.json"):
        if meta.is_file():
            info = json.loads(meta.read_text())
            facts.update({k: info[k] for k in ("format", "quant") if k in info})
            break
    facts["file_size_bytes"] = folder_size(path)
    return facts
