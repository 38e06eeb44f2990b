"""The GGUF header reader (toolkit/core/gguf_header.py): the tensor table's end agrees with gguf's GGUFReader on
files gguf writes, a cut file is refused by name, and hostile tables are one ModelError, not a hang."""
from __future__ import annotations

import struct

import numpy as np
import pytest
from gguf import GGMLQuantizationType, GGUFReader, GGUFWriter

from export.source import gguf_architecture
from toolkit.core.errors import ModelError
from toolkit.core.gguf_header import read_metadata, read_typed_metadata, tensor_data_end
from toolkit.core.integrity import check_gguf


def _write(path, alignment: int | None = None):
    writer = GGUFWriter(path, "llama")
    if alignment is not None:
        writer.add_custom_alignment(alignment)
    writer.add_string("tokenizer.ggml.model", "gpt2")
    writer.add_array("tokenizer.ggml.tokens", ["a", "b", "ab"])
    writer.add_tensor("w", np.arange(15, dtype=np.float32).reshape(3, 5))
    # a quantized tensor: two rows of one Q8_0 block each (32 weights in 34 bytes)
    writer.add_tensor("q", np.zeros((2, 34), dtype=np.uint8), raw_dtype=GGMLQuantizationType.Q8_0)
    writer.add_tensor("b", np.ones(7, dtype=np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.mark.parametrize("alignment", [None, 64, 256])
def test_the_tensor_table_ends_where_gguf_says(tmp_path, alignment):
    path = tmp_path / "m.gguf"
    _write(path, alignment)
    reader = GGUFReader(path)
    expected = max(t.data_offset + int(t.n_bytes) for t in reader.tensors)
    assert tensor_data_end(path) == expected
    check_gguf(path)
    assert gguf_architecture(path) == "llama"
    assert read_metadata(path, lambda key: key.startswith("tokenizer."))["tokenizer.ggml.tokens"] == ["a", "b", "ab"]
    typed = read_typed_metadata(path, lambda key: key.startswith(("tokenizer.", "general.arch")))
    assert typed == {"general.architecture": ("llama", 8, None), "tokenizer.ggml.model": ("gpt2", 8, None),
                     "tokenizer.ggml.tokens": (["a", "b", "ab"], 9, 8)}  # string 8, array 9 of strings

    cut = tmp_path / "cut.gguf"
    cut.write_bytes(path.read_bytes()[:expected - 1])  # the writer pads after the last tensor
    with pytest.raises(ModelError, match=f"truncated GGUF: its tensors need {expected} bytes"):
        check_gguf(cut)


def _table(*tensors: bytes, kvs: bytes = b"", kv_count: int = 0, count: int | None = None) -> bytes:
    return b"GGUF" + struct.pack("<IQQ", 3, len(tensors) if count is None else count, kv_count) + kvs + b"".join(
        tensors)


def _tensor(n_dims: int, kind: int, dims: tuple[int, ...] = (4,), offset: int = 0) -> bytes:
    return struct.pack("<Q", 1) + b"t" + struct.pack("<I", n_dims) + struct.pack(f"<{len(dims)}Q", *dims) + \
        struct.pack("<IQ", kind, offset)


@pytest.mark.parametrize("data, why", [
    (_table(count=1 << 40), "table of"),  # 2**40 tensors claimed
    (_table(_tensor(9, 0, dims=(1,) * 9)), "9 dimensions"),
    (_table(_tensor(1, 999)), "unknown ggml tensor type 999"),
    (_table(_tensor(1, 0), count=2), "ends early"),
    (_table(kvs=struct.pack("<Q", 17) + b"general.alignment" + struct.pack("<II", 4, 0), kv_count=1),
     "general.alignment 0"),
    (b"GGUF\x01\x00\x00\x00", "not a GGUF file of version 2"),
])
def test_a_hostile_tensor_table_is_one_model_error(tmp_path, data, why):
    path = tmp_path / "h.gguf"
    path.write_bytes(data)
    with pytest.raises(ModelError, match=f"truncated or corrupt GGUF .*{why}"):
        check_gguf(path)


def test_a_huge_claimed_tensor_is_a_truncated_file(tmp_path):
    """Sizes are Python ints: a tensor of 2**63 elements is a file too short, not an overflow."""
    path = tmp_path / "h.gguf"
    path.write_bytes(_table(_tensor(2, 0, dims=(1 << 62, 1 << 62))))
    with pytest.raises(ModelError, match="truncated GGUF: its tensors need"):
        check_gguf(path)


def test_an_export_refuses_a_gguf_without_an_architecture(tmp_path):
    path = tmp_path / "a.gguf"
    path.write_bytes(_table())
    with pytest.raises(ModelError, match="no general.architecture"):
        gguf_architecture(path)
