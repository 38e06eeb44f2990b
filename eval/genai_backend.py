"""onnxruntime-genai backend: batched greedy/sampled decoding of a genai export folder (genai_config.json)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from toolkit.core.defaults import default_threads
from toolkit.core.errors import ModelError
from toolkit.core.integrity import check_onnx_folder

from toolkit.data.calculator import steer
from toolkit.data.prompt_rule import has_chat_template, render
from toolkit.eval.backend import BatchAnswers, equal_length_batches
from toolkit.eval.calc_decode import assistant_prefix, hf_sequence


class GenaiGenerator:
    """onnxruntime-genai's C++ generation loop over batches of prompts of equal token length.

    Prompts are rendered and tokenized with the folder's HF tokenizer files (the same chat template
    the torch backend applies), so every backend sees identical token ids. Batches are never padded:
    with onnxruntime-genai 0.13.2 a left-padded row decodes differently from the same prompt alone (on
    SmolLM2-135M fp32, 6 of 40 outputs identical to torch at batch 20 against 40 of 40 at batch 1,
    bench/results/eval_backends.json; changing the pad token did not help), so only prompts of the same
    length share a batch: a self-guided iteration's repeated samples, and prompts that happen to match.
    """

    name = "genai"
    calculator = False

    def __init__(self, path: Path, batch_size: int = 16, threads: int | None = None, seed: int = 0):
        # heavy optional runtime, imported on first use
        import onnxruntime_genai as og
        from transformers import AutoTokenizer

        self.og = og
        self.threads = threads or default_threads()
        check_onnx_folder(path)
        try:
            meta = json.loads((path / "genai_config.json").read_text())["model"]
            cfg = og.Config(str(path))
            cfg.clear_providers()  # CPU
            # Explicit thread count: ORT would otherwise spin a worker on every core (DESIGN.md, contention).
            cfg.overlay(json.dumps({"model": {"decoder": {"session_options": {
                "intra_op_num_threads": self.threads, "inter_op_num_threads": 1}}}}))
            self.model = og.Model(cfg)
            self.tok = AutoTokenizer.from_pretrained(path)
        except (OSError, ValueError, KeyError, RuntimeError, json.JSONDecodeError) as exc:
            raise ModelError(f"onnxruntime-genai cannot load {path}: {str(exc).splitlines()[0]}") from None
        eos = meta.get("eos_token_id")
        self.eos_ids = set(eos if isinstance(eos, list) else [eos])
        self.context = int(meta.get("context_length", 2048))
        self.batch_size = batch_size
        self.seed = seed
        self.config = {"threads": self.threads, "batch_size": batch_size,
                       "prompt_format": "chat template" if has_chat_template(self.tok) else "plain"}

    def generate(self, prompts, max_new_tokens, temperature=0.0, on_done=None):
        rendered = [render(self.tok, p) for p in prompts]
        ids = [self.tok(text, add_special_tokens=False)["input_ids"] for text, _ in rendered]
        answers = BatchAnswers([stops for _, stops in rendered])
        for idx in equal_length_batches([len(i) for i in ids], self.batch_size):
            width = len(ids[idx[0]])
            if width + 1 > self.context:
                raise ModelError(f"a prompt of {width} tokens does not fit the model's {self.context}-token context")
            batch = np.array([ids[i] for i in idx], dtype=np.int32)
            params = self.og.GeneratorParams(self.model)
            search = {"max_length": min(width + max_new_tokens, self.context), "batch_size": len(idx),
                      "do_sample": temperature > 0}
            if temperature > 0:
                search.update(temperature=temperature, random_seed=self.seed)
            params.set_search_options(**search)
            gen = self.og.Generator(self.model, params)
            gen.append_tokens(batch)
            seqs = [hf_sequence(self.tok, assistant_prefix(prompts[i])) for i in idx] if self.calculator else []
            while not gen.is_done():
                if seqs:
                    steer_rows(gen, seqs, self.eos_ids)
                else:
                    gen.generate_next_token()
            texts = []
            for row in range(len(idx)):
                new = [int(t) for t in gen.get_sequence(row)[width:]]
                # A finished row keeps being padded while others decode: cut at its first end token.
                end = next((k for k, t in enumerate(new) if t in self.eos_ids), len(new))
                texts.append(self.tok.decode(new[:end], skip_special_tokens=True))
            del gen
            answers.put_batch(idx, texts, seqs, on_done)
        self.calc_counts = answers.calc_counts
        return answers.texts

    def close(self) -> None:
        pass


def steer_rows(gen, seqs, eos_ids: set[int]) -> None:
    """Run one genai step with the calculator: logits are replaced (all rows at once, as genai takes
    them) only when some row must take a chosen token; then each live row's new token is fed back."""
    busy = [row for row, seq in enumerate(seqs) if seq.pending and not seq.ended]
    if busy:
        logits = gen.get_logits().copy()  # (batch, 1, vocab): the scores of the token this step picks
        for row in busy:
            logits[row, -1] = steer(seqs[row], logits[row, -1])
        gen.set_logits(logits)
    gen.generate_next_token()
    for seq, tok in zip(seqs, gen.get_next_tokens().tolist()):
        if not seq.ended:
            seq.push(tok)
            seq.ended = tok in eos_ids
