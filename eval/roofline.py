"""Bytes a decode step reads, the bandwidth roofline they imply, and a model's format/quant/size.

Decoding one token reads every weight matrix once and the KV cache of every earlier position, so
tokens/s ≤ read bandwidth ÷ bytes read per token. Embedding tables that are only gathered (one row
per token) are left out; a table tied to the output projection is read in full and counted. Every
byte counted must be read, so the ceiling is an upper bound: a decode speed above it is a
measurement error (a wrong bandwidth or byte count), never a result.
"""
from __future__ import annotations

import json
import math
import struct
from pathlib import Path

from gguf import LlamaFileType

from toolkit.core.errors import ModelError
from toolkit.core.gguf_header import DAMAGE, read_tensors

# ONNX TensorProto element types of 4 bits (INT4, UINT4, FLOAT4E2M1); the rest come from numpy.
_FOUR_BIT = {21, 22, 23}
# Ops that read one row per token of a table input: embedding lookups, and rotary cos/sin caches
# (an initializer feeding GroupQueryAttention is such a cache: its weights come through MatMuls).
_GATHERS = {"Gather", "GatherBlockQuantized", "RotaryEmbedding", "GroupQueryAttention"}


def ceiling_tok_s(mem_bw_gbps: float | None, bytes_per_token: float) -> float | None:
    """The decode ceiling in tokens/s, or None where the bandwidth is unknown."""
    if not mem_bw_gbps or bytes_per_token <= 0:
        return None
    return mem_bw_gbps * 1e9 / bytes_per_token


def mean_context(prompt_tokens: int, gen_tokens: int) -> float:
    """Positions a timed decode step attends to, averaged over the steps: step i (0-based) runs the token at
    position prompt_tokens + i and reads the keys and values of prompt_tokens + i + 1 positions (its own included)."""
    return prompt_tokens + (gen_tokens + 1) / 2


def roofline(facts: dict, mem_bw_gbps: float | None, decode_tok_s: float, prompt_tokens: int,
             gen_tokens: int) -> dict:
    """The roofline block of a Bench JSON row: bytes per token (weights + KV cache at the run's mean context),
    the ceiling at the probed bandwidth, and the ratio, with `above_ceiling` set when the ratio exceeds 1."""
    context = mean_context(prompt_tokens, gen_tokens)
    kv = facts["kv_bytes_per_position"] * context
    per_token = facts["weight_bytes"] + kv
    ceiling = ceiling_tok_s(mem_bw_gbps, per_token)
    ratio = decode_tok_s / ceiling if ceiling else None
    return {"bytes_per_token": round(per_token), "weight_bytes": facts["weight_bytes"],
            "kv_bytes_per_position": facts["kv_bytes_per_position"], "kv_context": context,
            "kv_bytes_per_token": round(kv), "bytes_note": f"{facts['bytes_note']}; KV cache: {facts['kv_note']}",
            "mem_bw_GBps": mem_bw_gbps, "ceiling_tok_s": ceiling, "ratio": ratio,
            "above_ceiling": ratio is not None and ratio > 1.0}


def ratio_text(roof: dict) -> str:
    """The ratio for a table: a percentage, or a measurement-error flag when decode beat its ceiling."""
    ratio = roof.get("ratio")
    if ratio is None:
        return "–"
    return f"{ratio:.0%}" if ratio <= 1.0 else f"⚠ {ratio:.2f}× ceiling: measurement error"


def folder_size(path: Path) -> int:
    """Bytes on disk of a file, or of every file under a folder (tokenizer and config included)."""
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def gguf_facts(path: Path) -> dict:
    try:
        meta, tensors = read_tensors(path, lambda key: key == "general.file_type" or key == "general.architecture"
                                     or key.endswith((".block_count", ".head_count", ".head_count_kv", ".key_length",
                                                      ".value_length", ".embedding_length")))
        kv_per_position, kv_note = _gguf_kv(meta)
    except (*DAMAGE, KeyError, IndexError, TypeError) as exc:
        raise ModelError(f"{path}: cannot read the GGUF's header ({type(exc).__name__}: {exc})") from None
    sizes = {t.name: t.n_bytes for t in tensors}
    tied = "output.weight" not in sizes
    read = sum(sizes.values()) - (0 if tied else sizes.get("token_embd.weight", 0))
    quant = "?"
    if isinstance(meta.get("general.file_type"), int):  # MOSTLY_Q4_K_M -> q4_k_m, ALL_F32 -> f32
        try:
            quant = LlamaFileType(meta["general.file_type"]).name.removeprefix("MOSTLY_").removeprefix("ALL_").lower()
        except ValueError:
            pass
    return {"format": "gguf", "quant": quant, "weight_bytes": read,
            "bytes_note": "all tensors; token_embd is the tied output matrix, read every step" if tied
            else "all tensors except token_embd (gathered, one row per token)",
            "kv_bytes_per_position": kv_per_position, "kv_note": kv_note}


def _gguf_ints(meta: dict, key: str) -> list[int]:
    """An integer metadata value as a list (one element, or one per layer), [] when absent."""
    value = meta.get(key)
    if value is None:
        return []
    return [int(v) for v in value] if isinstance(value, list) else [int(value)]


def _gguf_kv(meta: dict) -> tuple[int, str]:
    """KV-cache bytes per position: per layer, KV heads × (key + value length) × 2 B (llama.cpp's f16 cache,
    the default that bench_runner keeps)."""
    arch = meta["general.architecture"]
    layers = _gguf_ints(meta, f"{arch}.block_count")[0]
    heads = _gguf_ints(meta, f"{arch}.attention.head_count")
    kv_heads = _gguf_ints(meta, f"{arch}.attention.head_count_kv") or heads
    if len(kv_heads) != layers:
        kv_heads = kv_heads[:1] * layers
    key = (_gguf_ints(meta, f"{arch}.attention.key_length")
           or [_gguf_ints(meta, f"{arch}.embedding_length")[0] // heads[0]])[0]
    value = (_gguf_ints(meta, f"{arch}.attention.value_length") or [key])[0]
    note = f"{layers} layers × {kv_heads[0]} KV heads × ({key} + {value}) × 2 B (f16)"
    return sum(kv_heads) * (key + value) * 2, note


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
    kv_per_position, kv_note = _onnx_kv(graph)
    ops = {n.op_type for n in graph.node}
    float_types = {t.data_type for t in graph.initializer if t.data_type in (1, 10, 16)}
    quant = ("int4" if "MatMulNBits" in ops else "int8" if ops & {"MatMulInteger", "DynamicQuantizeLinear"}
             else "fp16" if float_types == {10} else "fp32")
    return {"format": fmt, "quant": quant, "weight_bytes": read,
            "bytes_note": f"ONNX initializers; {gathered} B only gathered by row (embedding, rotary tables) left out",
            "kv_bytes_per_position": kv_per_position, "kv_note": kv_note}


def _onnx_kv(graph) -> tuple[int, str]:
    """KV-cache bytes per position from the graph's past_key_values inputs, (batch, heads, sequence, head size)
    each, in their element type."""
    from onnx import helper

    total, dims = 0, set()
    for inp in graph.input:
        if inp.name.startswith("past_key_values"):
            t = inp.type.tensor_type
            heads, size = (d.dim_value for d in (t.shape.dim[1], t.shape.dim[3]))
            itemsize = helper.tensor_dtype_to_np_dtype(t.elem_type).itemsize
            total += heads * size * itemsize
            dims.add(f"{heads} heads × {size} × {itemsize} B")
    return total, f"past_key_values inputs ({', '.join(sorted(dims)) or 'none'})"


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
    heads = cfg["num_attention_heads"]
    kv_heads = cfg.get("num_key_value_heads") or heads
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // heads
    layers = cfg["num_hidden_layers"]
    return {"format": "hf", "quant": str(cfg.get("torch_dtype") or cfg.get("dtype") or "float32"),
            "weight_bytes": read,
            "bytes_note": "safetensors weights; embed_tokens is the tied output matrix" if tied
            else "safetensors weights except embed_tokens (gathered)",
            # bench_runner runs torch in float32: 4 B per cached element
            "kv_bytes_per_position": layers * 2 * kv_heads * head_dim * 4,
            "kv_note": f"{layers} layers × 2 × {kv_heads} KV heads × {head_dim} × 4 B (float32)"}


def model_facts(backend: str, path: Path) -> dict:
    """format, quant, file_size_bytes, weight_bytes read per step and kv_bytes_per_position (with how each was
    counted) of a detected model.

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
