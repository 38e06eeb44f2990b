"""GGUF tokenizer metadata: carried over from a base GGUF, or built from a byte-level BPE tokenizer.json."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gguf import GGUFValueType

from toolkit.core.errors import ExportError
from toolkit.core.gguf_header import DAMAGE, read_typed_metadata

# One metadata entry: (key, value, value type, array element type or None), as GGUFWriter.add_key_value takes.
Entry = tuple[str, Any, Any, Any]

# Pre-tokenizer regexes llama.cpp knows by name (tokenizer.ggml.pre); the split pattern identifies them.
_QWEN2 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
          r"\s*[\r\n]+|\s+(?!\S)|\s+")
_LLAMA3 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
           r"\s*[\r\n]+|\s+(?!\S)|\s+")
_SPLIT_NAMES = {_QWEN2: "qwen2", _LLAMA3: "llama-bpe"}

# llama.cpp token types (llama_token_type): normal, control (special), user-defined (added, not special).
NORMAL, CONTROL, USER_DEFINED, UNUSED = 1, 3, 4, 5


def carried_metadata(base_gguf: Path, n_vocab: int) -> list[Entry]:
    """Every tokenizer.* key of `base_gguf`, with its stored types; refuses a vocabulary of another size."""
    try:
        found = read_typed_metadata(base_gguf, lambda key: key.startswith("tokenizer."))
    except DAMAGE as exc:
        raise ExportError(f"{base_gguf}: cannot read its tokenizer metadata ({exc})") from None
    entries: list[Entry] = [(key, value, GGUFValueType(vtype), None if sub is None else GGUFValueType(sub))
                            for key, (value, vtype, sub) in found.items()]
    tokens = next((v for k, v, _, _ in entries if k == "tokenizer.ggml.tokens"), None)
    if tokens is None:
        raise ExportError(f"{base_gguf}: has no tokenizer.ggml.tokens to carry over")
    if len(tokens) != n_vocab:
        raise ExportError(f"{base_gguf}: its vocabulary has {len(tokens)} tokens but the model's embedding has "
                          f"{n_vocab} rows; this GGUF is not the model's base")
    return entries


def _pre_name(pre: dict | None) -> str:
    """llama.cpp's name for a tokenizer.json pre-tokenizer, or an ExportError naming what was found."""
    if pre is None:
        raise ExportError("tokenizer.json has no pre-tokenizer; only byte-level BPE tokenizers are supported")
    if pre["type"] == "ByteLevel" and pre.get("use_regex", True):
        return "gpt-2"  # llama.cpp spells the GPT-2 pre-tokenizer with a hyphen
    if pre["type"] == "Sequence":
        kinds = [p["type"] for p in pre["pretokenizers"]]
        if kinds == ["Digits", "ByteLevel"] and pre["pretokenizers"][0].get("individual_digits"):
            return "smollm"  # SmolLM/SmolLM2: one digit per token, then the GPT-2 split
        if kinds == ["Split", "ByteLevel"]:
            pattern = pre["pretokenizers"][0]["pattern"].get("Regex")
            if pattern in _SPLIT_NAMES:
                return _SPLIT_NAMES[pattern]
        raise ExportError(f"tokenizer.json pre-tokenizer {kinds} is not one llama.cpp knows by name; "
                          "give the base GGUF with --tokenizer-gguf")
    raise ExportError(f"tokenizer.json pre-tokenizer {pre['type']} is not supported; "
                      "give the base GGUF with --tokenizer-gguf")


def built_metadata(hf_dir: Path, n_vocab: int) -> list[Entry]:
    """tokenizer.ggml.* for a byte-level BPE tokenizer.json (GPT-2 style, as SmolLM2 and Qwen2.5 use)."""
    # heavy optional runtime, imported on first use
    from transformers import AutoTokenizer

    try:
        spec = json.loads((hf_dir / "tokenizer.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ExportError(f"{hf_dir}: no readable tokenizer.json ({exc}); give the base GGUF with "
                          "--tokenizer-gguf") from None
    if spec["model"]["type"] != "BPE":
        raise ExportError(f"{hf_dir}: tokenizer model {spec['model']['type']} is not supported (byte-level BPE only)")
    tok = AutoTokenizer.from_pretrained(hf_dir)
    vocab = tok.get_vocab()
    if len(vocab) > n_vocab:
        raise ExportError(f"{hf_dir}: the tokenizer has {len(vocab)} tokens but the embedding only {n_vocab} rows")
    by_id = {i: t for t, i in vocab.items()}
    added = {a["content"]: a for a in spec.get("added_tokens", [])}
    tokens, types = [], []
    for i in range(n_vocab):
        if i not in by_id:  # embedding rows past the tokenizer (padded vocab): never produced
            tokens.append(f"[PAD{i}]")
            types.append(UNUSED)
            continue
        t = by_id[i]
        tokens.append(t)
        types.append(CONTROL if added.get(t, {}).get("special") else USER_DEFINED if t in added else NORMAL)
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"].get("merges", [])]
    ids = tok("a", add_special_tokens=True)["input_ids"]
    entries: list[Entry] = [
        ("tokenizer.ggml.model", "gpt2", GGUFValueType.STRING, None),
        ("tokenizer.ggml.pre", _pre_name(spec.get("pre_tokenizer")), GGUFValueType.STRING, None),
        ("tokenizer.ggml.tokens", tokens, GGUFValueType.ARRAY, GGUFValueType.STRING),
        ("tokenizer.ggml.token_type", types, GGUFValueType.ARRAY, GGUFValueType.INT32),
        ("tokenizer.ggml.merges", merges, GGUFValueType.ARRAY, GGUFValueType.STRING),
        ("tokenizer.ggml.add_bos_token", bool(tok.bos_token_id is not None and ids[:1] == [tok.bos_token_id]),
         GGUFValueType.BOOL, None),
    ]
    for name in ("bos", "eos", "unk", "pad"):
        token_id = getattr(tok, f"{name}_token_id")
        if token_id is not None:
            key = "padding" if name == "pad" else "unknown" if name == "unk" else name
            entries.append((f"tokenizer.ggml.{key}_token_id", int(token_id), GGUFValueType.UINT32, None))
    if tok.chat_template:
        entries.append(("tokenizer.chat_template", tok.chat_template, GGUFValueType.STRING, None))
    return entries
