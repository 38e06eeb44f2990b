"""Does flash attention change what a GGUF answers? The same export scored on the same held-out problems with
llama-cpp-python's flash attention off (the binding's default) and on (ours since issue 34), greedy, with the
calculator, each arm in a fresh process; per-sample outputs compared and the accuracy paired.

    .venv/bin/python bench/flash_attn_outputs.py runs/quickstart/deploy/gguf-q8_0/model/model-q8_0.gguf \\
        runs/quickstart/heldout.jsonl --out bench/results/flash_attn_outputs.json

The off arm is made here, by wrapping llama_cpp.Llama in the child process: the library has one way to load.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import emit, machine, require_quiet

from toolkit.eval.rounds_report import compare

CHILD = r"""
import json, sys, time
from pathlib import Path
import llama_cpp
model, problems, out, flash, max_new, threads = sys.argv[1:7]
if flash == "off":
    class Off(llama_cpp.Llama):
        def __init__(self, *a, **kw):
            kw["flash_attn"] = False
            super().__init__(*a, **kw)
    llama_cpp.Llama = Off
from toolkit.data.problems import read_jsonl
from toolkit.eval.accuracy import evaluate
from toolkit.eval.generate import open_generator
gen = open_generator(model, "llama.cpp", threads=int(threads), calculator=True)
assert gen.llm.context_params.flash_attn_type == (1 if flash == "on" else 0)
start = time.perf_counter()
evaluate(gen, {"heldout": read_jsonl(problems)}, Path(out) / "results.json", model=model,
         max_new_tokens=int(max_new))
seconds = time.perf_counter() - start
rows = [json.loads(line) for line in (Path(out) / "samples_heldout.jsonl").read_text().splitlines()]
tokens = sum(len(gen.llm.tokenize(r["output"].encode(), add_bos=False, special=True)) for r in rows)
print(json.dumps({"seconds": round(seconds, 2), "generated_tokens": tokens}))
"""


def arm(model: Path, problems: Path, folder: Path, flash: str, max_new: int, threads: int) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    r = subprocess.run([sys.executable, "-c", CHILD, str(model), str(problems), str(folder), flash, str(max_new),
                        str(threads)], capture_output=True, text=True, check=True)
    rows = [json.loads(line) for line in (folder / "samples_heldout.jsonl").read_text().splitlines()]
    return {**json.loads(r.stdout.strip().splitlines()[-1]), "rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", type=Path, help="a GGUF file")
    ap.add_argument("problems", type=Path, help="a run's heldout.jsonl")
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--force", action="store_true", help="run on a busy machine")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    require_quiet(args.threads, args.force)
    with tempfile.TemporaryDirectory() as tmp:
        runs = {flash: arm(args.model, args.problems, Path(tmp) / flash, flash, args.max_new_tokens, args.threads)
                for flash in ("off", "on")}
    by_id = {f: {r["id"]: r for r in runs[f]["rows"]} for f in runs}
    off, on = by_id["off"], by_id["on"]
    same = [i for i in off if off[i]["output"] == on[i]["output"]]
    strict = {f: {i: r["strict_match"] for i, r in rows.items()} for f, rows in by_id.items()}
    result = {
        "bench": "flash_attn_outputs", "model": str(args.model), "problems": str(args.problems), "n": len(off),
        "max_new_tokens": args.max_new_tokens, "threads": args.threads, "machine": machine(args.threads),
        "eval_seconds": {f: runs[f]["seconds"] for f in runs},
        # the outputs' tokens re-tokenized (prompt and forced calculator results not told apart): a rate, not a bench
        "generated_tokens": {f: runs[f]["generated_tokens"] for f in runs},
        "ms_per_generated_token": {f: round(1000 * runs[f]["seconds"] / max(1, runs[f]["generated_tokens"]), 2)
                                   for f in runs},
        "strict_match": {f: sum(strict[f].values()) / len(strict[f]) for f in strict},
        "outputs_identical": len(same), "outputs_differ": sorted(set(off) - set(same)),
        "paired_on_minus_off": compare("flash attention on", strict["on"], "off", strict["off"]),
        "command": "python bench/flash_attn_outputs.py " + " ".join(sys.argv[1:]),
    }
    emit(result, args.out)


if __name__ == "__main__":
    main()
