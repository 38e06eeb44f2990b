"""Teacher throughput of a real llama.cpp `llama-server` with 1, 2 and 4 parallel slots: generated tokens/s.

Each setting starts the server through toolkit's own LlamaServer (the way a recipe with
`teacher.server: llama-server` does), sends `--requests` distinct math questions with as many in
flight as there are slots, and counts the completion tokens the server reports.

    python bench/teacher_slots.py --model pkg:qwen2.5-coder-0.5b-instruct --threads 2 --requests 32 --out bench/results/teacher_slots.json
"""
from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from _common import machine, require_quiet

from toolkit.llama_server import LlamaServer
from toolkit.llama_tools import require_tool
from toolkit.models import resolve_model
from toolkit.strategies import teacher_messages

# 65 distinct questions: a repeated one would let a slot reuse its own earlier prompt and answer.
QUESTIONS = [f"A shop sells {a} pencils on Monday and {b} more on Tuesday than on Monday. "
             f"How many pencils does it sell in the two days?" for a in range(11, 99, 7) for b in (3, 8, 13, 21, 34)]


def ask(base_url: str, question: str, max_tokens: int) -> int:
    """One chat completion; the completion tokens the server generated."""
    body = {"model": "teacher", "messages": teacher_messages(question), "max_tokens": max_tokens,
            "temperature": 0.7, "seed": 0}
    req = urllib.request.Request(f"{base_url}/chat/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as r:
        return json.loads(r.read())["usage"]["completion_tokens"]


def measure(model: Path, slots: int, requests: int, max_tokens: int, threads: int, n_ctx: int, server: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp, \
            LlamaServer(model, Path(tmp) / "server.log", n_ctx=n_ctx, threads=threads, server=server,
                        slots=slots) as srv:
        ask(srv.base_url, QUESTIONS[0], 8)  # warm-up: weights paged in, first-request costs paid
        start = time.perf_counter()
        with ThreadPoolExecutor(max_workers=slots) as pool:
            tokens = list(pool.map(lambda q: ask(srv.base_url, q, max_tokens),
                                   [QUESTIONS[i % len(QUESTIONS)] for i in range(requests)]))
        seconds = time.perf_counter() - start
    return {"server": server, "slots": slots, "requests": requests, "completion_tokens": sum(tokens),
            "seconds": round(seconds, 2), "tokens_per_s": round(sum(tokens) / seconds, 1)}


def engine_ceiling(model: Path, slots: list[int], threads: int) -> dict:
    """What the engine itself allows: llama-bench's tokens/s for one forward pass over a batch of n
    tokens (pp n) against single-token decode (tg 64). n slots decode n tokens per step, so pp n / tg
    bounds the n-slot speed-up before any server cost (the batch's tokens attend to an empty context
    here, the slots' to their prompts). On few CPU cores a batch of n costs well over one token's time
    (2 cores: 4 tokens 1.7x one), because decoding there is largely compute-bound."""
    out = subprocess.run([str(require_tool("llama-bench")), "-m", str(model), "-t", str(threads),
                          "-p", ",".join(map(str, slots)), "-n", "64", "-r", "3", "-o", "json"],
                         capture_output=True, text=True, check=True)
    runs = json.loads(out.stdout)
    tg = next(r["avg_ts"] for r in runs if r["n_gen"])
    pp = {r["n_prompt"]: r["avg_ts"] for r in runs if r["n_prompt"]}
    return {"tg_tokens_per_s": round(tg, 1),
            "batch": [{"tokens": n, "tokens_per_s": round(pp[n], 1), "vs_decode": round(pp[n] / tg, 2)}
                      for n in slots]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="pkg:qwen2.5-coder-0.5b-instruct", help="teacher GGUF reference")
    ap.add_argument("--slots", default="1,2,4")
    # 32: with 4 slots that is 8 waves, so the first wave's four prefills of the shared few-shot
    # prompt and the last wave's idle slots weigh little (measured: it did not raise the 4-slot gain).
    ap.add_argument("--requests", type=int, default=32, help="requests per setting")
    ap.add_argument("--max-tokens", type=int, default=96)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n-ctx", type=int, default=1024, help="context per slot")
    ap.add_argument("--server", default="llama-server", choices=["llama-server", "llama_cpp.server"])
    ap.add_argument("--force", action="store_true", help="time even on a busy machine")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    require_quiet(args.threads, args.force)
    model = resolve_model(args.model).path
    slots = [int(n) for n in args.slots.split(",")]
    rows = [measure(model, n, args.requests, args.max_tokens, args.threads, args.n_ctx, args.server) for n in slots]
    ceiling = engine_ceiling(model, slots, args.threads)
    for row, bound in zip(rows, ceiling["batch"]):
        row["vs_first"] = round(row["tokens_per_s"] / rows[0]["tokens_per_s"], 2)
        row["engine_bound"] = round(bound["vs_decode"] / ceiling["batch"][0]["vs_decode"], 2)
        print(json.dumps(row), flush=True)
    print(json.dumps({"engine_ceiling": ceiling}), flush=True)
    binary = str(require_tool("llama-server")) if args.server == "llama-server" else "llama_cpp.server"
    result = {"bench": "teacher_slots", "model": args.model, "binary": binary, "max_tokens": args.max_tokens,
              "rows": rows, "engine_ceiling": ceiling, "machine": machine(args.threads)}
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
