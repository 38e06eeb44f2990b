"""export.json: what was exported from what, file sizes and sha256, tool versions, parity and the verdict."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

MANIFEST = "export.json"
# Present in OUT from the first file written until export.json is: a folder holding it is a stopped
# (killed, failed) export of ours, which the next `toolkit export` into it replaces.
PARTIAL = ".export-incomplete"
TOOLS = ("toolkit", "torch", "transformers", "optimum-onnx", "onnx", "onnxruntime", "onnxruntime-genai",
          "gguf", "llama_cpp_python")


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(8 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def file_rows(out: Path) -> list[dict]:
    """{path, bytes, sha256} of every file under `out` but the manifest, the in-progress marker and bundles."""
    rows = []
    for p in sorted(out.rglob("*")):
        if p.is_file() and p.name not in (MANIFEST, PARTIAL) and not p.name.endswith(".tar.gz"):
            rows.append({"path": str(p.relative_to(out)), "bytes": p.stat().st_size, "sha256": sha256(p)})
    return rows


def write_manifest(out: Path, manifest: dict) -> Path:
    """Write OUT/export.json atomically (a reader never sees half a file)."""
    path = out / MANIFEST
    tmp = path.with_name(f".{MANIFEST}.{os.getpid()}")
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(tmp, path)
    (out / PARTIAL).unlink(missing_ok=True)
    return path
