"""Export one model to every format/quantization, then measure file size and decode tokens/s with each plain runtime.

    .venv/bin/python bench/export_formats.py pkg:smollm2-135m-instruct --out bench/results/export-smollm2 --threads 2

Writes OUT/<format>-<quant>/ (each with export.json) and OUT/formats.json + OUT/formats.md. Decode speed is
measured only when other processes leave room for --threads (sampled for a second after each export; this
script's own work does not count), else recorded as null: contention on a small CPU makes the figures
meaningless (DESIGN.md, contention trap). Sizes are always recorded.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

from toolkit.eval.machine import busy_check
from toolkit.export.config import ExportConfig
from toolkit.export.run import export_model

PLAN = [("gguf", "f16"), ("gguf", "q8_0"), ("gguf", "q4_k_m"), ("gguf", "q4_0"),
        ("genai", "fp32"), ("genai", "int4"), ("onnx", "fp32"), ("onnx", "int8"), ("onnx", "int4")]
PROMPT = "Tom has 3 apples and buys 5 more. How many apples does he have? Think step by step."


def decode_gguf(path: Path, threads: int, n: int) -> float:
    from llama_cpp import Llama

    llm = Llama(str(path), n_ctx=512, n_threads=threads, n_threads_batch=threads, verbose=False)
    ids = llm.tokenize(PROMPT.encode(), add_bos=False)
    llm.reset()
    llm.eval(ids)  # prefill, not timed
    start = time.perf_counter()
    for _ in range(n):
        token = llm.sample(top_k=1, temp=0.0)
        llm.eval([token])
    return n / (time.perf_counter() - start)


def decode_genai(folder: Path, threads: int, n: int) -> float:
    import onnxruntime_genai as og

    from toolkit.export.parity import open_genai

    model = open_genai(folder, threads)
    ids = og.Tokenizer(model).encode(PROMPT)
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(ids) + n + 1, min_length=len(ids) + n + 1, do_sample=False)
    gen = og.Generator(model, params)
    gen.append_tokens(ids)  # prefill, not timed
    start = time.perf_counter()
    for _ in range(n):
        gen.generate_next_token()
    return n / (time.perf_counter() - start)


def decode_onnx(folder: Path, threads: int, n: int) -> float:
    import onnxruntime as ort
    import torch
    from optimum.onnxruntime import ORTModelForCausalLM
    from transformers import AutoTokenizer

    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    model = ORTModelForCausalLM.from_pretrained(folder, session_options=so)
    # Only ids and mask: a PreTrainedTokenizerFast (our cleaned byte-level tokenizer) also returns
    # token_type_ids, which generate() refuses for a causal LM.
    enc = AutoTokenizer.from_pretrained(folder)(PROMPT, return_tensors="pt")
    x = {k: enc[k] for k in ("input_ids", "attention_mask")}

    def run(k: int) -> float:
        start = time.perf_counter()
        with torch.no_grad():
            model.generate(**x, max_new_tokens=k, min_new_tokens=k, do_sample=False)
        return time.perf_counter() - start

    return (n - 1) / (run(n) - run(1))  # the difference removes prefill and the first step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--out", required=True)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--gen-tokens", type=int, default=64)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    out = Path(args.out)
    rows = []
    for fmt, quant in PLAN:
        folder = out / f"{fmt}-{quant}"
        m = export_model(args.model, folder, ExportConfig(format=fmt, quant=quant, threads=args.threads))
        row = {"format": fmt, "quant": quant, "bytes": m["total_bytes"], "passed": m["passed"],
               "first_token_match": m["parity"]["greedy"]["first_token_match"],
               "token_agreement": m["parity"]["greedy"]["token_agreement"], "decode_tok_s": None}
        check = busy_check(args.threads)
        row["others_cores"] = check["others_cores"]
        if not check["busy"]:
            target = next(folder.glob("*.gguf")) if fmt == "gguf" else folder
            fn = {"gguf": decode_gguf, "genai": decode_genai, "onnx": decode_onnx}[fmt]
            speeds = [fn(target, args.threads, args.gen_tokens) for _ in range(args.reps)]
            row.update(decode_tok_s=round(statistics.mean(speeds), 1),
                       decode_tok_s_std=round(statistics.pstdev(speeds), 1))
        rows.append(row)
        print(json.dumps(row), flush=True)
    (out / "formats.json").write_text(json.dumps({"model": args.model, "threads": args.threads,
                                                  "gen_tokens": args.gen_tokens, "rows": rows}, indent=2) + "\n")
    lines = ["| format | quant | MB | decode tok/s | first token | token agreement |", "|---|---|---|---|---|---|"]
    for r in rows:
        speed = f"{r['decode_tok_s']} ± {r['decode_tok_s_std']}" if r["decode_tok_s"] else "not measured (busy)"
        lines.append(f"| {r['format']} | {r['quant']} | {r['bytes'] / 1e6:.1f} | {speed} | "
                     f"{r['first_token_match']:.0%} | {r['token_agreement']:.0%} |")
    (out / "formats.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
