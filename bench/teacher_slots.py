"""Teacher throughput of a real llama.cpp `llama-server` with 1, 2 and 4 parallel slots: generated tokens/s.

Each setting runs the recipe's own teacher path: `open_teacher` with `teacher.server: llama-server`
and `teacher.slots: N` starts the server and sends `--requests` distinct math questions (the
teacher's few-shot CoT prompt) through toolkit's OpenAI client with N × `--in-flight` in flight (the
recipe's `teacher.concurrency`), into a fresh request cache. `--server-env KEY=VALUE` hands the server
one of llama.cpp's LLAMA_ARG_* settings (its environment form of a flag), to try one without a code change.
Generated tokens are the server's own count, from the timing summary it logs for every finished request.
Then llama-batched-bench decodes 1, 2 and 4 sequences with prompts of the same length on the same model and
threads: the engine's own bound, before any server cost. Two bounds per row: decode only (as if every prompt
token came from a cache), and prefill-aware (the prompt tokens the server computed, per its log, at the
engine's prefill rate, plus the answers at its decode rate).

    python bench/teacher_slots.py --model pkg:qwen2.5-coder-0.5b-instruct --threads 2 --requests 32 \
        --out bench/results/teacher_slots.json
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import tempfile
import time
from pathlib import Path

from _common import machine, require_quiet

from toolkit.teacher.cache import RequestCache
from toolkit.runtime.llama_tools import require_tool
from toolkit.runtime.models import resolve_model
from toolkit.core.recipe import TeacherConfig
from toolkit.data.strategies import teacher_messages
from toolkit.teacher.teachers import open_teacher

# 65 distinct questions: a repeated one would let a slot reuse its own earlier prompt and answer.
QUESTIONS = [f"A shop sells {a} pencils on Monday and {b} more on Tuesday than on Monday. "
             f"How many pencils does it sell in the two days?" for a in range(11, 99, 7) for b in (3, 8, 13, 21, 34)]
WARM_UP = QUESTIONS[0].replace("11 pencils", "5 pencils")  # same template and length, not in QUESTIONS

# llama-server's per-request timing summary: "prompt eval time = 191.30 ms / 24 tokens" (the part of
# the prompt it had to compute, the rest came from the slot's cache) and "eval time = ... / 55 tokens".
_PROMPT_LINE = re.compile(r"prompt eval time =\s+[\d.]+ ms /\s+(\d+) tokens")
_EVAL_LINE = re.compile(r"\|\s+eval time =\s+[\d.]+ ms /\s+(\d+) tokens")


def measure(model: str, slots: int, in_flight: int, requests: int, max_tokens: int, threads: int, n_ctx: int) -> dict:
    cfg = TeacherConfig(model=model, server="llama-server", slots=slots, n_ctx=n_ctx, threads=threads,
                        max_tokens=max_tokens, concurrency=slots * in_flight)
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "teacher-server.log"
        with open_teacher(cfg, RequestCache(Path(tmp) / "teacher.sqlite"), base_dir=Path.cwd(),
                          log_dir=Path(tmp), seed=0) as teacher:
            # Warm-up, untimed: starts the server, pages the weights in, fills one slot's prompt cache.
            teacher.complete([teacher_messages(WARM_UP)], 1, cfg.temperature)
            mark = log.stat().st_size
            prompts = [teacher_messages(q) for q in QUESTIONS[:requests]]
            start = time.perf_counter()
            teacher.complete(prompts, 1, cfg.temperature)
            seconds = time.perf_counter() - start
            sent = teacher.requests_sent
        text = log.read_text(errors="replace")
    tokens = sum(int(n) for n in _EVAL_LINE.findall(text[mark:]))
    prompt = _PROMPT_LINE.search(text)  # the warm-up's, all of it computed
    if prompt is None or not tokens:
        raise SystemExit(f"no per-request timing lines in the llama-server log ({len(text)} characters): "
                         "this llama-server does not log them at its default verbosity")
    return {"slots": slots, "in_flight_per_slot": in_flight, "requests": requests, "requests_sent": sent - 1,
            "completion_tokens": tokens, "prompt_tokens": int(prompt.group(1)),
            # the prompt tokens the server computed in the timed part (the rest came from its slots' caches)
            "prompt_tokens_computed": sum(int(n) for n in _PROMPT_LINE.findall(text[mark:])),
            "seconds": round(seconds, 2), "tokens_per_s": round(tokens / seconds, 1)}


def engine_ceiling(model: Path, slots: list[int], threads: int, prompt_tokens: int, gen_tokens: int) -> dict:
    """llama-batched-bench: N sequences, each with its own prompt of `prompt_tokens`, decode `gen_tokens`
    together, logits for every sequence, as N busy slots do. Its decode tokens/s at N over that at 1 is
    the most N slots can gain on this engine and machine (llama-bench's pp N is no bound: it computes
    the output layer for one token of the N, and attends to an empty context)."""
    ctx = max(slots) * (prompt_tokens + gen_tokens)
    out = subprocess.run([str(require_tool("llama-batched-bench")), "-m", str(model), "-t", str(threads),
                          "-tb", str(threads), "-c", str(ctx), "-npp", str(prompt_tokens), "-ntg", str(gen_tokens),
                          "-npl", ",".join(map(str, slots)), "--output-format", "jsonl"],
                         capture_output=True, text=True, check=True)
    runs = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    return {"prompt_tokens": prompt_tokens, "gen_tokens": gen_tokens,
            "decode": [{"sequences": r["pl"], "tokens_per_s": round(r["speed_tg"], 1),
                        "prefill_tokens_per_s": round(r["speed_pp"], 1)} for r in runs]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="pkg:qwen2.5-coder-0.5b-instruct", help="teacher GGUF reference")
    ap.add_argument("--slots", default="1,2,4")
    ap.add_argument("--in-flight", default="1", help="requests in flight per slot, one row each (e.g. 1,2)")
    ap.add_argument("--server-env", action="append", default=[], metavar="KEY=VALUE",
                    help="a llama-server setting as its environment variable, e.g. LLAMA_ARG_UBATCH=256 (repeatable)")
    # 32: with 4 slots that is 8 waves, so the first wave's four prefills of the shared few-shot
    # prompt and the last wave's idle slots weigh little (measured: it did not raise the 4-slot gain).
    ap.add_argument("--requests", type=int, default=32, help=f"requests per setting (at most {len(QUESTIONS)})")
    ap.add_argument("--max-tokens", type=int, default=96)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n-ctx", type=int, default=1024, help="context per slot")
    ap.add_argument("--force", action="store_true", help="time even on a busy machine")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    if not 1 <= args.requests <= len(QUESTIONS):
        ap.error(f"--requests must be between 1 and {len(QUESTIONS)} (the distinct questions)")
    require_quiet(args.threads, args.force)
    slots = [int(n) for n in args.slots.split(",")]
    server_env = dict(kv.split("=", 1) for kv in args.server_env)
    os.environ.update(server_env)  # inherited by the llama-server the teacher starts, and by llama-batched-bench
    rows = [measure(args.model, n, k, args.requests, args.max_tokens, args.threads, args.n_ctx)
            for n in slots for k in (int(x) for x in args.in_flight.split(","))]
    gen = round(rows[0]["completion_tokens"] / rows[0]["requests"])  # the mean answer length
    ceiling = engine_ceiling(resolve_model(args.model).path, sorted({1, *slots}), args.threads,
                             rows[0]["prompt_tokens"], gen)
    base = ceiling["decode"][0]["tokens_per_s"]
    bound_at = {b["sequences"]: b["tokens_per_s"] for b in ceiling["decode"]}
    prefill_at = {b["sequences"]: b["prefill_tokens_per_s"] for b in ceiling["decode"]}
    for row in rows:
        row["vs_first"] = round(row["tokens_per_s"] / rows[0]["tokens_per_s"], 2)
        row["engine_bound"] = round(bound_at[row["slots"]] / base, 2)
        # the server's tokens/s over the engine's own decode tokens/s with as many sequences as slots
        row["share_of_bound"] = round(row["tokens_per_s"] / bound_at[row["slots"]], 3)
        # The prefill-aware bound: the engine's seconds for the same work, the prompt tokens the server computed
        # at the engine's prefill rate for as many prompts as slots, plus the answers at its decode rate; the
        # server's tokens/s over it is what its scheduling keeps (the decode-only bound above also asks
        # every prompt token to come from a cache).
        n = row["slots"]
        engine_s = row["prompt_tokens_computed"] / prefill_at[n] + row["completion_tokens"] / bound_at[n]
        row["prefill_aware_bound_tokens_per_s"] = round(row["completion_tokens"] / engine_s, 1)
        row["share_of_prefill_aware_bound"] = round(row["tokens_per_s"] * engine_s / row["completion_tokens"], 3)
        print(json.dumps(row), flush=True)
    print(json.dumps({"engine_ceiling": ceiling}), flush=True)
    result = {"bench": "teacher_slots", "model": args.model, "binary": str(require_tool("llama-server")),
              "max_tokens": args.max_tokens, "server_env": server_env, "rows": rows, "engine_ceiling": ceiling,
              "machine": machine(args.threads)}
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
