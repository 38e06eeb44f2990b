"""Round-eval backends (eval.backend): the base student answers the quickstart's held-out problems with torch and
with its onnxruntime-genai fp32 export, greedy, calculator off; seconds, strict accuracy and identical answers.

    python bench/eval_backends.py --model pkg:smollm2-135m-instruct --problems 40 --max-new-tokens 128 \
        --batch-size 20 --threads 2 --out bench/results/eval_backends.json

Each backend is timed from the model reference to the last answer, as a round eval pays it: torch loads the
model (a GGUF package is dequantized), genai exports it (parity check included; once, its seconds counted in
both genai rows) and loads the export. genai runs at --batch-size and at batch 1: its left-padded batches are
not decoded as torch decodes them, one prompt at a time is (the `differing` outputs show it). The problems are
the first --problems held-out problems of recipes/quickstart.yaml's split. The machine may be shared: the load
average is recorded beside each timing, and the speed is the ratio within one run.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from _common import emit, machine

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="pkg:smollm2-135m-instruct")
    ap.add_argument("--recipe", type=Path, default=ROOT / "recipes" / "quickstart.yaml")
    ap.add_argument("--problems", type=int, default=40)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()

    # heavy optional runtime, imported on first use
    import torch

    from toolkit.runtime.models import resolve_model
    from toolkit.core.recipe import load_recipe
    from toolkit.eval.accuracy import evaluate
    from toolkit.eval.generate import TorchGenerator, open_generator
    from toolkit.export.config import ExportConfig
    from toolkit.export.run import export_model
    from toolkit.pipeline.distill import select_problems
    from toolkit.runtime.loading import load_model_and_tokenizer

    torch.set_num_threads(args.threads)
    heldout = select_problems(load_recipe(args.recipe))[1][: args.problems]
    rows, samples = [], {}
    export_s = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for backend, batch in (("torch", args.batch_size), ("genai", args.batch_size), ("genai", 1)):
            name = f"{backend}-b{batch}"
            load_before = round(os.getloadavg()[0], 2)
            start = time.perf_counter()
            if backend == "torch":  # as RunContext.student_sampler under eval.backend torch
                model, tok = load_model_and_tokenizer(resolve_model(args.model))
                gen = TorchGenerator(model, tok, batch_size=batch, threads=args.threads)
                prepare_s = time.perf_counter() - start
            else:  # as RunContext.sampler_model under eval.backend genai: exported once
                if not export_s:
                    export_model(args.model, work / "genai", ExportConfig(format="genai", quant="fp32",
                                                                         threads=args.threads))
                    export_s = time.perf_counter() - start
                opened = time.perf_counter()
                gen = open_generator(str(work / "genai"), "genai", batch_size=batch, threads=args.threads)
                # The export counted in full in each genai row: a round eval pays it whatever its batch size.
                prepare_s = export_s + time.perf_counter() - opened
            decoding = time.perf_counter()
            report = evaluate(gen, {"heldout": heldout}, work / name / "results.json", model=args.model,
                              max_new_tokens=args.max_new_tokens)
            decode_s = time.perf_counter() - decoding
            gen.close()
            del gen
            if backend == "torch":
                del model, tok  # one model in memory at a time
            samples[name] = [json.loads(x) for x in (work / name / "samples_heldout.jsonl").read_text().splitlines()]
            res = report["results"]["heldout"]
            rows.append({"backend": backend, "batch_size": batch, "n": res["n"], "strict_match": res["strict_match"],
                         "strict_ci95": res["strict_match_ci95"], "flexible_extract": res["flexible_extract"],
                         "load_or_export_s": round(prepare_s, 1), "decode_s": round(decode_s, 1),
                         "total_s": round(prepare_s + decode_s, 1), "load_avg_1m_before": load_before,
                         "load_avg_1m_after": round(os.getloadavg()[0], 2)})
            print(rows[-1], file=sys.stderr)
    ref = samples[f"torch-b{args.batch_size}"]
    torch_row = rows[0]
    for row in rows[1:]:
        other = samples[f"{row['backend']}-b{row['batch_size']}"]
        assert [x["id"] for x in ref] == [x["id"] for x in other]
        row.update(identical_outputs=sum(a["output"] == b["output"] for a, b in zip(ref, other)),
                   identical_strict_answers=sum(a["strict"] == b["strict"] for a, b in zip(ref, other)),
                   same_strict_verdict=sum(a["strict_match"] == b["strict_match"] for a, b in zip(ref, other)),
                   speedup_total=round(torch_row["total_s"] / row["total_s"], 2),
                   speedup_decode=round(torch_row["decode_s"] / row["decode_s"], 2),
                   differing=[{"id": a["id"], "torch": a["output"], "genai": b["output"]}
                              for a, b in zip(ref, other) if a["output"] != b["output"]])
    emit({"bench": "eval_backends", "model": args.model, "problems": len(heldout),
          "split": f"first {len(heldout)} held-out problems of {args.recipe.relative_to(ROOT)}",
          "max_new_tokens": args.max_new_tokens, "temperature": 0.0, "calculator": False,
          "compared_with": f"torch at batch {args.batch_size}", "export_s": round(export_s, 1), "rows": rows,
          "machine": machine(args.threads),
          "command": " ".join([".venv/bin/python", "bench/eval_backends.py", *sys.argv[1:]])}, args.out)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
