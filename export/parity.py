"""Does an export still answer like its source? Token ids on sample texts and greedy continuations compared."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from toolkit.core.errors import ExportError
from toolkit.data.prompt_rule import render
from toolkit.data.strategies import training_prompt

# Math prompts plus texts that stress a tokenizer: digits, thousands separators, unicode, code, whitespace.
PROMPTS = [
    "Tom has 3 apples and buys 5 more. How many apples does he have?",
    "A baker makes 1,080 muffins and sells 3/4 of them at $2.50 each. How much money does he make?",
    "Solve step by step: 12 * (7 - 4) + 36 / 9 = ?",
]
EXTRA_TEXTS = [
    "Ünïcödé café – 12.5% of €40?\n\tTabs,  double  spaces and a trailing space ",
    "def answer(x):\n    return x ** 2  # 🙂\n",
    "<|im_start|>user\nHi<|im_end|>\n",
]
EXACT_QUANTS = ("fp32", "f32", "f16", "fp16", "bf16")


def sample_texts(tok, record: dict) -> tuple[list[str], list[str]]:
    """(texts whose token ids must agree, generation prompts). The prompts are the questions as the export will
    be asked them: by the prompt rule of `record` (the export's prompt.json), system text and format included."""
    prompts = [render(tok, training_prompt(p, record["strategies"]))[0] for p in PROMPTS]
    return list(dict.fromkeys(PROMPTS + prompts + EXTRA_TEXTS)), prompts


def _cut(ids: list[int], eos: set[int], n: int) -> list[int]:
    out = []
    for t in ids[:n]:
        out.append(int(t))
        if t in eos:
            break
    return out


class Reference:
    """The source model in torch: its tokenizer's ids and greedy continuations are the reference."""

    def __init__(self, hf_dir: Path, threads: int, max_new_tokens: int, record: dict):
        # heavy optional runtime, imported on first use
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        torch.set_num_threads(threads)
        self.tok = AutoTokenizer.from_pretrained(hf_dir)
        self.model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
        self.max_new_tokens = max_new_tokens
        eos = self.model.config.eos_token_id
        self.eos = set(eos if isinstance(eos, list) else [eos]) | {self.tok.eos_token_id} - {None}
        self.texts, prompts = sample_texts(self.tok, record)
        self.prompt_ids = [self.tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
        self.text_ids = [self.tok(t, add_special_tokens=False)["input_ids"] for t in self.texts]
        self.greedy = [self.generate(self.model, ids) for ids in self.prompt_ids]

    def generate(self, model, ids: list[int]) -> list[int]:
        """Greedy new tokens of a transformers-style model (torch or optimum's ORT model)."""
        import torch

        x = torch.tensor([ids])
        with torch.no_grad():
            out = model.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=self.max_new_tokens,
                                 do_sample=False, num_beams=1, repetition_penalty=1.0, eos_token_id=sorted(self.eos),
                                 pad_token_id=self.tok.pad_token_id or sorted(self.eos)[0])
        return _cut(out[0, len(ids):].tolist(), self.eos, self.max_new_tokens)


def compare(ref: Reference, text_ids: list[list[int]], greedy: list[list[int]], quant: str,
            min_first_token_match: float | None, min_token_agreement: float | None) -> dict:
    """The parity block of export.json, with thresholds and whether they are met."""
    mismatched = [i for i, (a, b) in enumerate(zip(ref.text_ids, text_ids)) if a != b]
    prefix, first, exact = [], [], []
    for src, got in zip(ref.greedy, greedy):
        n = 0
        while n < min(len(src), len(got)) and src[n] == got[n]:
            n += 1
        prefix.append(n / max(1, len(src)))
        first.append(bool(src[:1] == got[:1]))
        exact.append(src == got)
    # Defaults: an unquantized export must start every continuation like the source; a quantized one
    # must match at least half of the source's greedy tokens (prefix share, averaged over prompts).
    first_default, agree_default = (1.0, 0.0) if quant in EXACT_QUANTS else (0.0, 0.5)
    thresholds = {
        "min_first_token_match": first_default if min_first_token_match is None else min_first_token_match,
        "min_token_agreement": agree_default if min_token_agreement is None else min_token_agreement,
    }
    greedy_block = {
        "prompts": len(greedy), "max_new_tokens": ref.max_new_tokens,
        "first_token_match": sum(first) / len(first),
        "token_agreement": round(sum(prefix) / len(prefix), 4),  # mean share of the source continuation matched
        "exact_sequences": sum(exact) / len(exact),
        "samples": [{"source": s, "export": g} for s, g in zip(ref.greedy, greedy)],
    }
    tokenizer_ok = not mismatched and len(text_ids) == len(ref.text_ids)
    passed = (tokenizer_ok and greedy_block["first_token_match"] >= thresholds["min_first_token_match"]
              and greedy_block["token_agreement"] >= thresholds["min_token_agreement"])
    tokenizer_block = {"texts": len(ref.texts), "agree": len(ref.texts) - len(mismatched), "exact": tokenizer_ok}
    if mismatched:
        i = mismatched[0]
        tokenizer_block["first_mismatch"] = {"text": ref.texts[i], "source": ref.text_ids[i], "export": text_ids[i]}
    return {"tokenizer": tokenizer_block, "greedy": greedy_block, "thresholds": thresholds, "passed": passed}


def onnx_outputs(ref: Reference, out: Path, threads: int) -> tuple[list[list[int]], list[list[int]]]:
    """Token ids from the exported tokenizer files and greedy ids from optimum's ORTModelForCausalLM."""
    import onnxruntime as ort
    from optimum.onnxruntime import ORTModelForCausalLM
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(out)
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    try:
        model = ORTModelForCausalLM.from_pretrained(out, session_options=so, provider="CPUExecutionProvider")
    except Exception as exc:  # onnxruntime's own loader errors (invalid graph, missing initializer) are bare
        raise ExportError(f"onnxruntime could not load the export in {out}: {_first_line(exc)}") from None
    return ([tok(t, add_special_tokens=False)["input_ids"] for t in ref.texts],
            [ref.generate(model, ids) for ids in ref.prompt_ids])


def open_genai(out: Path, threads: int):
    """An onnxruntime_genai model with its CPU thread count set (genai_config left as written)."""
    import onnxruntime_genai as og

    try:
        config = og.Config(str(out))
        config.overlay(json.dumps({"model": {"decoder": {"session_options": {"intra_op_num_threads": threads,
                                                                             "inter_op_num_threads": 1}}}}))
        return og.Model(config)
    except Exception as exc:  # onnxruntime-genai raises bare RuntimeErrors (invalid graph, bad genai_config.json)
        raise ExportError(f"onnxruntime-genai could not load the export in {out}: {_first_line(exc)}") from None


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__


def genai_outputs(ref: Reference, out: Path, threads: int) -> tuple[list[list[int]], list[list[int]]]:
    """Token ids from onnxruntime_genai's own tokenizer and greedy ids from its C++ generation loop."""
    import onnxruntime_genai as og

    model = open_genai(out, threads)
    tok = og.Tokenizer(model)
    text_ids = [[int(i) for i in tok.encode(t)] for t in ref.texts]
    greedy = []
    for ids in ref.prompt_ids:
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=len(ids) + ref.max_new_tokens, do_sample=False)
        gen = og.Generator(model, params)
        gen.append_tokens(ids)
        while not gen.is_done():
            gen.generate_next_token()
        greedy.append(_cut([int(i) for i in gen.get_sequence(0)][len(ids):], ref.eos, ref.max_new_tokens))
    return text_ids, greedy


def gguf_outputs(ref: Reference, path: Path, threads: int) -> tuple[list[list[int]], list[list[int]]]:
    """Token ids and greedy ids from plain llama.cpp, run in a child so that a vocab abort cannot kill us."""
    spec = {"model": str(path), "texts": ref.texts, "prompts": ref.prompt_ids,
            "max_new_tokens": ref.max_new_tokens, "threads": threads, "eos": sorted(ref.eos)}
    proc = subprocess.run([sys.executable, "-m", "toolkit.export.llama_probe"], input=json.dumps(spec),
                          capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        tail = " | ".join(proc.stderr.strip().splitlines()[-3:])
        raise ExportError(f"llama.cpp could not load or run {path.name} (exit {proc.returncode}): {tail}")
    result = json.loads(proc.stdout)
    return result["tokens"], result["greedy"]
