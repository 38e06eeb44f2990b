"""Cheap structural checks of model files (GGUF, safetensors, HF folders, ONNX) before a run spends anything."""
from __future__ import annotations

import json
import struct
from pathlib import Path

from google.protobuf.message import DecodeError

from toolkit.core.errors import ModelError
from toolkit.core.gguf_header import DAMAGE, tensor_data_end

# A safetensors header is JSON of at most this many bytes (the format's own limit is 100 MB).
_MAX_HEADER = 100 << 20


def check_gguf(path: Path) -> None:
    """Refuse a file that is not a GGUF or whose tensors reach past its end (a truncated download)."""
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise ModelError(f"{path}: not a GGUF file (it starts with {magic!r}, not b'GGUF')")
    try:
        end = tensor_data_end(path)
    except DAMAGE as exc:
        raise ModelError(f"{path}: truncated or corrupt GGUF ({exc}); download it again") from None
    size = path.stat().st_size
    if end > size:
        raise ModelError(f"{path}: truncated GGUF: its tensors need {end} bytes, the file has {size}")


def check_safetensors(path: Path) -> None:
    """Refuse a safetensors file whose header does not parse or whose tensors reach past its end."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ModelError(f"{path}: truncated safetensors file ({size} bytes)")
        (n,) = struct.unpack("<Q", head)
        if n > min(_MAX_HEADER, size - 8):
            raise ModelError(f"{path}: truncated or corrupt safetensors file (header of {n} bytes, file of {size})")
        try:
            header = json.loads(f.read(n))
        except (ValueError, UnicodeDecodeError):
            raise ModelError(f"{path}: corrupt safetensors file (its header is not JSON)") from None
    if not isinstance(header, dict):
        raise ModelError(f"{path}: corrupt safetensors file (its header is not a JSON object)")
    try:
        end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
    except (TypeError, KeyError, IndexError, ValueError):
        raise ModelError(f"{path}: corrupt safetensors file (a tensor entry has no data_offsets)") from None
    if 8 + n + end > size:
        raise ModelError(f"{path}: truncated safetensors file: its tensors need {8 + n + end} bytes, "
                         f"the file has {size}")


def check_hf_folder(path: Path) -> None:
    """A save_pretrained folder: a config.json naming a model type, and whole weight files."""
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise ModelError(f"{path / 'config.json'}: not a readable JSON file "
                         f"({getattr(exc, 'msg', None) or getattr(exc, 'strerror', None) or exc})") from None
    if not isinstance(config, dict) or not config.get("model_type"):
        raise ModelError(f"{path / 'config.json'}: no model_type; not a transformers model config")
    index = path / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (ValueError, KeyError, TypeError, AttributeError):
            raise ModelError(f"{index}: corrupt shard index (no weight_map)") from None
        missing = [s for s in shards if not (path / s).is_file()]
        if missing:
            raise ModelError(f"{path}: missing weight shard(s) {', '.join(missing)}")
        weights = [path / s for s in shards]
    else:
        weights = sorted(path.glob("*.safetensors"))
        if not weights and not any(path.glob("pytorch_model*.bin")):
            raise ModelError(f"{path}: no weights (*.safetensors or pytorch_model.bin)")
    for w in weights:
        check_safetensors(w)


def check_onnx(path: Path) -> None:
    """Refuse an ONNX graph that does not parse, or whose external-data tensors are missing or reach past
    the end of their file (a truncated copy). Only the graph is read, never the weights."""
    # heavy optional runtime (about 1 s to import), imported on first use
    import onnx

    try:
        graph = onnx.load(str(path), load_external_data=False).graph
    except (DecodeError, OSError) as exc:
        raise ModelError(f"{path}: truncated or corrupt ONNX model ({type(exc).__name__})") from None
    sizes: dict[str, int] = {}
    for t in graph.initializer:
        if t.data_location != onnx.TensorProto.EXTERNAL:
            continue
        info = {e.key: e.value for e in t.external_data}
        data = path.parent / info.get("location", "")
        if data.name not in sizes:
            if not data.is_file():
                raise ModelError(f"{path}: its weights file {data.name} is missing")
            sizes[data.name] = data.stat().st_size
        end = int(info.get("offset", 0)) + int(info.get("length", 0))
        if end > sizes[data.name]:
            raise ModelError(f"{data}: truncated ONNX weights: tensor {t.name} needs {end} bytes, "
                             f"the file has {sizes[data.name]}")


def check_onnx_folder(folder: Path) -> None:
    """Every ONNX graph of an optimum or onnxruntime-genai folder, with its external data."""
    graphs = sorted(Path(folder).glob("*.onnx"))
    if not graphs:
        raise ModelError(f"{folder}: no .onnx model in the folder")
    for path in graphs:
        check_onnx(path)

