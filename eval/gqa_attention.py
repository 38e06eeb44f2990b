"""Grouped-query attention without copying keys and values, for torch generation on CPU.

transformers' "sdpa" attention hands SDPA its grouped key/value heads natively (`enable_gqa`) only when there
is no attention mask; a left-padded batch has one, so every layer first copies each key/value head once per
query head it serves (`repeat_kv`) at every decoding step. Profiled on SmolLM2-135M (9 query heads, 3 key/value
heads), batch 20, 128 new tokens, 2 threads: those copies were 13% of generation time and the growing cache's
concatenation another 10% (bench/README.md, "Evaluation speed").

SDPA's CPU kernel takes the mask and the grouped heads together and its forward output is bitwise the same as
with the copies (tests/test_gqa_attention.py), so greedy answers do not change. Its backward sums the grouped
gradients in another order (differences of ~1e-6), so training keeps transformers' own path.
"""
from __future__ import annotations

from contextlib import contextmanager

NAME = "toolkit_sdpa_gqa"
_registered = False


def _sdpa_gqa(module, query, key, value, attention_mask, dropout: float = 0.0, scaling: float | None = None,
              is_causal: bool | None = None, **_):
    """An attention function for transformers' AttentionInterface: (batch, heads, q_len, head_dim) in, output as
    (batch, q_len, heads, head_dim) and no attention weights out, as the "sdpa" implementation returns them."""
    import torch

    if attention_mask is not None and attention_mask.ndim == 4:
        attention_mask = attention_mask[:, :, :, : key.shape[-2]]  # a static cache's mask is wider than the keys
    if is_causal is None:
        # Without a mask a multi-token query is the causal prefill; a single query token sees every key.
        is_causal = query.shape[2] > 1 and attention_mask is None and getattr(module, "is_causal", True)
    out = torch.nn.functional.scaled_dot_product_attention(
        query, key, value, attn_mask=attention_mask, dropout_p=dropout, scale=scaling, is_causal=is_causal,
        enable_gqa=query.shape[1] != key.shape[1])
    return out.transpose(1, 2).contiguous(), None


def _register() -> None:
    global _registered
    if _registered:
        return
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(NAME, _sdpa_gqa)
    # The mask in SDPA's format: an implementation missing from the mask registry gets no mask at all, and a
    # padded batch would attend to its padding.
    AttentionMaskInterface.register(NAME, sdpa_mask)
    _registered = True


def _grouped(config) -> bool:
    heads, kv = getattr(config, "num_attention_heads", None), getattr(config, "num_key_value_heads", None)
    return bool(heads and kv and kv < heads)


@contextmanager
def grouped_sdpa(model, enabled: bool = True):
    """Within the block, a transformers model on the "sdpa" implementation with grouped key/value heads attends
    through `_sdpa_gqa`; any other model (eager attention, full multi-head, an ONNX Runtime model) is left as it
    is. Restored on exit, so a model that trains afterwards trains on transformers' own attention."""
    config = getattr(model, "config", None)
    if (not enabled or not hasattr(model, "set_attn_implementation") or config is None
            or getattr(config, "_attn_implementation", None) != "sdpa" or not _grouped(config)):
        yield
        return
    _register()
    model.set_attn_implementation(NAME)
    try:
        yield
    finally:
        model.set_attn_implementation("sdpa")
