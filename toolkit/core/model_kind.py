"""What a local model path holds: a GGUF file or export folder, an onnxruntime-genai, optimum ONNX or HF folder.

Standard library only: `toolkit bench --remote` ships this file to the device beside bench_runner.py.
"""
from __future__ import annotations

from pathlib import Path


def folder_gguf(folder: Path) -> Path | None:
    """The model file of a GGUF export folder (exactly one .gguf and no config.json); None for any other folder."""
    if (folder / "config.json").is_file():
        return None
    ggufs = sorted(folder.glob("*.gguf"))
    return ggufs[0] if len(ggufs) == 1 else None


def local_model(path: Path) -> tuple[str, Path] | None:
    """(kind, the file or folder a runtime loads) of a local model path; None when it holds no model.

    kind: "gguf" (a .gguf file, or the one .gguf of a GGUF export folder), "genai" (a folder with
    genai_config.json), "onnx" (config.json and *.onnx: optimum) or "hf" (config.json: save_pretrained).
    """
    if path.is_file():
        return ("gguf", path) if path.suffix == ".gguf" else None
    if not path.is_dir():
        return None
    if (path / "genai_config.json").is_file():
        return "genai", path
    if (path / "config.json").is_file():
        return ("onnx" if any(path.glob("*.onnx")) else "hf"), path
    gguf = folder_gguf(path)
    return None if gguf is None else ("gguf", gguf)


# The backend (toolkit eval --backend, toolkit bench) that runs each kind of local model.
BACKEND_OF_KIND = {"gguf": "llama.cpp", "genai": "genai", "onnx": "onnx", "hf": "torch"}
