"""Student self-sampling throughput (SIKeD's on-policy step): the same prompts, k samples each at temperature 0.7,
through every backend the engine can sample with; generated tokens per second of wall time.

    python bench/student_sampling.py --model pkg:smollm2-135m-instruct --problems 16 --samples 4 --threads 2 \
        --out bench/results/student_sampling.json

The model is exported once per format (`toolkit export`, into --work) before any timing; export time is
reported beside the sampling time, since a self-guided iteration pays both.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from _common import emit, hf_folder, machine, require_quiet

ROOT = Path(__file__).resolve().parents[1]
# (name, export format, quant, generator backend); "torch" samples the HF folder itself.
BACKENDS = [("torch", None, None, "torch"), ("genai-fp32", "genai", "fp32", "genai"),
            ("genai-int4", "genai", "int4", "genai"), ("gguf-q8_0", "gguf", "q8_0", "llama.cpp")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="pkg:smollm2-135m-instruct")
    ap.add_argument("--data-root", default=str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--problems", type=int, default=16)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--backends", default=",".join(b[0] for b in BACKENDS))
    ap.add_argument("--work", type=Path, help="folder for the exports (default: a temporary one)")
    ap.add_argument("--force", action="store_true", help="time even on a busy machine")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()

    import torch
    from transformers import AutoTokenizer

    from toolkit.eval.generate import open_generator
    from toolkit.export.config import ExportConfig
    from toolkit.export.run import export_model
    from toolkit.data.problems import load_suite
    from toolkit.data.strategies import training_prompt

    torch.set_num_threads(args.threads)
    wanted = args.backends.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        src = hf_folder(args.model, work / "hf")
        tok = AutoTokenizer.from_pretrained(src)  # one tokenizer counts every backend's tokens
        problems = load_suite("multiarith", args.data_root)[: args.problems]
        prompts = [training_prompt(p.question, ["cot"]) for p in problems for _ in range(args.samples)]
        rows = []
        for name, fmt, quant, backend in BACKENDS:
            if name not in wanted:
                continue
            export_s = 0.0
            target = src
            if fmt:
                start = time.perf_counter()
                export_model(str(src), work / name, ExportConfig(format=fmt, quant=quant, threads=args.threads))
                export_s = time.perf_counter() - start
                target = work / name
                if fmt == "gguf":
                    target = next(target.glob("*.gguf"))
            require_quiet(args.threads, args.force)
            gen = open_generator(str(target), backend, batch_size=args.batch_size, threads=args.threads, seed=0)
            start = time.perf_counter()
            outs = gen.generate(prompts, max_new_tokens=args.max_new_tokens, temperature=0.7)
            seconds = time.perf_counter() - start
            gen.close()
            tokens = sum(len(tok(o, add_special_tokens=False)["input_ids"]) for o in outs)
            rows.append({"backend": name, "prompts": len(prompts), "generated_tokens": tokens,
                         "sample_s": round(seconds, 2), "tok_s": round(tokens / seconds, 1),
                         "export_s": round(export_s, 1)})
            print(rows[-1], file=sys.stderr)
    base = next((r["tok_s"] for r in rows if r["backend"] == "torch"), None)
    for r in rows:
        r["vs_torch"] = round(r["tok_s"] / base, 2) if base else None
    emit({"bench": "student_sampling", "model": args.model, "problems": args.problems, "samples": args.samples,
          "max_new_tokens": args.max_new_tokens, "batch_size": args.batch_size, "temperature": 0.7,
          "rows": rows, "machine": machine(args.threads),
          "command": " ".join([".venv/bin/python", "bench/student_sampling.py", *sys.argv[1:]])}, args.out)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
