"""Training throughput, packing against padding, on GSM8K-length data: real (non-pad) tokens per second.

Both modes run the trainer's own pieces (toolkit.training.train: tokenize_example, pack, collate, the
shifted loss, AdamW) on the same examples. Padding: `batch` examples per step, padded to the
longest. Packing: first-fit-decreasing bins of `--seq-len` tokens with the block-diagonal mask,
as many bins per step as give the same real tokens per step on average. Only non-pad tokens count.

    python bench/train_packing.py --model pkg:smollm2-135m-instruct --threads 1 --out bench/results/train_packing.json
"""
from __future__ import annotations

import argparse
import random
import statistics
import time
from pathlib import Path

import torch
from _common import emit, machine, require_quiet

from toolkit.runtime.loading import load_model_and_tokenizer
from toolkit.runtime.models import resolve_model
from toolkit.data.problems import load_suite
from toolkit.training.train import Example, _shifted_loss, collate, pack, tokenize_example

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def examples(tok, n: int, seq_len: int, data: Path, seed: int) -> list[Example]:
    """n GSM8K training problems with their reference rationale as the completion (real lengths)."""
    problems = load_suite("gsm8k_train", data)
    random.Random(seed).shuffle(problems)
    out = []
    for p in problems[:n]:
        messages = [{"role": "user", "content": p.question}]
        out.append(tokenize_example(tok, messages, p.rationale or str(p.answer), seq_len))
    return out


def run(model, tok, batches: list[list[list[Example]]], steps: int, warmup: int) -> dict:
    """Time `steps` optimizer steps (after `warmup` untimed ones); real tokens per second each step."""
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    rates, real_total, padded_total = [], 0, 0
    for i in range(warmup + steps):
        batch = batches[i % len(batches)]
        t = collate(batch, pad)
        real = sum(len(e.input_ids) for b in batch for e in b)
        start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        logits = model(input_ids=t["input_ids"], attention_mask=t["attention_mask"],
                       position_ids=t["position_ids"]).logits
        loss = _shifted_loss(logits, t["labels"])
        (loss / max(1, int((t["labels"] != -100).sum()))).backward()
        opt.step()
        seconds = time.perf_counter() - start
        if i >= warmup:
            rates.append(real / seconds)
            real_total += real
            padded_total += int(t["input_ids"].numel())
    return {"steps": steps, "real_tokens_per_s": round(statistics.mean(rates), 1),
            "stddev": round(statistics.stdev(rates), 1) if len(rates) > 1 else 0.0,
            "samples": [round(r, 1) for r in rates], "pad_fraction": round(1 - real_total / padded_total, 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="pkg:smollm2-135m-instruct", help="student model reference")
    ap.add_argument("--examples", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8, help="examples per step in the padding mode")
    ap.add_argument("--seq-len", type=int, default=1024, help="tokens per packed sequence")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--force", action="store_true", help="time even on a busy machine")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    require_quiet(args.threads, args.force)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    model, tok = load_model_and_tokenizer(resolve_model(args.model))
    model.train()
    exs = examples(tok, args.examples, args.seq_len, args.data, args.seed)
    order = exs[:]
    random.Random(args.seed).shuffle(order)
    padded = [[[e] for e in order[i:i + args.batch]] for i in range(0, len(order), args.batch)]
    bins = pack(exs, args.seq_len, args.seed)
    # Same real tokens per step on average: bins per step = examples per step / examples per bin.
    per_step = max(1, round(args.batch * len(bins) / len(exs)))
    packed = [bins[i:i + per_step] for i in range(0, len(bins), per_step)]
    lengths = [len(e.input_ids) for e in exs]
    rows = {}
    for mode, batches in (("padding", padded), ("packing", packed)):
        rows[mode] = run(model, tok, batches, args.steps, args.warmup)
    result = {"bench": "train_packing", "model": args.model, "examples": len(exs),
              "tokens_per_example": {"mean": round(statistics.mean(lengths), 1), "max": max(lengths)},
              "padding_batch": args.batch, "packing_seq_len": args.seq_len, "packing_bins_per_step": per_step,
              **rows, "speedup": round(rows["packing"]["real_tokens_per_s"] / rows["padding"]["real_tokens_per_s"], 2),
              "machine": machine(args.threads)}
    emit(result, args.out)


if __name__ == "__main__":
    main()
