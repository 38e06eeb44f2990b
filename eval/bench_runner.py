"""The process that runs one model for `toolkit bench`: timed prefill and decode loops, peak memory.

Run as `python bench_runner.py SPEC_JSON` (or `-m toolkit.eval.bench_runner`); prints one line
`BENCH_JSON {...}` on stdout. It needs only the backend's runtime (llama_cpp, onnxruntime_genai,
optimum + onnxruntime, or torch + transformers) and numpy, never toolkit itself, so that
`toolkit bench --remote` can ship it (with machine.py, safetar.py and model_kind.py beside it) to an edge device.

Definitions follow llama-bench: a prompt of exactly `prompt_tokens` synthetic token ids is
processed in one call (prefill, pp); then `gen_tokens` tokens are decoded one at a time (tg),
each step fed the greedy token of the previous one. Time to first token = prefill + picking the
first token. EOS never stops the loop, so every rep decodes the same number of tokens.
"""
from __future__ import annotations

import atexit
import json
import random
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

if __package__:
    from toolkit.core.model_kind import BACKEND_OF_KIND, local_model

    from . import machine, safetar
else:  # shipped as a plain script next to machine.py, safetar.py and model_kind.py
    import machine
    import safetar
    from model_kind import BACKEND_OF_KIND, local_model

MARKER = "BENCH_JSON "


def detect(path: Path) -> tuple[str, Path]:
    """(backend, model path) for a GGUF file, an onnxruntime-genai / optimum ONNX / HF folder, or a bundle.

    A .tar.gz edge bundle is unpacked into a temporary folder and searched for its model.
    """
    path = Path(path)
    if path.is_file() and path.name.endswith((".tar.gz", ".tgz")):
        dest = Path(tempfile.mkdtemp(prefix="bench-bundle-"))
        atexit.register(shutil.rmtree, dest, True)  # the unpacked copy lives as long as this process
        safetar.safe_extract(path, dest)  # every member checked first, the same on every Python
        for cand in sorted(dest.rglob("*")):
            if cand.suffix == ".gguf" or (cand.is_dir() and (cand / "genai_config.json").is_file()):
                return detect(cand)
        raise ValueError(f"{path}: the bundle holds no .gguf file and no genai_config.json folder")
    found = local_model(path)
    if found is not None:
        return BACKEND_OF_KIND[found[0]], found[1]
    raise ValueError(f"{path}: not a .gguf file, an ONNX/genai/HF model folder or a .tar.gz bundle")


def synthetic_prompt(n: int, vocab: int, first: int | None, seed: int = 0) -> list[int]:
    """n token ids drawn uniformly from the vocabulary (seeded), BOS first where the model has one: llama-bench's
    prompt. The content does not change the cost of a dense forward pass, only the count does."""
    rng = random.Random(seed)
    ids = [rng.randrange(vocab) for _ in range(n)]
    if first is not None and n:
        ids[0] = first
    return ids


class LlamaCppLoop:
    """llama-cpp-python: one eval() of the whole prompt (n_batch = prompt length), then 1-token evals."""

    def __init__(self, path: Path, threads: int, n_ctx: int):
        import llama_cpp
        import numpy as np

        self.np, self.lib = np, llama_cpp
        # flash_attn as in llama-bench's default and the deploy runtime (eval/generate.py)
        self.llm = llama_cpp.Llama(str(path), n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx, n_threads=threads,
                                   n_threads_batch=threads, flash_attn=True, verbose=False)
        self.vocab, self.bos = self.llm.n_vocab(), self.llm.token_bos()

    def _argmax(self) -> int:
        logits = self.np.ctypeslib.as_array(self.lib.llama_get_logits(self.llm.ctx), shape=(self.vocab,))
        return int(logits.argmax())

    def prefill(self, ids: list[int]) -> int:
        self.llm.reset()
        self.llm.eval(ids)
        return self._argmax()

    def step(self, token: int) -> int:
        self.llm.eval([token])
        return self._argmax()


class GenaiLoop:
    """onnxruntime-genai: append_tokens runs the prompt; each generate_next_token picks the token from
    logits already computed and runs the model on it (measured in `prefill`: the first call is cheap)."""

    def __init__(self, path: Path, threads: int, n_ctx: int):
        import onnxruntime_genai as og

        self.og = og
        config = og.Config(str(path))
        config.overlay(json.dumps({"model": {"decoder": {"session_options": {
            "intra_op_num_threads": threads, "inter_op_num_threads": 1}}}}))
        self.model = og.Model(config)
        cfg = json.loads((path / "genai_config.json").read_text())["model"]
        self.vocab, self.bos, self.n_ctx = cfg["vocab_size"], cfg.get("bos_token_id"), n_ctx
        self.gen = None

    def prefill(self, ids: list[int]) -> int:
        params = self.og.GeneratorParams(self.model)
        # min_length = max_length: EOS must not end a rep early.
        params.set_search_options(max_length=self.n_ctx, min_length=self.n_ctx, do_sample=False)
        self.gen = self.og.Generator(self.model, params)
        self.gen.append_tokens(ids)
        self.gen.generate_next_token()  # samples from the prompt's logits
        return int(self.gen.get_next_tokens()[0])

    def step(self, token: int) -> int:
        self.gen.generate_next_token()  # runs the model on the last token, then picks the next one
        return int(self.gen.get_next_tokens()[0])


class HFLoop:
    """transformers forward with a KV cache (torch) or optimum's ORTModelForCausalLM (onnx): same loop."""

    def __init__(self, path: Path, threads: int, n_ctx: int, onnx: bool):
        import torch

        torch.set_num_threads(threads)
        self.torch = torch
        if onnx:
            import onnxruntime as ort
            from optimum.onnxruntime import ORTModelForCausalLM

            opts = ort.SessionOptions()
            opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
            self.model = ORTModelForCausalLM.from_pretrained(path, session_options=opts, use_cache=True)
        else:
            from transformers import AutoModelForCausalLM

            self.model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        cfg = self.model.config
        self.vocab, self.bos = cfg.vocab_size, cfg.bos_token_id
        self.past, self.n = None, 0

    def _forward(self, ids: list[int]) -> int:
        torch = self.torch
        self.n += len(ids)
        with torch.inference_mode():
            out = self.model(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, self.n, dtype=torch.long),
                             past_key_values=self.past, use_cache=True)
        self.past = out.past_key_values
        return int(out.logits[0, -1].argmax())

    def prefill(self, ids: list[int]) -> int:
        self.past, self.n = None, 0
        return self._forward(ids)

    def step(self, token: int) -> int:
        return self._forward([token])


def open_loop(backend: str, path: Path, threads: int, n_ctx: int):
    if backend == "llama.cpp":
        return LlamaCppLoop(path, threads, n_ctx)
    if backend == "genai":
        return GenaiLoop(path, threads, n_ctx)
    return HFLoop(path, threads, n_ctx, onnx=backend == "onnx")


def one_rep(loop, ids: list[int], gen_tokens: int) -> dict:
    """Times of one prefill and `gen_tokens` decode steps, in ms (perf_counter, monotonic)."""
    t0 = time.perf_counter()
    token = loop.prefill(ids)
    ttft = time.perf_counter() - t0
    steps = []
    for _ in range(gen_tokens):
        t = time.perf_counter()
        token = loop.step(token)
        steps.append(time.perf_counter() - t)
    decode_s = sum(steps)
    # prefill tok/s uses the time to first token: the greedy pick it adds is one argmax (microseconds).
    return {"ttft_ms": 1e3 * ttft, "prefill_tok_s": len(ids) / ttft,
            "decode_tok_s": gen_tokens / decode_s if decode_s else 0.0,
            "decode_step_ms": [round(1e3 * s, 4) for s in steps]}


def peak_rss_bytes() -> int:
    """This process's peak resident set (VmHWM, Linux), else getrusage's max RSS (KiB on Linux, B on macOS)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024


def run(spec: dict) -> dict:
    """Load, check the machine is quiet, warm up, time `reps` reps. spec keys: model, prompt_tokens,
    gen_tokens, reps, warmup, threads, allow_busy."""
    threads = spec["threads"]
    load = machine.load_average()
    check = machine.busy_check(threads)  # samples others' CPU use for ~1 s, our own process tree excluded
    if check["busy"] and not spec.get("allow_busy"):
        return {"error": "busy", "busy_check": check}
    backend, path = detect(Path(spec["model"]))
    pp, tg = spec["prompt_tokens"], spec["gen_tokens"]
    t0 = time.perf_counter()
    loop = open_loop(backend, path, threads, n_ctx=pp + tg + 1)
    load_s = time.perf_counter() - t0
    ids = synthetic_prompt(pp, loop.vocab, loop.bos)
    for _ in range(spec.get("warmup", 1)):
        one_rep(loop, ids, min(tg, 8))
    samples = [{"rep": i, **one_rep(loop, ids, tg)} for i in range(spec["reps"])]
    peak = peak_rss_bytes()  # before the bandwidth probe, whose buffer (≥ 256 MiB) is not the model's
    info = machine.machine_info(threads, measure_bandwidth=spec.get("measure_bandwidth", True))
    info["load_avg_1m_before"] = round(load, 2)
    info["busy_check"] = check
    return {"backend": backend, "model_path": str(path), "load_s": load_s, "samples": samples,
            "peak_rss_bytes": peak, "machine": info}


def main(argv: list[str]) -> int:
    spec = json.loads(argv[1])
    try:
        result = run(spec)
    except Exception as exc:  # reported to the parent as data; it raises a ToolkitError with this text
        result = {"error": f"{type(exc).__name__}: {exc}"}
    sys.stdout.write(MARKER + json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
