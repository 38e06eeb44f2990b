"""Plain ONNX export through optimum (text-generation-with-past), then int8 dynamic or int4 weight-only quantization."""
from __future__ import annotations

import contextlib
import io
import logging
import shutil
from pathlib import Path

import numpy as np

from toolkit.core.errors import ExportError
from toolkit.export.genai import clean_byte_level_tokenizer

QUANTS = ("fp32", "int8", "int4")
# Protobuf's hard limit is 2 GiB; past ~1.8 GB the weights go to model.onnx_data beside the graph.
_EXTERNAL_BYTES = 1_800_000_000


@contextlib.contextmanager
def _quiet():
    """optimum and the quantizers print per-node progress; keep it out of the user's console."""
    logging.getLogger("onnxruntime.quantization").setLevel(logging.WARNING)
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        yield buf


def untie_transposed_weights(model) -> int:
    """Replace Transpose(initializer) nodes by a transposed initializer; returns how many.

    optimum exports a tied LM head as Transpose(embed_tokens) → MatMul. A quantizer only quantizes a
    MatMul whose weight is an initializer, so the head (and, for int4, the embedding it shares) would stay
    fp32; with its own initializer both the Gather and the head get quantized.
    """
    # heavy optional runtime (onnx takes 1.8 s to import), imported on first use
    from onnx import numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    done = []
    for node in model.graph.node:
        if node.op_type != "Transpose" or node.input[0] not in inits:
            continue
        perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), None)
        w = numpy_helper.to_array(inits[node.input[0]])
        model.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(np.transpose(w, perm)),
                                                               node.output[0]))
        done.append(node)
    for node in done:
        model.graph.node.remove(node)
    used = {i for n in model.graph.node for i in n.input}
    for init in [i for i in model.graph.initializer if i.name not in used]:
        model.graph.initializer.remove(init)
    return len(done)


def _quantize(src: Path, dst: Path, quant: str, block_size: int, head_bits: int, notes: list[str]) -> None:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    model = onnx.load(str(src))
    if untie_transposed_weights(model):
        notes.append("tied LM head given its own initializer so that the embedding and the head are both quantized")
    large = sum(len(i.raw_data) for i in model.graph.initializer) > _EXTERNAL_BYTES
    if quant == "int8":
        untied = src.with_name("untied.onnx")
        onnx.save(model, str(untied), save_as_external_data=large, location="untied.onnx_data")
        # Per-channel symmetric int8 weights, activations quantized at run time (MatMulInteger, Gather).
        quantize_dynamic(untied, dst, per_channel=True, weight_type=QuantType.QInt8, use_external_data_format=large)
        notes.append("int8: dynamic quantization, per-channel int8 weights for MatMul and Gather (embedding)")
        return
    # int4: weight-only, symmetric blocks of `block_size` along K (MatMulNBits) and along the hidden axis
    # of the embedding table (GatherBlockQuantized); accuracy level 4 = int8 activations in the CPU kernel.
    # The LM head (the MatMul that writes `logits`) gets 8 bits in a second pass, as in our genai int4 and
    # llama.cpp's q4_k_m: at 4 bits it costs most of the greedy agreement with the source (bench/README.md).
    common = dict(block_size=block_size, is_symmetric=True, accuracy_level=4)
    head = [n.name for n in model.graph.node if n.op_type == "MatMul" and "logits" in n.output]
    head = head if head_bits == 8 else []
    cfg = DefaultWeightOnlyQuantConfig(**common, op_types_to_quantize=("MatMul", "Gather"),
                                       quant_axes=(("MatMul", 0), ("Gather", 1)))
    quantizer = MatMulNBitsQuantizer(model, nodes_to_exclude=head, algo_config=cfg)
    quantizer.process()
    if head:  # only the head is still a MatMul with a constant weight
        cfg8 = DefaultWeightOnlyQuantConfig(**common, op_types_to_quantize=("MatMul",), quant_axes=(("MatMul", 0),),
                                            bits=8)
        quantizer = MatMulNBitsQuantizer(quantizer.model.model, algo_config=cfg8)
        quantizer.process()
    quantizer.model.save_model_to_file(str(dst), use_external_data_format=large)
    notes.append(f"int4: weight-only MatMulNBits + GatherBlockQuantized, block size {block_size}, symmetric; "
                 f"LM head at {8 if head else 4} bits")


def export_onnx(hf_dir: Path, quant: str, out: Path, work: Path, *, block_size: int = 32,
                head_bits: int = 8) -> list[str]:
    """Write optimum's layout into `out` (model.onnx [+ data], config, tokenizer); returns notes.

    head_bits (int4 only): the LM head's bits, 8 (default) or 4 (smallest file).
    """
    from optimum.exporters.onnx import main_export

    if quant not in QUANTS:
        raise ExportError(f"ONNX quantization {quant!r}: choose one of {', '.join(QUANTS)} "
                          "(fp16 ONNX needs a GPU export)")
    if quant == "int4" and (block_size < 16 or block_size & (block_size - 1)):
        raise ExportError(f"int4 block size {block_size}: use a power of two ≥ 16 (32, 64, 128)")
    plain = work / "onnx-fp32"
    shutil.rmtree(plain, ignore_errors=True)
    try:
        with _quiet():
            main_export(str(hf_dir), plain, task="text-generation-with-past", do_validation=False, device="cpu")
    except Exception as exc:  # optimum raises bare ValueError/RuntimeError for unexportable models
        raise ExportError(f"optimum could not export {hf_dir}: {str(exc).splitlines()[0]}") from None
    notes: list[str] = []
    out.mkdir(parents=True, exist_ok=True)
    for f in plain.iterdir():
        if quant == "fp32" or not f.name.startswith("model.onnx"):
            shutil.copy2(f, out / f.name)
    if quant != "fp32":
        with _quiet():
            _quantize(plain / "model.onnx", out / "model.onnx", quant, block_size, head_bits, notes)
    if clean_byte_level_tokenizer(out):
        notes.append("GGUF-derived tokenizer saved as plain byte-level BPE (tokenizer.json; the copy of the GGUF "
                     "that transformers writes as tokenizer.model is dropped, same token ids)")
    return notes
