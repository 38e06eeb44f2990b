"""GGUF quantization through llama.cpp's own quantizer (llama-cpp-python), and what it actually stored."""
from __future__ import annotations

import os
import sys
import tempfile
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from toolkit.core.errors import ExportError
from toolkit.core.gguf_header import DAMAGE, read_tensors

# Block width (elements along a row) each GGML type needs; a row length not divisible by it cannot take it.
_K_BLOCK = 256
_BASE_TYPE = {"q8_0": "Q8_0", "q4_0": "Q4_0", "q4_1": "Q4_1", "q5_0": "Q5_0", "q5_1": "Q5_1",
              "q6_k": "Q6_K", "q2_k": "Q2_K"}


def ftypes() -> dict[str, int]:
    """llama.cpp file types by lower-case name (q4_k_m, q8_0, …, f16, bf16, f32)."""
    # heavy optional runtime, imported on first use
    import llama_cpp

    names = {k[len("LLAMA_FTYPE_MOSTLY_"):].lower(): getattr(llama_cpp, k)
             for k in dir(llama_cpp) if k.startswith("LLAMA_FTYPE_MOSTLY_")}
    names["f32"] = llama_cpp.LLAMA_FTYPE_ALL_F32
    return names


def quantize(src: Path, out: Path, quant: str, threads: int) -> None:
    """llama_model_quantize(src → out) to the llama.cpp type `quant` (e.g. q4_k_m)."""
    import llama_cpp

    types = ftypes()
    if quant not in types:
        raise ExportError(f"unknown GGUF type {quant!r}; llama.cpp types: {', '.join(sorted(types))}")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = types[quant]
    params.nthread = threads
    with tempfile.TemporaryFile() as log:
        # llama.cpp writes ~700 lines per model to stderr (every key, every tensor, every fallback); stored_types
        # and the export's notes say what matters, and the log's last line explains a failure.
        with _native_stderr(log):
            rc = llama_cpp.llama_model_quantize(str(src).encode(), str(out).encode(), params)
        if rc != 0 or not out.is_file():
            log.seek(0)
            last = next((line for line in reversed(log.read().decode(errors="replace").splitlines()) if line.strip()),
                        "")
            raise ExportError(f"llama.cpp could not quantize {src.name} to {quant} (return code {rc})"
                              + (f": {last.strip()[:300]}" if last else ""))


@contextmanager
def _native_stderr(into) -> Iterator[None]:
    """File descriptor 2, where native code writes, sent into the open file `into` for the block."""
    sys.stderr.flush()
    saved = os.dup(2)
    os.dup2(into.fileno(), 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def stored_types(path: Path, quant: str) -> tuple[dict[str, int], list[str]]:
    """(count of tensors per GGML type, notes on tensors that could not take the requested type)."""
    try:
        tensors = read_tensors(path)[1]
    except DAMAGE as exc:
        raise ExportError(f"{path}: the quantized GGUF does not read back ({exc})") from None
    counts = Counter(t.ggml_type.name for t in tensors)
    notes = []
    wanted = quant.upper()
    k_quant = "_K" in wanted
    odd: dict[str, list[str]] = {}
    for t in tensors:
        if len(t.shape) < 2:
            continue  # norms and biases stay f32 by design
        row = int(t.shape[0])  # GGUF shapes list the row length (columns) first
        if k_quant and row % _K_BLOCK:
            odd.setdefault(f"{row} columns", []).append(f"{t.name}→{t.ggml_type.name}")
        elif quant in _BASE_TYPE and t.ggml_type.name != _BASE_TYPE[quant]:
            odd.setdefault(f"kept {t.ggml_type.name}", []).append(t.name)
    for why, names in odd.items():
        shown = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
        if why.endswith("columns"):
            notes.append(f"{len(names)} tensor(s) with {why} cannot take {wanted} (k-quants need a multiple of "
                         f"{_K_BLOCK}); llama.cpp used a fallback type: {shown}")
        else:
            notes.append(f"{len(names)} tensor(s) not stored as {_BASE_TYPE[quant]} ({why}): {shown}")
    if k_quant and wanted.endswith(("_M", "_L")):
        notes.append(f"{wanted} mixes types by design (more bits for attn_v/ffn_down/output)")
    return dict(sorted(counts.items())), notes
