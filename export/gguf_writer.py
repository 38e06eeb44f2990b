"""HF llama/qwen2/gemma3 checkpoint → an f16 (or f32) GGUF: tensor-name mapping, hyperparameters, tokenizer metadata."""
from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
from gguf import GGUFWriter, LlamaFileType
from safetensors import safe_open

from toolkit.core.errors import ExportError
from toolkit.export.gguf_vocab import Entry
from toolkit.export.source import FAMILY

# HF parameter name (inside model.layers.N.) → GGUF tensor name (inside blk.N.).
_LAYER = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.q_proj.bias": "attn_q.bias",  # qwen2 only
    "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.bias": "attn_v.bias",
    "self_attn.o_proj.weight": "attn_output.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}
# gemma3's four norms per layer and its query/key norms (llama.cpp's gemma3 graph); its input_layernorm is attn_norm
# as above, but post_attention_layernorm follows the attention output, and pre_feedforward_layernorm is ffn_norm.
_GEMMA3_LAYER = {**_LAYER,
                 "post_attention_layernorm.weight": "post_attention_norm.weight",
                 "pre_feedforward_layernorm.weight": "ffn_norm.weight",
                 "post_feedforward_layernorm.weight": "post_ffw_norm.weight",
                 "self_attn.q_norm.weight": "attn_q_norm.weight",
                 "self_attn.k_norm.weight": "attn_k_norm.weight"}
_TOP = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
        "lm_head.weight": "output.weight"}
_LAYER_NAME = re.compile(r"^model\.layers\.(\d+)\.(.+)$")


def gguf_name(hf_name: str, arch: str = "llama") -> str | None:
    """The GGUF tensor name for an HF parameter of `arch` (GGUF's name); None for buffers llama.cpp recomputes
    (rotary inv_freq)."""
    if hf_name.endswith("rotary_emb.inv_freq"):
        return None
    if hf_name in _TOP:
        return _TOP[hf_name]
    layer = _GEMMA3_LAYER if arch == "gemma3" else _LAYER
    m = _LAYER_NAME.match(hf_name)
    if m and m.group(2) in layer:
        return f"blk.{m.group(1)}.{layer[m.group(2)]}"
    raise ExportError(f"tensor {hf_name} has no GGUF mapping (llama, qwen2 and gemma3 layouts only)")


def rope_interleave(w: np.ndarray, n_head: int) -> np.ndarray:
    """Reorder q/k rows from HF's rotate-half RoPE layout to llama.cpp's interleaved-pair layout (llama only).

    HF keeps each head's rotated pairs as (first half, second half); llama.cpp's `llama` arch rotates
    adjacent rows (0,1), (2,3)…, so within each head row j of half h moves to row 2j+h.
    """
    rows = w.shape[0]
    return w.reshape(n_head, 2, rows // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _hparams(writer, arch: str, cfg: dict, n_vocab: int) -> None:
    heads = cfg["num_attention_heads"]
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // heads
    scaling = cfg.get("rope_scaling")
    if scaling and scaling.get("rope_type", scaling.get("type")) not in (None, "default"):
        raise ExportError(f"rope_scaling {scaling} is not supported by the GGUF writer")
    writer.add_context_length(cfg["max_position_embeddings"])
    writer.add_embedding_length(cfg["hidden_size"])
    writer.add_block_count(cfg["num_hidden_layers"])
    writer.add_feed_forward_length(cfg["intermediate_size"])
    writer.add_head_count(heads)
    writer.add_head_count_kv(cfg.get("num_key_value_heads") or heads)
    writer.add_rope_freq_base(float(cfg.get("rope_theta", 10000.0)))
    writer.add_layer_norm_rms_eps(float(cfg["rms_norm_eps"]))
    writer.add_rope_dimension_count(head_dim)
    if head_dim != cfg["hidden_size"] // heads:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    writer.add_vocab_size(n_vocab)
    if cfg.get("sliding_window") and arch == "gemma3":  # gemma3: local layers' window, tokens
        writer.add_sliding_window(cfg["sliding_window"])
    if cfg.get("final_logit_softcapping") or cfg.get("attn_logit_softcapping"):
        raise ExportError("logit soft-capping (gemma2) is not supported by the GGUF writer")


def write_gguf(hf_dir: Path, out: Path, arch: str, cfg: dict, tokenizer: list[Entry], outtype: str = "f16") -> None:
    """Write `out` from the safetensors in `hf_dir`: 2-D weights in `outtype` (f16|f32), norms and biases f32."""
    # heavy optional runtime, imported on first use
    import torch

    if outtype not in ("f16", "f32"):
        raise ExportError(f"GGUF base type {outtype!r}: use f16 or f32 (other types are quantized from f16)")
    arch = FAMILY.get(arch, arch)
    heads, kv_heads = cfg["num_attention_heads"], cfg.get("num_key_value_heads") or cfg["num_attention_heads"]
    # gemma3 scales attention by query_pre_attn_scalar^-0.5; llama.cpp's gemma3 graph (below 27B) by head_dim^-0.5
    # and reads no such key. The query norm comes right before RoPE (linear), so the ratio folds into its weight.
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // heads
    q_scale = math.sqrt(head_dim / cfg.get("query_pre_attn_scalar", head_dim))
    tied = cfg.get("tie_word_embeddings", False)
    writer = GGUFWriter(str(out), arch)
    writer.add_name(cfg.get("_name_or_path") or hf_dir.name)
    writer.add_file_type(LlamaFileType.MOSTLY_F16 if outtype == "f16" else LlamaFileType.ALL_F32)
    n_vocab = cfg["vocab_size"]
    _hparams(writer, arch, cfg, n_vocab)
    for key, value, vtype, sub in tokenizer:
        writer.add_key_value(key, value, vtype, sub_type=sub)
    seen = set()
    for f in sorted(hf_dir.glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as st:
            for hf_name in st.keys():
                name = gguf_name(hf_name, arch)
                if name is None or (name == "output.weight" and tied):
                    continue  # tied: llama.cpp reuses token_embd for the output projection
                w = st.get_tensor(hf_name).to(torch.float32).numpy()
                if arch == "llama" and name.endswith(("attn_q.weight", "attn_k.weight")):
                    w = rope_interleave(w, heads if "attn_q" in name else kv_heads)
                if arch == "gemma3" and name.endswith("norm.weight"):
                    w = w + 1.0  # HF's Gemma RMSNorm scales by (1 + w); llama.cpp's by the stored weight
                    if name.endswith("attn_q_norm.weight"):
                        w = w * q_scale
                if w.ndim == 1 or outtype == "f32":
                    writer.add_tensor(name, np.ascontiguousarray(w, dtype=np.float32))
                else:
                    writer.add_tensor(name, np.ascontiguousarray(w, dtype=np.float16))
                seen.add(name)
    missing = {"token_embd.weight", "output_norm.weight"} - seen
    if missing:
        raise ExportError(f"{hf_dir}: weights lack {', '.join(sorted(missing))}")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
