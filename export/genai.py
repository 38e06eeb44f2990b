"""ONNX for onnxruntime-genai through its model builder: fused attention, int4 or fp32, genai_config.json."""
from __future__ import annotations

import contextlib
import io
from pathlib import Path

from toolkit.errors import ExportError

QUANTS = ("int4", "fp32")


def export_genai(hf_dir: Path, quant: str, out: Path, work: Path, *, block_size: int = 32) -> list[str]:
    """Run `onnxruntime_genai.models.builder` for the CPU execution provider into `out`; returns notes."""
    from onnxruntime_genai.models.builder import create_model

    if quant not in QUANTS:
        raise ExportError(f"onnxruntime-genai quantization {quant!r}: choose one of {', '.join(QUANTS)}")
    log = io.StringIO()
    try:
        # The builder prints every tensor it writes; keep that for the error message only.
        with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            create_model(hf_dir.name, str(hf_dir), str(out), quant, "cpu", str(work / "genai-cache"),
                         filename="model.onnx", int4_block_size=block_size, hf_remote=False)
    except Exception as exc:  # the builder raises bare exceptions for configs it cannot build
        tail = " | ".join(log.getvalue().strip().splitlines()[-2:])
        raise ExportError(f"onnxruntime-genai builder failed on {hf_dir}: {str(exc).splitlines()[0]} {tail}") from None
    if not (out / "genai_config.json").is_file():
        raise ExportError(f"onnxruntime-genai builder wrote no genai_config.json into {out}")
    notes = ["onnxruntime-genai model builder, CPU execution provider, GroupQueryAttention"]
    if quant == "int4":
        notes.append(f"int4: MatMulNBits block size {block_size}, symmetric, accuracy level 4")
    return notes
