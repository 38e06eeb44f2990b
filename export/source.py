"""The model an export starts from: a checked local HF folder (dequantized first when given a GGUF)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import snapshot_download
from safetensors import safe_open

from toolkit.core.errors import ExportError, ModelError
from toolkit.core.gguf_header import DAMAGE, read_metadata
from toolkit.data.prompt_rule import read_record, record_for
from toolkit.runtime.models import resolve_model
from toolkit.runtime.loading import load_model_and_tokenizer

# Architectures each format takes, by GGUF `general.architecture` name; an HF `model_type` is looked up by its GGUF
# name (FAMILY: Gemma3ForCausalLM saves gemma3_text). Our GGUF writer maps llama, qwen2 and gemma3 tensors
# (export/gguf_writer.py). onnxruntime-genai's builder builds gemma3 too, exactly for a tiny one at fp32, but the
# packaged gemma-3-270m at int4 failed parity (its tokenizer 8 of 9 texts, 8% of greedy tokens), so genai keeps to
# llama and qwen2; optimum builds more families, checked here for llama and qwen2 only.
SUPPORTED = {"gguf": ("llama", "qwen2", "gemma3"), "genai": ("llama", "qwen2"), "onnx": ("llama", "qwen2")}
FAMILY = {"gemma3_text": "gemma3"}
WRITER = {"gguf": "our GGUF writer", "genai": "the onnxruntime-genai export", "onnx": "the optimum ONNX export"}


@dataclass(frozen=True)
class Source:
    """A model ready to export.

    hf_dir: a save_pretrained folder (config, safetensors, tokenizer). tokenizer_gguf: a GGUF whose
    `tokenizer.ggml.*` metadata the GGUF exporter carries over (the base the model was tuned from),
    or None to build that metadata from tokenizer.json.
    """

    ref: str
    kind: str
    hf_dir: Path
    arch: str
    tokenizer_gguf: Path | None
    notes: tuple[str, ...] = ()


def check_architecture(fmt: str, arch: str, where: str) -> None:
    """Refuse, before any weight is read, an architecture that `fmt`'s exporter cannot take."""
    if FAMILY.get(arch, arch) not in SUPPORTED[fmt]:
        raise ExportError(f"--format {fmt} cannot take architecture {arch!r} ({where}): {WRITER[fmt]} takes "
                          f"{', '.join(SUPPORTED[fmt])}")


def gguf_architecture(path: Path) -> str:
    """general.architecture of a GGUF file, from its header alone (the tensors are checked when the model loads)."""
    try:
        arch = read_metadata(path, lambda key: key == "general.architecture", stop_after=1).get("general.architecture")
    except DAMAGE as exc:
        raise ModelError(f"{path}: not a readable GGUF file (truncated or corrupt?): {exc}") from None
    if not isinstance(arch, str):
        raise ModelError(f"{path}: not a readable GGUF file (truncated or corrupt?): no general.architecture")
    return arch


def read_config(hf_dir: Path) -> dict:
    try:
        return json.loads((hf_dir / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelError(f"{hf_dir / 'config.json'}: cannot read the model config: {exc}") from None


def check_weights(hf_dir: Path) -> None:
    """Open every safetensors header so a truncated or corrupt weights file fails here, by name."""
    files = sorted(hf_dir.glob("*.safetensors"))
    if not files:
        raise ModelError(f"{hf_dir}: no *.safetensors weights (save the model with safe_serialization=True)")
    for f in files:
        try:
            with safe_open(str(f), framework="pt") as st:
                for key in st.keys():
                    st.get_slice(key)
        except Exception as exc:  # safetensors raises its own SafetensorError and OSErrors
            raise ModelError(f"{f}: weights file is corrupt or truncated ({str(exc).splitlines()[0]})") from None


def _recorded_base(hf_dir: Path, config: dict) -> tuple[Path | None, str | None]:
    """The base GGUF a student was fine-tuned from, as recorded by toolkit.runtime.loading in config.json."""
    base = config.get("toolkit_base") or {}
    for candidate in (base.get("ref"), base.get("gguf")):
        if not candidate:
            continue
        try:
            ref = resolve_model(candidate)
        except ModelError:
            continue
        if ref.kind == "gguf":
            return ref.path, None
    if base:
        return None, (f"recorded base {base.get('ref')} is not available here; "
                      "GGUF tokenizer metadata built from tokenizer.json")
    return None, None


def open_source(model_ref: str, work: Path, fmt: str, *, tokenizer_gguf: str | None = None,
                base_dir: Path | None = None) -> Source:
    """Resolve `model_ref`, check its architecture (one `fmt` takes) and files; a GGUF is dequantized into `work`."""
    ref = resolve_model(model_ref, base_dir)
    notes: list[str] = []
    if ref.kind == "gguf":
        arch = gguf_architecture(ref.path)
        check_architecture(fmt, arch, str(ref.path))
        model, tok = load_model_and_tokenizer(ref)
        hf_dir = work / "source"
        model.save_pretrained(hf_dir, safe_serialization=True)
        tok.save_pretrained(hf_dir)
        notes.append("source GGUF dequantized to float32 by transformers; its tokenizer metadata is carried over")
        base = ref.path
    else:
        if ref.kind == "hub":
            try:
                hf_dir = Path(snapshot_download(ref.hub_id, allow_patterns=["*.json", "*.safetensors", "*.txt",
                                                                           "*.model", "*.jinja"]))
            except Exception as exc:  # offline, unknown repo, gated: all user-fixable
                raise ModelError(f"cannot download {ref.hub_id}: {str(exc).splitlines()[0]}") from None
        else:
            hf_dir = ref.path
        config = read_config(hf_dir)
        arch = config.get("model_type", "?")
        check_architecture(fmt, arch, str(hf_dir))
        check_weights(hf_dir)
        base, note = _recorded_base(hf_dir, config)
        if note:
            notes.append(note)
    if tokenizer_gguf:
        base = resolve_model(tokenizer_gguf, base_dir).path
        if base is None or base.suffix != ".gguf":
            raise ExportError(f"--tokenizer-gguf {tokenizer_gguf}: not a GGUF file")
    return Source(model_ref, ref.kind, hf_dir, arch, base, tuple(notes))


def source_prompt(hf_dir: Path) -> dict:
    """The prompt rule's record for an export of `hf_dir`: the strategies of a student's own record (its
    prompt.json), else those of `toolkit eval`'s default CoT prompt (a base model, a GGUF), in the format of its
    tokenizer (chat template or plain), the one every runtime of the export renders the prompt in."""
    # heavy optional runtime, imported on first use
    from transformers import AutoTokenizer

    recorded = read_record(hf_dir)
    return record_for(AutoTokenizer.from_pretrained(hf_dir), recorded["strategies"] if recorded else ["cot"])
