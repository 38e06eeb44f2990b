"""`toolkit bench` against llama.cpp's own `llama-bench` on the same GGUF: decode and prefill tok/s, same threads,
prompt and generation lengths, interleaved in fresh processes.

For each thread count the pair runs `--pairs` times in the order ours, theirs, theirs, ours, ... so that a drift
of the machine falls on both. `toolkit bench` decodes through llama-cpp-python one token per call and takes the
argmax in Python (what a deployed runner does); `llama-bench` times llama.cpp's own loop without sampling. The
ratio ours / theirs of the mean decode tok/s says how much of llama.cpp's speed the toolkit's figure shows.

    scripts/build-llama-tools.sh       # llama-bench, once
    .venv/bin/python bench/decode_vs_llama_bench.py runs/quickstart/deploy/gguf-q8_0/model/model-q8_0.gguf \\
        --out bench/results/decode_vs_llama_bench.json
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import emit, machine, require_quiet

from toolkit.runtime.llama_tools import require_tool


def ours(model: Path, threads: int, prompt: int, gen: int, reps: int) -> dict:
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "bench.json"
        subprocess.run([str(Path(sys.executable).parent / "toolkit"), "bench", str(model), "--threads", str(threads),
                        "--prompt-tokens", str(prompt), "--gen-tokens", str(gen), "--reps", str(reps), "--allow-busy",
                        "--out", str(out), "--quiet"], check=True)
        row = json.loads(out.read_text())
    return {"decode_tok_s": row["decode_tok_s"]["mean"], "prefill_tok_s": row["prefill_tok_s"]["mean"]}


def theirs(model: Path, threads: int, prompt: int, gen: int, reps: int) -> dict:
    done = subprocess.run([str(require_tool("llama-bench")), "-m", str(model), "-t", str(threads), "-p", str(prompt),
                           "-n", str(gen), "-r", str(reps), "-o", "json"], check=True, capture_output=True, text=True)
    rows = json.loads(done.stdout)
    decode = next(r for r in rows if r["n_gen"] == gen and r["n_prompt"] == 0)
    prefill = next(r for r in rows if r["n_prompt"] == prompt and r["n_gen"] == 0)
    return {"decode_tok_s": decode["avg_ts"], "prefill_tok_s": prefill["avg_ts"], "build": decode.get("build_commit")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", type=Path, help="a GGUF file")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--gen-tokens", type=int, default=128)
    ap.add_argument("--reps", type=int, default=5, help="repetitions inside each tool's run")
    ap.add_argument("--pairs", type=int, default=2, help="interleaved runs of each tool per thread count")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--force", action="store_true", help="time even on a busy machine")
    args = ap.parse_args()
    threads = [int(t) for t in args.threads.split(",")]
    require_quiet(max(threads), args.force)
    rows = []
    for t in threads:
        runs = {"ours": [], "llama-bench": []}
        for i in range(args.pairs):
            order = ("ours", "llama-bench") if i % 2 == 0 else ("llama-bench", "ours")
            for who in order:
                fn = ours if who == "ours" else theirs
                runs[who].append(fn(args.model, t, args.prompt_tokens, args.gen_tokens, args.reps))
                print(json.dumps({"threads": t, "tool": who, **runs[who][-1]}), flush=True)
        mean = {who: {k: statistics.mean(r[k] for r in rs) for k in ("decode_tok_s", "prefill_tok_s")}
                for who, rs in runs.items()}
        rows.append({"threads": t, "runs": runs, "mean": mean,
                     "decode_ours_over_llama_bench": round(mean["ours"]["decode_tok_s"]
                                                           / mean["llama-bench"]["decode_tok_s"], 3),
                     "prefill_ours_over_llama_bench": round(mean["ours"]["prefill_tok_s"]
                                                            / mean["llama-bench"]["prefill_tok_s"], 3)})
    emit({"bench": "decode_vs_llama_bench", "model": str(args.model), "machine": machine(max(threads)),
          "settings": {"prompt_tokens": args.prompt_tokens, "gen_tokens": args.gen_tokens, "reps": args.reps,
                       "pairs": args.pairs}, "rows": rows}, args.out)


if __name__ == "__main__":
    main()
