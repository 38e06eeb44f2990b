"""ONNX for onnxruntime-genai through its model builder: fused attention, int4 or fp32, genai_config.json."""
from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

from toolkit.core.errors import ExportError

QUANTS = ("int4", "fp32")
HEAD_BITS = (8, 4)  # the LM head's bits in an int4 export; 8 is the default


def export_genai(hf_dir: Path, quant: str, out: Path, work: Path, *, block_size: int = 32,
                 head_bits: int = 8) -> list[str]:
    """Run `onnxruntime_genai.models.builder` for the CPU execution provider into `out`; returns notes.

    head_bits (int4 only): 8 keeps the LM head, and a tied embedding that shares its table, at 8 bits,
    as llama.cpp's q4_k_m keeps its output tensor at 6. Measured on SmolLM2-135M (40 MultiArith prompts,
    bench/export_agreement.py): mean matched greedy prefix 20.9% against 9.3% with 4 bits, for 104
    against 90 MB; decode 179 against 181 tok/s (153 against 177 in an earlier, noisier run).
    """
    # heavy optional runtime, imported on first use
    from onnxruntime_genai.models.builder import create_model

    if quant not in QUANTS:
        raise ExportError(f"onnxruntime-genai quantization {quant!r}: choose one of {', '.join(QUANTS)}")
    if head_bits not in HEAD_BITS:
        raise ExportError(f"int4 head bits {head_bits}: choose 8 or 4")
    log = io.StringIO()
    try:
        # The builder prints every tensor it writes; keep that for the error message only.
        with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            # int4_algo_config "rtn" (round to nearest, per block) and "rtn_last" (the same, LM head at 8
            # bits): unlike "default", the builder then shares one table between a tied embedding and LM
            # head (GatherBlockQuantized) instead of keeping the embedding fp32 — SmolLM2's 113 MB fp32
            # embedding is most of the default int4 file. ("k_quant" with a tied head writes a graph that
            # names an initializer it never writes, measured with onnxruntime-genai 0.13.2.)
            create_model(hf_dir.name, str(hf_dir), str(out), quant, "cpu", str(work / "genai-cache"),
                         filename="model.onnx", int4_block_size=block_size,
                         int4_algo_config="rtn_last" if head_bits == 8 else "rtn", hf_remote=False)
    except Exception as exc:  # the builder raises bare exceptions for configs it cannot build
        tail = " | ".join(log.getvalue().strip().splitlines()[-2:])
        raise ExportError(f"onnxruntime-genai builder failed on {hf_dir}: {str(exc).splitlines()[0]} {tail}") from None
    if not (out / "genai_config.json").is_file():
        raise ExportError(f"onnxruntime-genai builder wrote no genai_config.json into {out}")
    notes = ["onnxruntime-genai model builder, CPU execution provider, GroupQueryAttention"]
    if clean_byte_level_tokenizer(out):
        notes.append("tokenizer files rewritten as plain byte-level BPE (no byte fallback, tokenizer_class "
                     "PreTrainedTokenizerFast, no tokenizer.model) so onnxruntime-genai reads them like HF does")
    if quant == "int4":
        notes.append(f"int4: round-to-nearest MatMulNBits, block size {block_size}, symmetric, accuracy level 4; "
                     f"LM head at {head_bits} bits, a tied embedding shares its table")
    return notes


def clean_byte_level_tokenizer(folder: Path) -> bool:
    """Make a GGUF-derived byte-level BPE tokenizer readable by onnxruntime-genai; True when changed.

    transformers builds it with byte_fallback, an SPM-style decoder, tokenizer_class LlamaTokenizer and a
    tokenizer.model (DESIGN.md, tokenizer trap); onnxruntime-genai then takes it for SentencePiece and
    emits -1 ids. Byte-level BPE never falls back (all 256 bytes are tokens), so HF's ids stay the same.
    """
    path = folder / "tokenizer.json"
    spec = json.loads(path.read_text())
    if spec["model"].get("type") != "BPE" or not spec["model"].get("byte_fallback") \
            or "ByteLevel" not in json.dumps(spec.get("pre_tokenizer")):
        return False
    spec["model"]["byte_fallback"] = False
    spec["decoder"] = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True}
    spec["normalizer"] = None
    path.write_text(json.dumps(spec, ensure_ascii=False, indent=2))
    config_path = folder / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config.pop("legacy", None)
    config_path.write_text(json.dumps(config, ensure_ascii=False, indent=2))
    (folder / "tokenizer.model").unlink(missing_ok=True)
    return True
