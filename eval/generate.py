"""Generation backends behind one interface: chat messages in, completions out (torch, llama.cpp)."""
from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from toolkit.errors import ModelError
from toolkit.models import ModelRef, resolve_model

Messages = list[dict[str, str]]


class Generator(Protocol):
    """What every backend offers: greedy (temperature 0) or sampled chat completions."""

    name: str

    def generate(self, prompts: list[Messages], max_new_tokens: int, temperature: float = 0.0,
                 on_done: Callable[[int], None] | None = None) -> list[str]: ...


def render_prompt(tokenizer, messages: Messages) -> str:
    """The chat-template text to generate from; a trailing assistant message is a prefix the model
    continues (a forced strategy tag), not a closed turn."""
    if messages and messages[-1]["role"] == "assistant":
        # Generation prompt + the prefix verbatim: continue_final_message would strip its trailing
        # newline, and "[pot]" then tokenizes differently from the "[pot]\n" the student was trained on.
        head = tokenizer.apply_chat_template(messages[:-1], add_generation_prompt=True, tokenize=False)
        return head + messages[-1]["content"]
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


class TorchGenerator:
    """transformers model.generate, left-padded batches; `on_done(n)` reports finished prompts."""

    name = "torch"

    def __init__(self, model, tokenizer, batch_size: int = 16, threads: int | None = None):
        import torch

        if threads:
            torch.set_num_threads(threads)
        self.model = model.eval()
        self.tok = tokenizer
        self.batch_size = batch_size

    @classmethod
    def from_ref(cls, ref: ModelRef, batch_size: int = 16, threads: int | None = None) -> TorchGenerator:
        from toolkit.loading import load_model_and_tokenizer

        model, tok = load_model_and_tokenizer(ref)
        return cls(model, tok, batch_size, threads)

    def generate(self, prompts, max_new_tokens, temperature=0.0, on_done=None):
        import torch

        self.tok.padding_side = "left"  # decoder-only batches pad on the left so outputs line up
        # Sort by length so each batch pads little; restore the order at the end.
        texts = [render_prompt(self.tok, p) for p in prompts]
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        results: dict[int, str] = {}
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            enc = self.tok([texts[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=False)
            kwargs = dict(do_sample=temperature > 0, max_new_tokens=max_new_tokens,
                          pad_token_id=self.tok.pad_token_id, eos_token_id=self.tok.eos_token_id)
            if temperature > 0:
                kwargs["temperature"] = temperature
            else:  # silence the model's generation_config sampling defaults under greedy decoding
                kwargs.update(temperature=None, top_p=None, top_k=None)
            with torch.inference_mode():
                gen = self.model.generate(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                                          **kwargs)
            for row, i in enumerate(idx):
                results[i] = self.tok.decode(gen[row, enc["input_ids"].shape[1]:], skip_special_tokens=True)
            if on_done:
                on_done(len(idx))
        return [results[i] for i in range(len(prompts))]


class LlamaCppGenerator:
    """An in-process llama.cpp model (llama-cpp-python) for GGUF files; one prompt at a time."""

    name = "llama.cpp"

    def __init__(self, path: Path, n_ctx: int = 2048, threads: int | None = None, seed: int = 0):
        from llama_cpp import Llama

        if not Path(path).is_file():
            raise ModelError(f"GGUF file not found: {path}")
        try:
            self.llm = Llama(str(path), n_ctx=n_ctx, n_threads=threads or os.cpu_count(), seed=seed,
                             verbose=False)
        except ValueError as exc:
            raise ModelError(f"llama.cpp cannot load {path}: {exc}") from None

    def generate(self, prompts, max_new_tokens, temperature=0.0, on_done=None):
        if any(p and p[-1]["role"] == "assistant" for p in prompts):
            raise ModelError("a forced strategy tag (an assistant prefix) needs the torch backend for now")
        out = []
        for p in prompts:
            resp = self.llm.create_chat_completion(p, max_tokens=max_new_tokens, temperature=temperature)
            out.append(resp["choices"][0]["message"]["content"] or "")
            if on_done:
                on_done(1)
        return out


BACKENDS = ("auto", "torch", "llama.cpp")


def open_generator(model: str, backend: str = "auto", *, batch_size: int = 16, threads: int | None = None,
                   n_ctx: int = 2048) -> Generator:
    """The generator for a model reference; `auto` picks llama.cpp for GGUF files, torch otherwise."""
    ref = resolve_model(model)
    if backend == "auto":
        backend = "llama.cpp" if ref.kind == "gguf" else "torch"
    if backend == "llama.cpp":
        if ref.kind != "gguf":
            raise ModelError(f"backend llama.cpp needs a GGUF file; {model} is a {ref.kind} model")
        return LlamaCppGenerator(ref.path, n_ctx=n_ctx, threads=threads)
    if backend == "torch":
        return TorchGenerator.from_ref(ref, batch_size=batch_size, threads=threads)
    raise ModelError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
