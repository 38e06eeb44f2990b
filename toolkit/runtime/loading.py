"""Load a model reference as a transformers model and tokenizer, fixing GGUF-derived special tokens."""
from __future__ import annotations

import logging
from pathlib import Path

from toolkit.core.errors import ModelError
from toolkit.core.integrity import check_gguf, check_hf_folder
from toolkit.runtime.models import ModelRef
from toolkit.runtime.spm_tokenizer import needs_rebuild, read_tokenizer_meta, spm_bpe_tokenizer


def _source(ref: ModelRef) -> tuple[str, dict]:
    if ref.kind == "gguf":
        return str(ref.path.parent), {"gguf_file": ref.path.name}
    if ref.kind == "hf":
        return str(ref.path), {}
    return ref.hub_id, {}


def load_tokenizer(ref: ModelRef):
    # heavy optional runtime, imported on first use
    from transformers import AutoTokenizer

    if ref.kind == "gguf" and needs_rebuild(ref.path):
        return spm_bpe_tokenizer(read_tokenizer_meta(ref.path))
    src, kw = _source(ref)
    try:
        tok = AutoTokenizer.from_pretrained(src, **kw)
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load a tokenizer from {ref.ref}: {str(exc).splitlines()[0]}") from None
    if _is_gguf(getattr(tok, "vocab_file", None)):
        # transformers keeps the GGUF itself as the vocab file of a tokenizer it built from one (or from a folder
        # saved that way), and save_pretrained copies that file into every saved folder as tokenizer.model (98 MB
        # for SmolLM2). tokenizer.json alone reloads to the same ids, so the saved folders hold no GGUF copy.
        tok.vocab_file = None
    return tok


def _is_gguf(path: str | None) -> bool:
    if not path or not Path(path).is_file():
        return False
    with open(path, "rb") as f:
        return f.read(4) == b"GGUF"


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
    """Make the tokenizer's EOS the token that ends a turn, stop generation at every end token, keep BOS out of
    chat prompts.

    A tokenizer that transformers builds from a packaged GGUF may name `<|im_start|>` as both BOS
    and EOS, while the model config says EOS is `<|im_end|>` (DESIGN.md, tokenizer trap). Generation
    would then never stop at the end of a turn and training would teach the wrong stop token. Configs that
    list several end tokens do not put the end of a turn first: Llama-3.2-Instruct lists <|end_of_text|>,
    <|eom_id|>, <|eot_id|> and gemma-3-it <eos>, <end_of_turn>; the chat template says which one ends a turn.
    The tokenizer's EOS (what training appends and learns) becomes that token; the config and generation
    config list it first, then the other end tokens, so generation stops at any of them.
    """
    ends = list(dict.fromkeys(_as_ids(model.config.eos_token_id)
                              + _as_ids(getattr(model.generation_config, "eos_token_id", None))))
    eos_id = _end_of_turn(tok, ends)
    if eos_id is None:  # no template, or none that closes a turn with a special token
        eos_id = tok.eos_token_id if tok.eos_token_id in ends or not ends else ends[0]
    if eos_id is not None and tok.eos_token_id != eos_id:
        tok.eos_token = tok.convert_ids_to_tokens(eos_id)
    stops = [i for i in dict.fromkeys([tok.eos_token_id, *ends]) if i is not None]
    model.config.eos_token_id = stops if len(stops) > 1 else tok.eos_token_id
    if model.generation_config is not None:
        model.generation_config.eos_token_id = model.config.eos_token_id
    if tok.pad_token_id is None or tok.pad_token_id == tok.bos_token_id:
        tok.pad_token = tok.eos_token
    model.config.pad_token_id = tok.pad_token_id
    if model.generation_config is not None:
        model.generation_config.pad_token_id = tok.pad_token_id


_MARK = "Zq9 marker"  # an assistant turn's content that no template rewrites


def _end_of_turn(tok, ends: list[int]) -> int | None:
    """The token that the chat template writes right after an assistant turn's content, if it is a special token
    or one of the config's end tokens `ends`. Otherwise (a template that cannot render this conversation, or
    one whose turn end the tokenizer does not mark special) the ChatML rule: a ChatML template ends each turn
    with `<|im_end|>`. None when neither says."""
    template = getattr(tok, "chat_template", None)
    if not template:
        return None
    conversation = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": _MARK}]
    try:
        text = tok.apply_chat_template(conversation, tokenize=False)
    except Exception:  # templates raise their own errors (jinja's, raise_exception) on conversations they refuse
        text = ""
    after = text.partition(_MARK)[2]
    if after:
        first = tok(after, add_special_tokens=False)["input_ids"][:1]
        if first and (first[0] in ends or first[0] in tok.all_special_ids
                      or getattr(tok.added_tokens_decoder.get(first[0]), "special", False)):
            return first[0]
    if "<|im_end|>" in template and "<|im_end|>" in tok.get_vocab():
        return tok.convert_tokens_to_ids("<|im_end|>")
    return None


def _as_ids(value) -> list[int]:
    """A config's eos_token_id (None, one id or a list) as a list."""
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def save_folder_ok(path: Path) -> bool:
    """A save_pretrained folder that holds a config and weights."""
    return (path / "config.json").is_file() and any(path.glob("*.safetensors"))


def check_model(ref: ModelRef) -> None:
    """Check a resolved local model reference; hub models are checked by transformers on download."""
    if ref.kind == "gguf":
        check_gguf(ref.path)
    elif ref.kind == "hf":
        check_hf_folder(ref.path)
