"""Load a model reference as a transformers model and tokenizer, fixing GGUF-derived special tokens."""
from __future__ import annotations

import logging
from pathlib import Path

from toolkit.core.errors import ModelError
from toolkit.core.integrity import check_gguf, check_hf_folder
from toolkit.runtime.models import ModelRef


def _source(ref: ModelRef) -> tuple[str, dict]:
    if ref.kind == "gguf":
        return str(ref.path.parent), {"gguf_file": ref.path.name}
    if ref.kind == "hf":
        return str(ref.path), {}
    return ref.hub_id, {}


def load_tokenizer(ref: ModelRef):
    # heavy optional runtime, imported on first use
    from transformers import AutoTokenizer

    src, kw = _source(ref)
    try:
        tok = AutoTokenizer.from_pretrained(src, **kw)
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load a tokenizer from {ref.ref}: {str(exc).splitlines()[0]}") from None
    return tok


def load_model_and_tokenizer(ref: ModelRef, dtype: str = "float32"):
    """(model, tokenizer) ready for training or generation, special tokens made consistent.

    A GGUF is dequantized into a trainable PyTorch model by transformers (`gguf_file=`).
    """
    import torch
    from transformers import AutoModelForCausalLM

    check_model(ref)  # a truncated weight file is one clear error, not a loader traceback
    src, kw = _source(ref)
    tok = load_tokenizer(ref)
    # transformers logs a warning per tensor-name mismatch while reading GGUFs; keep the console clean.
    logging.getLogger("transformers.modeling_utils").setLevel(logging.ERROR)
    try:
        model = AutoModelForCausalLM.from_pretrained(src, torch_dtype=getattr(torch, dtype), **kw)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(f"cannot load model {ref.ref}: {str(exc).splitlines()[0]}") from None
    fix_special_tokens(tok, model)
    if ref.kind == "gguf":
        # Saved into config.json with every fine-tuned student: the GGUF exporter carries this base's
        # tokenizer.ggml.* metadata over (DESIGN.md, tokenizer trap). `ref` (e.g. pkg:NAME) resolves anywhere.
        model.config.toolkit_base = {"ref": ref.ref, "gguf": str(ref.path)}
    return model, tok


def fix_special_tokens(tok, model) -> None:
    """Make the tokenizer's EOS/PAD agree with the model config, and keep BOS out of chat prompts.

    A tokenizer that transformers builds from a packaged GGUF may name `<|im_start|>` as both BOS
    and EOS, while the model config says EOS is `<|im_end|>` (DESIGN.md, tokenizer trap). Generation
    would then never stop at the end of a turn and training would teach the wrong stop token.
    """
    eos_id = model.config.eos_token_id
    if isinstance(eos_id, list):
        eos_id = eos_id[0]
    template = getattr(tok, "chat_template", None) or ""
    if "<|im_end|>" in template and "<|im_end|>" in tok.get_vocab():
        eos_id = tok.convert_tokens_to_ids("<|im_end|>")  # ChatML: a turn ends with <|im_end|>
    if eos_id is not None and tok.eos_token_id != eos_id:
        tok.eos_token = tok.convert_ids_to_tokens(eos_id)
    model.config.eos_token_id = tok.eos_token_id
    if model.generation_config is not None:
        model.generation_config.eos_token_id = tok.eos_token_id
    if tok.pad_token_id is None or tok.pad_token_id == tok.bos_token_id:
        tok.pad_token = tok.eos_token
    model.config.pad_token_id = tok.pad_token_id
    if model.generation_config is not None:
        model.generation_config.pad_token_id = tok.pad_token_id


def save_folder_ok(path: Path) -> bool:
    """A save_pretrained folder that holds a config and weights."""
    return (path / "config.json").is_file() and any(path.glob("*.safetensors"))


def check_model(ref: ModelRef) -> None:
    """Check a resolved local model reference; hub models are checked by transformers on download."""
    if ref.kind == "gguf":
        check_gguf(ref.path)
    elif ref.kind == "hf":
        check_hf_folder(ref.path)
