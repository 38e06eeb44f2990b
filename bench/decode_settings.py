"""Which llama.cpp settings move a GGUF's decode speed on this CPU: llama.cpp's own `llama-bench`, one setting
changed at a time from its defaults, interleaved.

Each setting is a list of llama-bench flags added to the default command (same model, threads, prompt depth and
generation length). Every pass runs all settings once, the order rotated by one each pass, so a drift of the
machine falls on all of them; a setting's figure is the mean over passes of llama-bench's own mean tok/s. The
ratio setting / default says what that setting buys. Decode is timed at the depth of a held-out prompt (`-d`):
a deployed student decodes after its prompt, not from an empty cache.

    scripts/build-llama-tools.sh       # llama-bench, once
    .venv/bin/python bench/decode_settings.py runs/quickstart/deploy/gguf-q8_0/model/model-q8_0.gguf \\
        --out bench/results/decode_settings.json
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
from pathlib import Path

from _common import emit, machine, require_quiet

from toolkit.runtime.llama_tools import require_tool

# name -> llama-bench flags on top of the defaults (flash attention auto, f16 KV cache, mmap, polling 50,
# weight repacking on, batch 2048 / ubatch 512)
SETTINGS = {
    "default": [],
    "flash-attn off": ["-fa", "off"],
    "flash-attn on": ["-fa", "on"],
    "kv cache q8_0": ["-fa", "on", "-ctk", "q8_0", "-ctv", "q8_0"],
    "no mmap": ["-lm", "none"],
    "mlock": ["-lm", "mmap+mlock"],
    "no repack": ["--repack", "0"],
    "poll 0": ["--poll", "0"],
    "poll 100": ["--poll", "100"],
    "cpu strict": ["--cpu-strict", "1"],
}


def run(model: Path, threads: int, depth: int, gen: int, reps: int, flags: list[str]) -> float:
    done = subprocess.run([str(require_tool("llama-bench")), "-m", str(model), "-t", str(threads), "-p", "0",
                           "-n", str(gen), "-d", str(depth), "-r", str(reps), "-o", "json", *flags],
                          check=True, capture_output=True, text=True)
    (row,) = [r for r in json.loads(done.stdout) if r["n_gen"] == gen]
    return row["avg_ts"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", type=Path, help="a GGUF file")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--depth", type=int, default=64, help="tokens already in the KV cache when decoding starts")
    ap.add_argument("--gen-tokens", type=int, default=64)
    ap.add_argument("--reps", type=int, default=3, help="repetitions inside each llama-bench run")
    ap.add_argument("--passes", type=int, default=3, help="interleaved passes over all settings")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--force", action="store_true", help="time even on a busy machine")
    args = ap.parse_args()
    threads = [int(t) for t in args.threads.split(",")]
    require_quiet(max(threads), args.force)
    names = list(SETTINGS)
    rows = []
    for t in threads:
        runs: dict[str, list[float]] = {n: [] for n in names}
        for p in range(args.passes):
            for name in names[p % len(names):] + names[:p % len(names)]:
                runs[name].append(run(args.model, t, args.depth, args.gen_tokens, args.reps, SETTINGS[name]))
                print(json.dumps({"threads": t, "pass": p, "setting": name, "decode_tok_s": runs[name][-1]}),
                      flush=True)
        base = statistics.mean(runs["default"])
        for name in names:
            mean = statistics.mean(runs[name])
            rows.append({"threads": t, "setting": name, "flags": SETTINGS[name], "decode_tok_s": round(mean, 2),
                         "runs": [round(x, 2) for x in runs[name]], "over_default": round(mean / base, 3),
                         # the pass-to-pass spread, to read a ratio against: (max - min) / mean
                         "spread": round((max(runs[name]) - min(runs[name])) / mean, 3)})
    emit({"bench": "decode_settings", "model": str(args.model), "machine": machine(max(threads)),
          "settings": {"depth": args.depth, "gen_tokens": args.gen_tokens, "reps": args.reps,
                       "passes": args.passes}, "rows": rows}, args.out)


if __name__ == "__main__":
    main()
