"""How closely exports follow their source on many math prompts: greedy agreement beyond export's 3 samples.

`toolkit export` checks parity on 3 prompts, enough to catch a broken graph but too few to rank
quantization choices. This script asks the first `--limit` problems of a suite (in the student's chat
prompt) of the fp32 source in torch and of each export folder in its own runtime, `--max-new-tokens`
greedy tokens each, and reports the share of first tokens that match and the mean matched prefix,
with each export's size and decode tokens/s (bench/export_formats.py's timing: 64 greedy tokens after
an untimed prefill, median of `--reps`).

    python bench/export_agreement.py pkg:smollm2-135m-instruct /tmp/x-int4 /tmp/x-int4-head8 --suite multiarith --limit 40 --out bench/results/export_agreement.json
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from _common import hf_folder, machine, require_quiet
from export_formats import decode_genai, decode_gguf, decode_onnx

from toolkit.export import parity
from toolkit.export.source import source_prompt
from toolkit.export.accuracy import eval_problems
from toolkit.data.strategies import student_messages

RUNTIMES = {"onnx": parity.onnx_outputs, "genai": parity.genai_outputs, "gguf": parity.gguf_outputs}
DECODE = {"onnx": decode_onnx, "genai": decode_genai, "gguf": decode_gguf}


def reference(source: Path, questions: list[str], threads: int, max_new_tokens: int) -> parity.Reference:
    """The torch source's greedy continuations of `questions` in the student's chat prompt."""
    ref = parity.Reference(source, threads, max_new_tokens, source_prompt(source))
    ref.prompt_ids = [ref.tok.apply_chat_template(student_messages(q), add_generation_prompt=True)
                      for q in questions]
    ref.greedy = [ref.generate(ref.model, ids) for ids in ref.prompt_ids]
    return ref


def agreement(ref: parity.Reference, folder: Path, threads: int, reps: int) -> dict:
    manifest = json.loads((folder / "export.json").read_text())
    fmt, quant = manifest["format"], manifest["quant"]
    target = next(folder.glob("*.gguf")) if fmt == "gguf" else folder
    text_ids, greedy = RUNTIMES[fmt](ref, target, threads)
    block = parity.compare(ref, text_ids, greedy, quant, None, None)["greedy"]
    decode = statistics.median(DECODE[fmt](target, threads, 64) for _ in range(reps))
    return {"export": str(folder), "format": fmt, "quant": quant, "notes": manifest["notes"],
            "mb": round(manifest["total_bytes"] / 1e6, 1), "prompts": block["prompts"],
            "first_token_match": round(block["first_token_match"], 3), "token_agreement": block["token_agreement"],
            "exact_sequences": round(block["exact_sequences"], 3), "decode_tokens_per_s": round(decode, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("source", help="the model the exports were made from (GGUF, folder or pkg:NAME)")
    ap.add_argument("exports", nargs="+", type=Path, help="folders written by toolkit export")
    ap.add_argument("--suite", default="multiarith")
    ap.add_argument("--limit", type=int, default=40)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--data-root", default="../shared/data")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3, help="decode timings per export (median)")
    ap.add_argument("--force", action="store_true", help="run even on a busy machine")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    require_quiet(args.threads, args.force)
    questions = [p.question for p in eval_problems(args.suite, args.limit, args.data_root)]
    with tempfile.TemporaryDirectory() as tmp:
        ref = reference(hf_folder(args.source, Path(tmp) / "source"), questions, args.threads,
                        args.max_new_tokens)
        rows = []
        for folder in args.exports:
            rows.append(agreement(ref, folder, args.threads, args.reps))
            print(json.dumps(rows[-1]), flush=True)
    result = {"bench": "export_agreement", "source": args.source, "suite": args.suite, "limit": args.limit,
              "max_new_tokens": args.max_new_tokens, "rows": rows, "machine": machine(args.threads)}
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
