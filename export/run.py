"""`toolkit export` as one library call: build the files, compare them with the source, write export.json."""
from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

from toolkit.core.errors import ExportError
from toolkit.export import genai, onnx, parity
from toolkit.export.manifest import MANIFEST, PARTIAL, TOOLS, file_rows, write_manifest
from toolkit.export.source import Source, open_source, read_config
from toolkit.core.rundir import versions

FORMATS = ("onnx", "genai", "gguf")
_SCRATCH = ".export-scratch-"  # + pid + "-" + random: the dequantized source and unquantized files, beside OUT


def _check_request(fmt: str, quant: str, bundle: bool, int4_head_bits: int | None) -> None:
    """Refuse an impossible format/quantization/bundle request before any model is loaded."""
    from toolkit.export.bundle import check_bundle_format
    from toolkit.export.gguf_quant import ftypes

    choices = {"onnx": onnx.QUANTS, "genai": genai.QUANTS, "gguf": tuple(sorted(ftypes()))}
    if fmt not in choices:
        raise ExportError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if quant not in choices[fmt]:
        raise ExportError(f"--format {fmt} takes --quant {', '.join(choices[fmt])}; got {quant!r}")
    if bundle:
        check_bundle_format(fmt)
    if int4_head_bits is not None and (fmt not in ("genai", "onnx") or quant != "int4"):
        raise ExportError(f"--int4-head-bits is for --quant int4 of --format genai or onnx; got --format {fmt} "
                          f"--quant {quant}")
    if int4_head_bits not in (None, *genai.HEAD_BITS):
        raise ExportError(f"--int4-head-bits {int4_head_bits}: choose 8 or 4")


def _prepare_out(out: Path) -> None:
    """An empty OUT, or one holding a previous or stopped export (replaced); never someone else's files.
    Scratch folders of exports into the same parent that were killed (their process is gone) are swept."""
    if out.exists() and any(out.iterdir()):
        if not ((out / MANIFEST).is_file() or (out / PARTIAL).is_file()):
            raise ExportError(f"{out} is not empty and holds no previous export; give an empty or new folder")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / PARTIAL).write_text("toolkit export was writing this folder; it is complete once export.json is here\n")
    for stale in out.parent.glob(f"{_SCRATCH}*"):
        pid = stale.name[len(_SCRATCH):].split("-")[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _export_gguf(src: Source, quant: str, out: Path, work: Path, threads: int) -> tuple[list[str], dict]:
    from toolkit.export.gguf_quant import quantize, stored_types
    from toolkit.export.gguf_vocab import built_metadata, carried_metadata
    from toolkit.export.gguf_writer import write_gguf

    cfg = read_config(src.hf_dir)
    if src.tokenizer_gguf is not None:
        entries = carried_metadata(src.tokenizer_gguf, cfg["vocab_size"])
        notes = [f"tokenizer.ggml.* carried over from the base GGUF {src.tokenizer_gguf.name}"]
    else:
        entries = built_metadata(src.hf_dir, cfg["vocab_size"])
        pre = next(v for k, v, _, _ in entries if k == "tokenizer.ggml.pre")
        notes = [f"tokenizer.ggml.* built from tokenizer.json (byte-level BPE, pre-tokenizer {pre})"]
    target = out / f"model-{quant}.gguf"
    if quant in ("f16", "f32"):
        write_gguf(src.hf_dir, target, src.arch, cfg, entries, outtype=quant)
    else:
        f16 = work / "model-f16.gguf"
        write_gguf(src.hf_dir, f16, src.arch, cfg, entries, outtype="f16")
        quantize(f16, target, quant, threads)
    types, type_notes = stored_types(target, quant)
    return notes + type_notes, types


def export_model(model_ref: str, fmt: str, quant: str, out_dir: str | Path, *, check: bool = False,
                 bundle: bool = False, threads: int | None = None, max_new_tokens: int = 16, block_size: int = 32,
                 min_first_token_match: float | None = None, min_token_agreement: float | None = None,
                 tokenizer_gguf: str | None = None, base_dir: Path | None = None, eval_suite: str | None = None,
                 eval_limit: int = 20, data_root: str | None = None, max_accuracy_drop: float | None = None,
                 int4_head_bits: int | None = None) -> dict:
    """Export `model_ref` to `fmt`/`quant` in `out_dir` and return the manifest (also OUT/export.json).

    threads: CPU threads for torch, onnxruntime and llama.cpp (default: all cores, at most 8).
    max_new_tokens: greedy tokens compared per sample prompt. block_size: int4 block (ONNX and genai).
    int4_head_bits: the LM head's bits in an int4 export, genai or onnx (8 when absent, or 4: the smallest).
    min_first_token_match / min_token_agreement: parity thresholds (defaults in parity.compare).
    tokenizer_gguf: a GGUF whose tokenizer metadata a GGUF export carries over (default: the recorded base).
    eval_suite / eval_limit / data_root: also score source and export on the first `eval_limit` problems of
        this suite (`toolkit eval`'s greedy scorer) and record the accuracy delta; `max_accuracy_drop` is the
        largest strict-accuracy drop in points that passes (default accuracy.DEFAULT_MAX_DROP_POINTS).
    check: raise ExportError when parity is below the thresholds (files and export.json are kept).
    A GGUF whose llama.cpp token ids differ from the HF tokenizer's is always refused.
    """
    fmt, quant = fmt.lower(), quant.lower()
    _check_request(fmt, quant, bundle, int4_head_bits)
    if eval_suite:
        from toolkit.export.accuracy import eval_problems

        problems = eval_problems(eval_suite, eval_limit, data_root or os.environ.get("TOOLKIT_DATA") or "data")
    threads = threads or min(8, os.cpu_count() or 1)
    out = Path(out_dir)
    _prepare_out(out)
    start = time.perf_counter()
    gguf_types: dict = {}
    error = None
    with tempfile.TemporaryDirectory(prefix=f"{_SCRATCH}{os.getpid()}-", dir=out.parent) as tmp:
        work = Path(tmp)
        src = open_source(model_ref, work, tokenizer_gguf=tokenizer_gguf, base_dir=base_dir)
        notes = list(src.notes)
        if fmt == "onnx":
            notes += onnx.export_onnx(src.hf_dir, quant, out, work, block_size=block_size,
                                      head_bits=int4_head_bits or 8)
        elif fmt == "genai":
            notes += genai.export_genai(src.hf_dir, quant, out, work, block_size=block_size,
                                        head_bits=int4_head_bits or 8)
        else:
            gguf_notes, gguf_types = _export_gguf(src, quant, out, work, threads)
            notes += gguf_notes
        ref = parity.Reference(src.hf_dir, threads, max_new_tokens)
        runtime = {"onnx": parity.onnx_outputs, "genai": parity.genai_outputs, "gguf": parity.gguf_outputs}[fmt]
        target = next(out.glob("*.gguf")) if fmt == "gguf" else out
        try:
            text_ids, greedy = runtime(ref, target, threads)
            result = parity.compare(ref, text_ids, greedy, quant, min_first_token_match, min_token_agreement)
        except ExportError as exc:
            error, result = exc, {"error": str(exc), "passed": False}
        if eval_suite and error is None:
            from toolkit.export.accuracy import accuracy_delta

            del ref  # the reference torch model is not needed beside the two scorers' models
            result["accuracy"] = accuracy_delta(src.hf_dir, target, eval_suite, problems, work, threads,
                                                max_drop_points=max_accuracy_drop)
            result["passed"] = bool(result["passed"] and result["accuracy"]["passed"])
    files = file_rows(out)
    manifest = {
        "source": {"ref": model_ref, "kind": src.kind, "architecture": src.arch,
                   "tokenizer_gguf": str(src.tokenizer_gguf) if src.tokenizer_gguf else None},
        "format": fmt, "quant": quant, "files": files, "total_bytes": sum(r["bytes"] for r in files),
        "versions": versions(TOOLS), "threads": threads, "seconds": round(time.perf_counter() - start, 2),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "parity": result, "notes": notes, "passed": bool(result["passed"]),
    }
    if gguf_types:
        manifest["gguf_tensor_types"] = gguf_types
    if fmt == "gguf" and error is None and not result["tokenizer"]["exact"]:
        error = ExportError(f"llama.cpp token ids differ from the HF tokenizer's on "
                            f"{result['tokenizer']['texts'] - result['tokenizer']['agree']} sample text(s): "
                            f"GGUF refused (details in {out / MANIFEST}); try --tokenizer-gguf BASE.gguf")
    if bundle and error is None:
        from toolkit.export.bundle import write_bundle

        path = write_bundle(out, fmt, quant, Path(model_ref.replace("pkg:", "")).name or "model")
        manifest["bundle"] = {"path": path.name, "bytes": path.stat().st_size}
    if error is not None:
        manifest["passed"] = False
        manifest["error"] = str(error)
    write_manifest(out, manifest)
    if error is not None:
        raise error
    if check and not manifest["passed"]:
        g = result["greedy"]
        acc = result.get("accuracy")
        drop = (f"; strict accuracy {acc['delta_points']['strict_match']:+.1f} points on {acc['n']} {acc['suite']} "
                f"problems, allowed drop {acc['max_drop_points']:g}" if acc else "")
        raise ExportError(f"parity below thresholds (first token {g['first_token_match']:.0%}, agreement "
                          f"{g['token_agreement']:.0%}, tokenizer exact {result['tokenizer']['exact']}; "
                          f"thresholds {result['thresholds']}{drop}): files kept, {out / MANIFEST} says passed: false")
    return manifest
