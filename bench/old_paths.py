"""The training paths that toolkit.training.train replaced, kept here for the benches that compare against them.

The library trains one way. A bench variant that wants an older path enters `old_paths(...)`, which swaps it in
for the length of the block by patching the training module's names (train() looks each up when it runs):

- answer=False: the model's own forward and loss over every position (logits for batch x seq_len x vocab),
  the path before answer-only loss (issue 19);
- release=False: glibc's malloc left as it comes (no pinned mmap threshold during training);
- fused=False: AdamW's foreach path;
- chunk=None: the LM head over all answer tokens in one pass; an int: that many tokens per pass;
- embed=False: a tied embedding's gradient left to autograd (no EmbeddingGrad).
"""
from __future__ import annotations

from contextlib import contextmanager


def full_logits_loss(model, t: dict, inputs_embeds=None):
    """Sum of next-token cross-entropies over the answer tokens, from logits at every position."""
    import toolkit.training.train as train_module

    tokens = {"input_ids": t["input_ids"]} if inputs_embeds is None else {"inputs_embeds": inputs_embeds}
    logits = model(**tokens, attention_mask=t["attention_mask"], position_ids=t["position_ids"],
                   use_cache=False).logits
    return train_module._shifted_loss(logits, t["labels"])


@contextmanager
def old_paths(*, answer: bool = True, release: bool = True, fused: bool = True, chunk: int | None = 128,
              embed: bool = True):
    """Train with the chosen old paths inside the block; True / 128 everywhere is the library as it is."""
    import torch

    import toolkit.training.train as train_module

    class ForeachAdamW(torch.optim.AdamW):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **{**kwargs, "fused": False})

    class AutogradEmbedding(train_module.EmbeddingGrad):
        @classmethod
        def of(cls, model):
            return None

    swaps = [(train_module, "LOSS_CHUNK_TOKENS", 1 << 62 if chunk is None else chunk)]
    if not answer:
        swaps.append((train_module, "batch_loss", full_logits_loss))
    if not release:
        swaps += [(train_module, "pin_mmap_threshold", lambda: False),
                  (train_module, "unpin_mmap_threshold", lambda: None)]
    if not fused:
        swaps.append((torch.optim, "AdamW", ForeachAdamW))
    if not embed:
        swaps.append((train_module, "EmbeddingGrad", AutogradEmbedding))
    saved = [(owner, name, getattr(owner, name)) for owner, name, _ in swaps]
    try:
        for owner, name, value in swaps:
            setattr(owner, name, value)
        yield
    finally:
        for owner, name, value in saved:
            setattr(owner, name, value)
