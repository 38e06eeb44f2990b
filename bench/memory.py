"""Peak memory and time of the quickstart's student-side stages, old path against new, in one run.

Each variant runs in its own fresh process (a process's heap remembers what ran before it) and goes
through the stages the engine runs for one round: load the packaged student (a GGUF, dequantized to
fp32), train N optimizer steps with toolkit.training.train.train on packed GSM8K rationales at the quickstart's
shape (batch 4 × 512 tokens), free it, load the saved student and greedily answer held-out problems
(batch 20, up to 128 new tokens, as the quickstart's eval). Per stage: peak RSS (VmHWM reset at the
stage start, toolkit/core/memory.py), RSS at its end, seconds; for training also tokens/s. Variants run
interleaved (A B C D A B C D ...) so that a machine that slows down mid-run slows all of them alike.

    python bench/memory.py --steps 4 --reps 2 --out bench/results/memory/student_stages.json

Variants (VARIANTS below): "old" = logits at every position, no activation checkpointing, the whole
batch in one pass, fp32, AdamW's foreach path, glibc malloc as it comes, nothing released between
stages (the engine before issue 19); "answer+gc" = logits at answer positions only, checkpointing, heap
pinned in training and freed between stages (the session-6 default); then fused AdamW, one sequence per
pass (micro-batch 1), the LM head's loss in recomputed chunks of 128 answer tokens, the tied embedding's
gradient added in place, grouped key/value heads handed to SDPA as they are, and bf16 autocast added one by one,
and without checkpointing. `--variants` picks a subset.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import emit, machine
from old_paths import old_paths

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
# name: settings. answer: logits at answer positions only; gc: gradient checkpointing; release: pin glibc's
# mmap threshold in training and free memory between stages (toolkit/core/memory.py); micro: sequences per
# forward/backward pass (None: the whole batch); precision: train.precision; fused: fused AdamW; chunk: answer
# tokens per pass of the LM head and its loss, recomputed in the backward pass (None: all in one pass); embed:
# the tied embedding's gradient added in place after the backward pass (toolkit.training.train.EmbeddingGrad);
# gqa: grouped key/value heads handed to SDPA as they are, in training and eval (toolkit/eval/gqa_attention.py).
_OLD = dict(answer=False, gc=False, release=False, micro=None, precision="fp32", fused=False, chunk=None,
            embed=False, gqa=False)
VARIANTS = {
    "old": _OLD,
    "old+release": {**_OLD, "release": True},
    "full+gc": {**_OLD, "gc": True, "release": True},
    "answer": {**_OLD, "answer": True, "release": True},
    "answer+gc": {**_OLD, "answer": True, "gc": True, "release": True},
    "answer+gc+fused": {**_OLD, "answer": True, "gc": True, "release": True, "fused": True},
    "answer+gc+fused+chunk": {**_OLD, "answer": True, "gc": True, "release": True, "fused": True, "chunk": 128},
    "answer+gc+fused+chunk+embed": {**_OLD, "answer": True, "gc": True, "release": True, "fused": True,
                                    "chunk": 128, "embed": True},
    "answer+gc+fused+chunk+embed+gqa": {**_OLD, "answer": True, "gc": True, "release": True, "fused": True,
                                        "chunk": 128, "embed": True, "gqa": True},
    "answer+fused+chunk": {**_OLD, "answer": True, "release": True, "fused": True, "chunk": 128},
    "answer+gc+fused+micro1": {**_OLD, "answer": True, "gc": True, "release": True, "fused": True, "micro": 1},
    "answer+fused+micro1": {**_OLD, "answer": True, "release": True, "fused": True, "micro": 1},
    "bf16+gc": {**_OLD, "answer": True, "gc": True, "release": True, "fused": True, "micro": 1, "precision": "bf16"},
    "bf16": {**_OLD, "answer": True, "release": True, "fused": True, "micro": 1, "precision": "bf16"},
}


def busy_cores(seconds: float = 2.0) -> float:
    """Cores' worth of CPU time the whole machine used over `seconds` (/proc/stat), before we start.

    DESIGN.md, contention trap: the 1-minute load average lags for minutes; this samples the present.
    """
    def ticks() -> tuple[int, int]:
        vals = [int(v) for v in open("/proc/stat").readline().split()[1:]]
        idle = vals[3] + vals[4]
        return sum(vals) - idle, sum(vals)

    b0, t0 = ticks()
    time.sleep(seconds)
    b1, t1 = ticks()
    return round((b1 - b0) / max(1, t1 - t0) * (os.cpu_count() or 1), 2)


def _examples(tok, n: int, seq_len: int, seed: int):
    from toolkit.data.problems import load_suite
    from toolkit.data.strategies import training_completion, training_prompt
    from toolkit.training.train import tokenize_example

    problems = load_suite("gsm8k_train", DATA)
    random.Random(seed).shuffle(problems)
    return [tokenize_example(tok, training_prompt(p.question, ["cot"]),
                             training_completion("cot", p.rationale or str(p.answer), ["cot"]), seq_len)
            for p in problems[:n]]


def one(variant: str, args) -> dict:
    """Run the stages of one variant in this process; returns its figures."""
    import torch

    from toolkit.pipeline.student import load_student
    from toolkit.eval.generate import TorchGenerator
    from toolkit.eval.gqa_attention import grouped_sdpa
    from toolkit.runtime.loading import load_model_and_tokenizer
    from toolkit.core.memory import PeakRSS, release_memory, rss_bytes
    from toolkit.runtime.models import resolve_model
    from toolkit.data.problems import load_suite
    from toolkit.core.recipe import TrainConfig
    from toolkit.data.strategies import training_prompt
    from toolkit.training.train import train

    v = VARIANTS[variant]
    answer_only, checkpointing, release = v["answer"], v["gc"], v["release"]
    torch.set_num_threads(args.threads)
    stages = {}

    def stage(name: str):
        class _Stage:
            def __enter__(self):
                if release:
                    release_memory()
                self.peak = PeakRSS().__enter__()
                self.start = time.perf_counter()
                return self

            def __exit__(self, *exc):
                seconds = time.perf_counter() - self.start
                self.peak.__exit__(*exc)
                stages[name] = {"seconds": round(seconds, 2), "peak_rss_bytes": self.peak.peak_bytes,
                                "end_rss_bytes": rss_bytes(), "method": self.peak.method}
        return _Stage()

    with tempfile.TemporaryDirectory() as tmp:
        with stage("load"):
            model, tok = load_model_and_tokenizer(resolve_model(args.model))
        examples = _examples(tok, args.examples, args.seq_len, args.seed)
        cfg = TrainConfig(max_steps=args.steps, batch_size=args.batch, seq_len=args.seq_len, lr=1e-4,
                          threads=args.threads, checkpoint_every=0, gradient_checkpointing=checkpointing,
                          micro_batch_size=v["micro"] or args.batch, precision=v["precision"])
        with stage("train"), grouped_sdpa(model, v["gqa"]), old_paths(answer=answer_only, release=release,
                                                                      fused=v["fused"], chunk=v["chunk"],
                                                                      embed=v["embed"]):
            stats = train(model, tok, examples, cfg, Path(tmp) / "student", seed=args.seed)
        stages["train"].update(tokens_per_s=stats["tokens_per_s"], tokens=stats["tokens"],
                               final_loss=stats["final_loss"], first_loss=stats["first_loss"])
        if release:
            del model
            release_memory()
        else:  # the old engine kept the trained base referenced until the stage's function returned
            pass
        stages["after_free_rss_bytes"] = rss_bytes()
        with stage("eval"):
            smodel, stok = load_student(Path(tmp) / "student")
            gen = TorchGenerator(smodel, stok, batch_size=20, threads=args.threads)
            gen.grouped_attention = v["gqa"]
            heldout = load_suite("multiarith", DATA)[: args.eval_problems]
            outs = gen.generate([training_prompt(p.question, ["cot"]) for p in heldout],
                                max_new_tokens=args.max_new_tokens)
        stages["eval"]["problems"] = len(outs)
        stages["eval"]["output_sha"] = __import__("hashlib").sha256("\n".join(outs).encode()).hexdigest()[:16]
    return {"variant": variant, "settings": v, "stages": stages}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="pkg:smollm2-135m-instruct")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--steps", type=int, default=4, help="optimizer steps per training stage")
    ap.add_argument("--reps", type=int, default=2, help="interleaved repetitions of every variant")
    ap.add_argument("--batch", type=int, default=4, help="packed sequences per step (quickstart: 4)")
    ap.add_argument("--seq-len", type=int, default=512, help="tokens per packed sequence (quickstart: 512)")
    ap.add_argument("--examples", type=int, default=160, help="GSM8K training rationales to pack")
    ap.add_argument("--eval-problems", type=int, default=20)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--force", action="store_true", help="measure even when other processes use the cores")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one variant in this process
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one(args.one, args)))
        return
    variants = args.variants.split(",")
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        sys.exit(f"unknown variant(s) {sorted(unknown)}; known: {', '.join(VARIANTS)}")
    runs = []
    for rep in range(args.reps):
        for v in variants:
            busy = busy_cores()
            if busy > 0.5 and not args.force:
                sys.exit(f"machine busy ({busy} cores in use by other processes): timings would be "
                         "meaningless; wait for a quiet machine or pass --force")
            cmd = [sys.executable, __file__, "--one", v, "--model", args.model, "--steps", str(args.steps),
                   "--batch", str(args.batch), "--seq-len", str(args.seq_len), "--examples", str(args.examples),
                   "--eval-problems", str(args.eval_problems), "--max-new-tokens", str(args.max_new_tokens),
                   "--threads", str(args.threads), "--seed", str(args.seed)]
            r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
            if r.returncode:
                sys.exit(f"variant {v} failed:\n{r.stderr[-3000:]}")
            row = json.loads(r.stdout.strip().splitlines()[-1])
            row.update(rep=rep, busy_cores_before=busy)
            runs.append(row)
            s = row["stages"]
            print(f"rep {rep} {v:10s} " + " ".join(f"{k} {s[k]['peak_rss_bytes'] / 1e9:.2f} GB/{s[k]['seconds']:.0f} s"
                                                  for k in ("load", "train", "eval"))
                  + f" train {s['train']['tokens_per_s']} tok/s", file=sys.stderr)
    summary = {}
    for v in variants:
        rows = [r["stages"] for r in runs if r["variant"] == v]
        summary[v] = {k: {"peak_rss_gb_max": round(max(r[k]["peak_rss_bytes"] for r in rows) / 1e9, 3),
                          "seconds_mean": round(statistics.mean(r[k]["seconds"] for r in rows), 1)}
                      for k in ("load", "train", "eval")}
        summary[v]["train"]["tokens_per_s"] = [r["train"]["tokens_per_s"] for r in rows]
    # Paired by repetition: variant v's tokens/s over old's in the same rep (adjacent in time).
    if "old" in variants:
        for v in variants:
            ratios = [a["stages"]["train"]["tokens_per_s"] / b["stages"]["train"]["tokens_per_s"]
                      for a, b in zip([r for r in runs if r["variant"] == v], [r for r in runs if r["variant"] == "old"])]
            summary[v]["train"]["tokens_per_s_over_old"] = [round(x, 3) for x in ratios]
    result = {"bench": "memory", "model": args.model, "steps": args.steps, "reps": args.reps,
              "batch": args.batch, "seq_len": args.seq_len, "eval_problems": args.eval_problems,
              "max_new_tokens": args.max_new_tokens, "summary": summary, "runs": runs,
              "command": "python bench/memory.py " + " ".join(a for a in sys.argv[1:]),
              "date": time.strftime("%Y-%m-%d"), "machine": machine(args.threads)}
    emit(result, args.out)


if __name__ == "__main__":
    main()
