"""`toolkit export` as one library call: build the files, compare them with the source, write export.json."""
from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

from toolkit.core import defaults
from toolkit.core.errors import ExportError
from toolkit.core.jsonio import atomic_write_json
from toolkit.core.rundir import versions
from toolkit.data.prompt_rule import PROMPT_FILE
from toolkit.export import genai, onnx, parity
from toolkit.export.accuracy import accuracy_delta, eval_problems
from toolkit.export.bundle import check_bundle_format, write_bundle
from toolkit.export.config import ExportConfig
from toolkit.export.gguf_quant import ftypes, quantize, stored_types
from toolkit.export.gguf_vocab import built_metadata, carried_metadata
from toolkit.export.gguf_writer import write_gguf
from toolkit.export.manifest import MANIFEST, PARTIAL, TOOLS, file_rows, write_manifest
from toolkit.export.source import Source, open_source, read_config, source_prompt

_SCRATCH = ".export-scratch-"  # + pid + "-" + random: the dequantized source and unquantized files, beside OUT


def check_request(fmt: str, quant: str, bundle: bool, int4_head_bits: int | None) -> None:
    """Refuse an impossible format/quantization/bundle request before any model is loaded (the format and
    the head bits are each one of their choices already: ExportConfig holds them as Literals)."""
    choices = {"onnx": onnx.QUANTS, "genai": genai.QUANTS, "gguf": tuple(sorted(ftypes()))}
    if quant not in choices[fmt]:
        raise ExportError(f"--format {fmt} takes --quant {', '.join(choices[fmt])}; got {quant!r}")
    if bundle:
        check_bundle_format(fmt)
    if int4_head_bits is not None and (fmt not in ("genai", "onnx") or quant != "int4"):
        raise ExportError(f"--int4-head-bits is for --quant int4 of --format genai or onnx; got --format {fmt} "
                          f"--quant {quant}")


def _prepare_out(out: Path) -> bool:
    """An empty OUT, or one holding a previous or stopped export (replaced); never someone else's files.
    Scratch folders of exports into the same parent that were killed (their process is gone) are swept.
    True when OUT did not exist before."""
    created = not out.exists()
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
    return created


def _drop_if_untouched(out: Path, created: bool) -> None:
    """After a failure: OUT holding nothing but the incomplete-marker goes back to how it was (removed if this
    export made it, else left empty). Anything written stays, marked incomplete."""
    if [p.name for p in out.iterdir()] == [PARTIAL]:
        (out / PARTIAL).unlink()
        if created:
            out.rmdir()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _export_gguf(src: Source, quant: str, out: Path, work: Path, threads: int) -> tuple[list[str], dict]:
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


def export_model(model_ref: str, out_dir: str | Path, config: ExportConfig, *, base_dir: Path | None = None) -> dict:
    """Export `model_ref` to `out_dir` as `config` says and return the manifest (also OUT/export.json).

    ExportConfig's fields say what each setting does. Parity thresholds left unset take parity.compare's
    defaults, and `max_accuracy_drop` accuracy.DEFAULT_MAX_DROP_POINTS. With `check`, parity below the
    thresholds raises ExportError (files and export.json are kept). A GGUF whose llama.cpp token ids differ
    from the HF tokenizer's is always refused. base_dir: the folder a relative model path is resolved from.
    """
    fmt, quant = config.format, config.quant.lower()
    bundle, int4_head_bits, eval_suite = config.bundle, config.int4_head_bits, config.eval_suite
    check_request(fmt, quant, bundle, int4_head_bits)
    if eval_suite:
        problems = eval_problems(eval_suite, config.eval_limit, defaults.data_root(config.data_root))
    threads = config.threads or min(8, defaults.default_threads())
    out = Path(out_dir)
    created = _prepare_out(out)
    start = time.perf_counter()
    gguf_types: dict = {}
    error = None
    try:
        with tempfile.TemporaryDirectory(prefix=f"{_SCRATCH}{os.getpid()}-", dir=out.parent) as tmp:
            work = Path(tmp)
            src = open_source(model_ref, work, fmt, tokenizer_gguf=config.tokenizer_gguf, base_dir=base_dir)
            notes = list(src.notes)
            if fmt == "onnx":
                notes += onnx.export_onnx(src.hf_dir, quant, out, work, block_size=config.block_size,
                                          head_bits=int4_head_bits or 8)
            elif fmt == "genai":
                notes += genai.export_genai(src.hf_dir, quant, out, work, block_size=config.block_size,
                                            head_bits=int4_head_bits or 8)
            else:
                gguf_notes, gguf_types = _export_gguf(src, quant, out, work, threads)
                notes += gguf_notes
            prompt = source_prompt(src.hf_dir)
            atomic_write_json(out / PROMPT_FILE, prompt)  # shipped with the model: the bundle runners ask it this way
            ref = parity.Reference(src.hf_dir, threads, config.max_new_tokens, prompt)
            runtime = {"onnx": parity.onnx_outputs, "genai": parity.genai_outputs, "gguf": parity.gguf_outputs}[fmt]
            target = next(out.glob("*.gguf")) if fmt == "gguf" else out
            try:
                text_ids, greedy = runtime(ref, target, threads)
                result = parity.compare(ref, text_ids, greedy, quant, config.min_first_token_match,
                                        config.min_token_agreement)
            except ExportError as exc:
                error, result = exc, {"error": str(exc), "passed": False}
            if eval_suite and error is None:
                del ref  # the reference torch model is not needed beside the two scorers' models
                result["accuracy"] = accuracy_delta(src.hf_dir, target, eval_suite, problems, work, threads,
                                                    max_drop_points=config.max_accuracy_drop)
                result["passed"] = bool(result["passed"] and result["accuracy"]["passed"])
    except BaseException:
        _drop_if_untouched(out, created)  # refused before writing anything: no folder that looks half-done
        raise
    files = file_rows(out)
    manifest = {
        "source": {"ref": model_ref, "kind": src.kind, "architecture": src.arch,
                   "tokenizer_gguf": str(src.tokenizer_gguf) if src.tokenizer_gguf else None},
        "format": fmt, "quant": quant, "files": files, "total_bytes": sum(r["bytes"] for r in files),
        "versions": versions(TOOLS), "threads": threads, "seconds": round(time.perf_counter() - start, 2),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "parity": result, "prompt": prompt, "notes": notes, "passed": bool(result["passed"]),
    }
    if gguf_types:
        manifest["gguf_tensor_types"] = gguf_types
    if fmt == "gguf" and error is None and not result["tokenizer"]["exact"]:
        error = ExportError(f"llama.cpp token ids differ from the HF tokenizer's on "
                            f"{result['tokenizer']['texts'] - result['tokenizer']['agree']} sample text(s): "
                            f"GGUF refused (details in {out / MANIFEST}); try --tokenizer-gguf BASE.gguf")
    if bundle and error is None:
        path = write_bundle(out, fmt, quant, Path(model_ref.replace("pkg:", "")).name or "model")
        manifest["bundle"] = {"path": path.name, "bytes": path.stat().st_size}
    if error is not None:
        manifest["passed"] = False
        manifest["error"] = str(error)
    write_manifest(out, manifest)
    if error is not None:
        raise error
    if config.check and not manifest["passed"]:
        g = result["greedy"]
        acc = result.get("accuracy")
        drop = (f"; strict accuracy {acc['delta_points']['strict_match']:+.1f} points on {acc['n']} {acc['suite']} "
                f"problems, allowed drop {acc['max_drop_points']:g}" if acc else "")
        raise ExportError(f"parity below thresholds (first token {g['first_token_match']:.0%}, agreement "
                          f"{g['token_agreement']:.0%}, tokenizer exact {result['tokenizer']['exact']}; "
                          f"thresholds {result['thresholds']}{drop}): files kept, {out / MANIFEST} says passed: false")
    return manifest
