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

import struct
from pathlib import Path

from toolkit.core.errors import ModelError

# GGUF architectures whose tokenizer transformers (4.57) converts to Unigram though the GGUF says BPE ("llama").
REBUILT_ARCHITECTURES = ("gemma2", "gemma3")

# tokenizer.ggml.token_type values (llama.cpp's llama_token_type)
_NORMAL, _CONTROL, _USER_DEFINED = 1, 3, 4


# GGUF value types: the struct format of each scalar type, and the codes of strings and arrays
_SCALAR = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9
_GATE_KEYS = ("general.architecture", "tokenizer.ggml.model")
_MAX_STRING = 1 << 20  # bytes; a header string longer than this is damage, not a name (and read() would allocate it)
_MAX_ITEMS = 1 << 22  # items of an array read or walked (the largest vocabularies hold about 262k)


def needs_rebuild(path: Path) -> bool:
    """Whether this GGUF's tokenizer must be rebuilt; reads only the header keys it needs, in milliseconds."""
    try:
        found = _read_header(path, lambda key: key in _GATE_KEYS, stop_after=len(_GATE_KEYS))
    except (OSError, ValueError, OverflowError):  # a damaged header: check_gguf names it; transformers' is the fallback
        return False
    return found.get(_GATE_KEYS[0]) in REBUILT_ARCHITECTURES and found.get(_GATE_KEYS[1]) == "llama"


def read_tokenizer_meta(path: Path) -> dict:
    """The GGUF's general.architecture and tokenizer.ggml.* values (gguf's GGUFReader takes about 25 s over a
    262k-piece vocabulary here, as it maps every tensor too; this reads the header alone in about 1 s)."""
    try:
        return _read_header(path, lambda key: key == "general.architecture" or key.startswith("tokenizer."))
    except (OSError, ValueError, OverflowError) as exc:
        raise ModelError(f"{path}: cannot read the GGUF's tokenizer ({exc})") from None


def _read_header(path: Path, wanted, stop_after: int | None = None) -> dict:
    """The values of the header keys for which `wanted(key)` holds, in file order (GGUF v2/v3)."""
    found: dict = {}
    with open(path, "rb") as f:
        def unpack(fmt: str, count: int = 1):
            layout = f"<{fmt * count}" if count < 8 else f"<{count}{fmt}"  # little-endian, unpadded
            raw = f.read(struct.calcsize(layout))
            if len(raw) < struct.calcsize(layout):
                raise ValueError("the GGUF header ends early")
            return struct.unpack(layout, raw)

        def string() -> str:
            size = unpack("Q")[0]
            if size > _MAX_STRING:
                raise ValueError(f"a GGUF header string of {size} bytes")
            raw = f.read(size)
            if len(raw) < size:
                raise ValueError("the GGUF header ends early")
            return raw.decode("utf-8", "replace")

        def value(kind: int, keep: bool):
            if kind == _STRING:
                return string()
            if kind in _SCALAR:
                return unpack(_SCALAR[kind])[0]
            if kind != _ARRAY:
                raise ValueError(f"unknown GGUF value type {kind}")
            item, count = unpack("IQ")
            if item == _ARRAY or count > _MAX_ITEMS:
                raise ValueError(f"a GGUF array of {count} items of type {item}")
            if item in _SCALAR and not keep:
                f.seek(struct.calcsize("<" + _SCALAR[item]) * count, 1)
                return None
            if item in _SCALAR:
                return list(unpack(_SCALAR[item], count))
            return [value(item, keep) for _ in range(count)]

        if f.read(4) != b"GGUF" or unpack("I")[0] < 2:
            return found
        _tensors, kv_count = unpack("QQ")
        for _ in range(kv_count):
            key = string()
            kind = unpack("I")[0]
            keep = wanted(key)
            got = value(kind, keep)
            if keep:
                found[key] = got
                if stop_after is not None and len(found) == stop_after:
                    break
    return found


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
