"""The gemma3 student's tokenizer gives llama.cpp's ids: transformers' own (Unigram) conversion of the GGUF does not,
so a gemma3 student would train on a segmentation it was never pretrained on (toolkit/runtime/spm_tokenizer.py)."""
from __future__ import annotations

import json
import struct

from tests.conftest import missing
from toolkit.core.errors import ModelError
from toolkit.runtime.spm_tokenizer import needs_rebuild

# What a math rationale holds beside plain words: runs of spaces, newlines and tabs (user-defined pieces in the
# gemma vocabulary), digits, symbols, non-ASCII text that falls back to bytes, and a control token's text.
EDGES = ["Tom has  3 apples.\n\nHe eats 1.", "  leading spaces", "tab\there\t\t", "emoji 🙂 ünïcode ½ ٣",
         "12345678 + 0.25 = ?", "  \n  \n\n\n  x", "<start_of_turn>user\nhi<end_of_turn>", "x" * 60, ""]


def _gemma3():
    from toolkit.runtime.models import resolve_model

    try:
        return resolve_model("pkg:gemma3-270m")
    except ModelError as exc:
        if "not installed" not in str(exc):
            raise
        missing(str(exc))


def test_the_gemma3_tokenizer_gives_llama_cpps_ids_and_reloads_from_its_saved_folder(tmp_path, data_root):
    from llama_cpp import Llama
    from transformers import AutoTokenizer

    from toolkit.runtime.loading import load_tokenizer

    ref = _gemma3()
    assert needs_rebuild(ref.path)
    tok = load_tokenizer(ref)
    vocab = Llama(str(ref.path), vocab_only=True, verbose=False)
    texts = list(EDGES)
    with open(data_root / "gsm8k" / "train.jsonl") as f:
        for line, _ in zip(f, range(300)):
            row = json.loads(line)
            texts += [row["question"], row["answer"]]
    # with the GGUF's BOS, and special-token text parsed as tokens, as the toolkit's llama.cpp backends complete
    differ = [t for t in texts if tok(t).input_ids != vocab.tokenize(t.encode(), add_bos=True, special=True)]
    assert differ == [], f"{len(differ)} of {len(texts)} texts tokenize differently, e.g. {differ[0][:80]!r}"
    assert tok.decode(tok(EDGES[3], add_special_tokens=False).input_ids) == EDGES[3]
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == ("<bos>", "<eos>", "<pad>")

    tok.save_pretrained(tmp_path / "student")  # a student folder's tokenizer is this one, reloaded by transformers
    again = AutoTokenizer.from_pretrained(tmp_path / "student")
    assert all(again(t).input_ids == tok(t).input_ids for t in texts[:60])


def _header(*kvs: bytes, count: int | None = None) -> bytes:
    return b"GGUF" + struct.pack("<IQQ", 3, 0, len(kvs) if count is None else count) + b"".join(kvs)


def _string(s: bytes) -> bytes:
    return struct.pack("<Q", len(s)) + s


def _kv_string(key: bytes, value: bytes) -> bytes:
    return _string(key) + struct.pack("<I", 8) + _string(value)


def test_the_header_gate_reads_the_two_keys_and_takes_damaged_headers_as_no(tmp_path):
    """Only gemma2/gemma3 with a SentencePiece vocabulary are rebuilt; the gate reads the header itself, so a
    hostile one (huge lengths, endless arrays, cut short) is a quick False, not a hang or a huge allocation."""
    def gate(data: bytes) -> bool:
        path = tmp_path / "m.gguf"
        path.write_bytes(data)
        return needs_rebuild(path)

    tokens = _string(b"tokenizer.ggml.tokens") + struct.pack("<IIQ", 9, 8, 2) + _string(b"a") + _string(b"b")
    def arch_and_model(arch: bytes, model: bytes, *between: bytes) -> bytes:
        return _header(_kv_string(b"general.architecture", arch), *between, _kv_string(b"tokenizer.ggml.model", model))

    assert gate(arch_and_model(b"gemma3", b"llama", tokens)) and gate(arch_and_model(b"gemma2", b"llama"))
    assert not gate(arch_and_model(b"gemma3", b"gpt2")) and not gate(arch_and_model(b"llama", b"llama"))
    hostile = [
        _header(struct.pack("<Q", 1 << 62) + b"x"),  # a key claiming 4 EiB
        _header(_string(b"k") + struct.pack("<IIQ", 9, 8, 1 << 40)),  # a string array of 2**40 items
        _header(_string(b"k") + struct.pack("<IIQ", 9, 9, 5)),  # an array of arrays
        _header(_string(b"k") + struct.pack("<IIQ", 9, 4, 1 << 62)),  # a scalar array past any file's end
        _header(_kv_string(b"general.architecture", b"gemma3"), count=1 << 40),  # cut short
        b"GGUF\x03",
        b"not a gguf at all",
    ]
    assert [gate(data) for data in hostile] == [False] * len(hostile)
