"""Rebuild a GGUF's SentencePiece-BPE tokenizer as llama.cpp runs it, where transformers would get it wrong.

For gemma2/gemma3 GGUFs transformers builds a Unigram tokenizer from the vocabulary's scores. The model was
trained with SentencePiece BPE, and llama.cpp tokenizes it that way: it merges the adjacent pair whose joined
piece has the highest score. Unigram segments the same text differently (1.5–3× more tokens on math problems),
so a student trained on those ids would be deployed, as a GGUF, on ids it never saw.

The rebuild here gives tokenizers' BPE every (left, right) split of each normal piece whose halves are pieces,
ranked by the joined piece's score, which is llama.cpp's merge order. User-defined pieces (runs of newlines,
spaces, tabs) are matched whole before merging, as llama.cpp does. tests/test_spm_tokenizer.py holds it to
llama.cpp's own ids.
"""
from __future__ import annotations

from pathlib import Path

from toolkit.core.errors import ModelError
from toolkit.core.gguf_header import DAMAGE, read_metadata

# GGUF architectures whose tokenizer transformers (4.57) converts to Unigram though the GGUF says BPE ("llama").
REBUILT_ARCHITECTURES = ("gemma2", "gemma3")

# tokenizer.ggml.token_type values (llama.cpp's llama_token_type)
_NORMAL, _CONTROL, _USER_DEFINED = 1, 3, 4
_GATE_KEYS = ("general.architecture", "tokenizer.ggml.model")


def needs_rebuild(path: Path) -> bool:
    """Whether this GGUF's tokenizer must be rebuilt; reads only the header keys it needs, in milliseconds."""
    try:
        found = read_metadata(path, lambda key: key in _GATE_KEYS, stop_after=len(_GATE_KEYS))
    except DAMAGE:  # a damaged header: check_gguf names it; transformers' is the fallback
        return False
    return found.get(_GATE_KEYS[0]) in REBUILT_ARCHITECTURES and found.get(_GATE_KEYS[1]) == "llama"


def read_tokenizer_meta(path: Path) -> dict:
    """The GGUF's general.architecture and tokenizer.ggml.* values (gguf's GGUFReader takes about 25 s over a
    262k-piece vocabulary here, as it maps every tensor too; this reads the header alone in about 1 s)."""
    try:
        return read_metadata(path, lambda key: key == "general.architecture" or key.startswith("tokenizer."))
    except DAMAGE as exc:
        raise ModelError(f"{path}: cannot read the GGUF's tokenizer ({exc})") from None


def _merges(tokens: list[str], types: list[int], scores: list[float], vocab: dict[str, int]) -> list[tuple[str, str]]:
    ranked = []
    for i, piece in enumerate(tokens):
        if types[i] != _NORMAL:
            continue
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in vocab and right in vocab:
                # a higher-scored joined piece merges first (llama.cpp's priority); equal scores keep vocab order
                ranked.append((-scores[i], i, cut, left, right))
    ranked.sort()
    return [(left, right) for *_, left, right in ranked]


def spm_bpe_tokenizer(meta: dict):
    """A transformers fast tokenizer that gives llama.cpp's ids for this SentencePiece-BPE vocabulary."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, processors
    from transformers import PreTrainedTokenizerFast

    tokens, types = meta["tokenizer.ggml.tokens"], meta["tokenizer.ggml.token_type"]
    scores = meta["tokenizer.ggml.scores"]
    vocab = {piece: i for i, piece in enumerate(tokens)}
    name = {key: tokens[meta[f"tokenizer.ggml.{key}_token_id"]] for key in ("bos", "eos", "unknown", "padding")
            if f"tokenizer.ggml.{key}_token_id" in meta}
    backend = Tokenizer(models.BPE(vocab, _merges(tokens, types, scores, vocab), unk_token=name.get("unknown"),
                                   fuse_unk=True, byte_fallback=True))
    # SentencePiece writes a space as "▁"; add_space_prefix adds one before the text, as llama.cpp does.
    prefix = [normalizers.Prepend("▁")] if meta.get("tokenizer.ggml.add_space_prefix", False) else []
    backend.normalizer = normalizers.Sequence(prefix + [normalizers.Replace(" ", "▁")])
    backend.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
                                        + ([decoders.Strip(" ", 1, 0)] if prefix else []))
    backend.add_special_tokens([AddedToken(tokens[i], normalized=False, special=True)
                                for i, kind in enumerate(types) if kind == _CONTROL])
    backend.add_tokens([AddedToken(tokens[i], normalized=False, special=False)
                        for i, kind in enumerate(types) if kind == _USER_DEFINED])
    bos = name.get("bos")
    if bos is not None and meta.get("tokenizer.ggml.add_bos_token", False):
        backend.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, vocab[bos])])
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=bos, eos_token=name.get("eos"),
                                  unk_token=name.get("unknown"), pad_token=name.get("padding"))
    if "tokenizer.chat_template" in meta:
        tok.chat_template = meta["tokenizer.chat_template"]
    return tok
