"""Read a GGUF's header (metadata and tensor table) without mapping its tensors.

gguf's GGUFReader builds a numpy view of every field and tensor: 7 s for SmolLM2-135M's file here and 18 s for
Qwen2.5-0.5B's, each time a model is checked or an export asks its architecture. Reading the header's bytes
sequentially takes well under a second. The file is untrusted (a download, a bundle from elsewhere): every length
and count is bounded, so a hostile header is a quick ValueError, not a hang or a huge allocation.
"""
from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable

from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

# GGUF value types: the struct format of each scalar type, and the codes of strings and arrays
_SCALAR = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9
_MAX_STRING = 1 << 20  # bytes; a header string longer than this is damage, not a name (and read() would allocate it)
_MAX_ITEMS = 1 << 22  # items of an array read or walked (the largest vocabularies hold about 262k)
_MAX_DIMS = 4  # ggml's GGML_MAX_DIMS
_DEFAULT_ALIGNMENT = 32  # bytes; tensor data starts at this alignment unless general.alignment says otherwise

DAMAGE = (OSError, ValueError, OverflowError)  # what reading a damaged or hostile header raises


class _Header:
    """Sequential, bounded reads of one open GGUF file (little-endian, GGUF v2/v3)."""

    def __init__(self, f: BinaryIO):
        self.f = f
        self.types: dict[str, tuple[int, int | None]] = {}  # key -> (value type, array item type), kept keys
        self.item: int | None = None  # the item type of the last array value() read

    def unpack(self, fmt: str, count: int = 1) -> tuple:
        layout = f"<{fmt * count}" if count < 8 else f"<{count}{fmt}"  # unpadded
        raw = self.f.read(struct.calcsize(layout))
        if len(raw) < struct.calcsize(layout):
            raise ValueError("the GGUF header ends early")
        return struct.unpack(layout, raw)

    def string(self) -> str:
        size = self.unpack("Q")[0]
        if size > _MAX_STRING:
            raise ValueError(f"a GGUF header string of {size} bytes")
        raw = self.f.read(size)
        if len(raw) < size:
            raise ValueError("the GGUF header ends early")
        return raw.decode("utf-8", "replace")

    def value(self, kind: int, keep: bool):
        """One metadata value; an unkept scalar array is skipped without being read."""
        if kind == _STRING:
            return self.string()
        if kind in _SCALAR:
            return self.unpack(_SCALAR[kind])[0]
        if kind != _ARRAY:
            raise ValueError(f"unknown GGUF value type {kind}")
        item, count = self.unpack("IQ")
        self.item = item
        if item == _ARRAY or count > _MAX_ITEMS:
            raise ValueError(f"a GGUF array of {count} items of type {item}")
        if item in _SCALAR and not keep:
            self.f.seek(struct.calcsize("<" + _SCALAR[item]) * count, 1)
            return None
        if item in _SCALAR:
            return list(self.unpack(_SCALAR[item], count))
        return [self.value(item, keep) for _ in range(count)]

    def start(self) -> tuple[int, int] | None:
        """(tensor count, metadata count), or None when the file is not a GGUF of version 2 or later."""
        if self.f.read(4) != b"GGUF" or self.unpack("I")[0] < 2:
            return None
        return self.unpack("QQ")

    def metadata(self, count: int, wanted: Callable[[str], bool], stop_after: int | None) -> dict:
        found: dict = {}
        for _ in range(count):
            key = self.string()
            kind = self.unpack("I")[0]
            keep = wanted(key)
            got = self.value(kind, keep)
            if keep:
                found[key] = got
                self.types[key] = (kind, self.item if kind == _ARRAY else None)  # arrays do not nest
                if stop_after is not None and len(found) == stop_after:
                    break
        return found


def _read_metadata(path: Path, wanted: Callable[[str], bool], stop_after: int | None) -> tuple[dict, dict]:
    """(values, types) of the metadata keys of `path` for which `wanted(key)` holds; both {} for a non-GGUF."""
    with open(path, "rb") as f:
        header = _Header(f)
        counts = header.start()
        return ({} if counts is None else header.metadata(counts[1], wanted, stop_after)), header.types


def read_metadata(path: Path, wanted: Callable[[str], bool], stop_after: int | None = None) -> dict:
    """The values of the metadata keys for which `wanted(key)` holds, in file order; {} for a file that is not a
    GGUF. Raises one of DAMAGE for a damaged or hostile header."""
    return _read_metadata(path, wanted, stop_after)[0]


def read_typed_metadata(path: Path, wanted: Callable[[str], bool]) -> dict[str, tuple[object, int, int | None]]:
    """key -> (value, GGUF value type, array item type or None) for the metadata keys for which `wanted(key)` holds,
    in file order: what a writer needs to copy them. Raises one of DAMAGE for a damaged or hostile header."""
    found, types = _read_metadata(path, wanted, None)
    return {key: (value, *types[key]) for key, value in found.items()}


@dataclass(frozen=True)
class TensorInfo:
    """One entry of the tensor table. shape: as GGUF lists it, the row length (columns) first; offset: bytes from
    the start of the file; ggml_type: gguf's GGMLQuantizationType."""

    name: str
    shape: tuple[int, ...]
    ggml_type: GGMLQuantizationType
    offset: int
    n_bytes: int


def read_tensors(path: Path, wanted: Callable[[str], bool] = lambda key: False) -> tuple[dict, list[TensorInfo]]:
    """(the metadata keys for which `wanted(key)` holds, the tensor table). Raises ValueError for a file that is
    not a GGUF, and one of DAMAGE for a damaged header or tensor table."""
    with open(path, "rb") as f:
        header = _Header(f)
        counts = header.start()
        if counts is None:
            raise ValueError("not a GGUF file of version 2 or later")
        count, kv_count = counts
        if count > _MAX_ITEMS:
            raise ValueError(f"a GGUF table of {count} tensors")
        metadata = header.metadata(kv_count, lambda key: key == "general.alignment" or wanted(key), None)
        alignment = metadata.get("general.alignment", _DEFAULT_ALIGNMENT)
        if not isinstance(alignment, int) or alignment <= 0:
            raise ValueError(f"general.alignment {alignment!r}")
        table = []
        for _ in range(count):
            name = header.string()
            n_dims = header.unpack("I")[0]
            if n_dims > _MAX_DIMS:
                raise ValueError(f"a tensor of {n_dims} dimensions")
            shape = header.unpack("Q", n_dims)
            kind, offset = header.unpack("IQ")
            try:
                ggml_type = GGMLQuantizationType(kind)
                block, block_bytes = GGML_QUANT_SIZES[ggml_type]
            except (ValueError, KeyError):
                raise ValueError(f"unknown ggml tensor type {kind}") from None
            table.append((name, shape, ggml_type, offset, math.prod(shape) // block * block_bytes))
        data_start = -(-f.tell() // alignment) * alignment
    if not wanted("general.alignment"):
        metadata.pop("general.alignment", None)
    return metadata, [TensorInfo(n, shape, t, data_start + offset, size) for n, shape, t, offset, size in table]


def tensor_data_end(path: Path) -> int:
    """The byte offset at which the file's last tensor ends: a whole file is at least this long."""
    return max((t.offset + t.n_bytes for t in read_tensors(path)[1]), default=0)
