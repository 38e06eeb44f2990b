"""Our trainer against TRL's SFTTrainer on the same rows: tokens/s, peak RSS, final loss and paired accuracy.

Both fine-tune the same base student on the same rows (a run's `round-K/train.jsonl`) with the same learning rate
and linear schedule (10% warm-up), epochs, sequences per step, sequence length, packing, fp32, gradient
checkpointing, threads, and loss on the completion's tokens only. Both get the same token ids: the rows are
tokenized once by the prompt rule (toolkit.training.train.tokenize_example) and TRL is handed `input_ids` and
`completion_mask`, which it takes as already processed. tokens/s is that token count times the epochs over each
trainer's own training seconds. Each trainer runs in a fresh process (peak RSS is that process's VmHWM), in the
order ours, TRL, ours, TRL, ... (--repeats).

The difference that stays: TRL packs with best-fit decreasing into one padding-free row per step with position
ids; with PyTorch's SDPA attention (a CPU has no FlashAttention) transformers does not split attention at those
boundaries, so packed examples see each other. Ours packs into `batch` rows with a block-diagonal mask.

The two students are then evaluated (greedy, the recipe's calculator) on the first --eval-limit problems of
--eval-suite and paired problem by problem.

    .venv/bin/pip install -e '.[trl]'
    .venv/bin/python bench/train_vs_trl.py --rows runs/fdd-cpu-powered-control/round-0/train.jsonl \
        --out bench/results/train_vs_trl.json
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import emit, machine, require_quiet

from toolkit.core.memory import process_peak_bytes

ROOT = Path(__file__).resolve().parents[1]


def _examples(args, tok):
    from toolkit.training.train import tokenize_example

    rows = [json.loads(line) for line in Path(args.rows).read_text().splitlines() if line.strip()]
    return [tokenize_example(tok, r["messages"], r["completion"], args.seq_len) for r in rows]


def _ours(args, model, tok, examples, out: Path) -> dict:
    from toolkit.core.recipe import TrainConfig
    from toolkit.training.train import train

    cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch, seq_len=args.seq_len, lr=args.lr,
                      threads=args.threads, checkpoint_every=0, gradient_checkpointing=True)
    stats = train(model, tok, examples, cfg, out, seed=args.seed, prompt=args.prompt)
    return {"train_seconds": stats["train_seconds"], "steps": stats["steps"], "final_loss": stats["final_loss"]}


def _trl(args, model, tok, examples, out: Path) -> dict:
    # heavy optional bench dependency ([trl] extra), imported on first use
    import torch
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    torch.set_num_threads(args.threads)
    data = Dataset.from_list([{"input_ids": e.input_ids, "completion_mask": [int(x != -100) for x in e.labels]}
                              for e in examples])
    with tempfile.TemporaryDirectory(prefix="trl-") as scratch:
        config = SFTConfig(
            output_dir=scratch, num_train_epochs=args.epochs, per_device_train_batch_size=args.batch,
            gradient_accumulation_steps=1, learning_rate=args.lr, lr_scheduler_type="linear", warmup_ratio=0.1,
            weight_decay=0.0, max_length=args.seq_len, packing=True, completion_only_loss=True,
            gradient_checkpointing=True, gradient_checkpointing_kwargs={"use_reentrant": False}, bf16=False,
            fp16=False, use_cpu=True, logging_steps=1, save_strategy="no", report_to=[], seed=args.seed,
            dataloader_num_workers=0, disable_tqdm=True)
        trainer = SFTTrainer(model=model, args=config, train_dataset=data, processing_class=tok)
        start = time.perf_counter()
        result = trainer.train()
        seconds = time.perf_counter() - start
        losses = [row["loss"] for row in trainer.state.log_history if "loss" in row]
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    (out / "prompt.json").write_text(json.dumps(args.prompt))
    return {"train_seconds": round(seconds, 2), "steps": result.global_step, "final_loss": losses[-1]}


def worker(args) -> None:
    """One training in this process: prints its figures as one JSON line."""
    from toolkit.data.prompt_rule import record_for
    from toolkit.runtime.loading import load_model_and_tokenizer
    from toolkit.runtime.models import resolve_model

    model, tok = load_model_and_tokenizer(resolve_model(args.model))
    examples = _examples(args, tok)
    args.prompt = record_for(tok, ["cot"])
    out = Path(args.save)
    figures = (_ours if args.worker == "ours" else _trl)(args, model, tok, examples, out)
    tokens = sum(len(e.input_ids) for e in examples) * args.epochs
    print(json.dumps({"trainer": args.worker, "tokens": tokens, **figures,
                      "tokens_per_s": round(tokens / figures["train_seconds"], 1),
                      "peak_rss_bytes": process_peak_bytes()}), flush=True)


def _spawn(args, which: str, save: Path) -> dict:
    # The worker runs in bench/ (for _common); the rows path is the user's, relative to where they ran this.
    command = [sys.executable, __file__, "--worker", which, "--save", str(save), "--rows", str(Path(args.rows).resolve()),
               "--model", args.model, "--epochs", str(args.epochs), "--batch", str(args.batch), "--seq-len",
               str(args.seq_len), "--lr", str(args.lr), "--threads", str(args.threads), "--seed", str(args.seed)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT / "bench")
    if done.returncode != 0:
        raise SystemExit(f"the {which} trainer failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _evaluate(args, student: Path, out: Path) -> dict[str, bool]:
    command = [str(Path(sys.executable).parent / "toolkit"), "eval", str(student), "--suite", args.eval_suite,
               "--limit", str(args.eval_limit), "--backend", "torch", "--threads", str(args.threads),
               "--out", str(out / "results.json"), "--quiet"]
    if args.calculator:
        command.append("--calculator")
    if args.data_root:
        command += ["--data-root", args.data_root]
    subprocess.run(command, check=True, cwd=ROOT)
    samples = [json.loads(line) for line in next(out.glob("samples_*.jsonl")).read_text().splitlines()]
    return {s["id"]: bool(s["strict_match"]) for s in samples}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", required=True, help="a run's round-K/train.jsonl")
    ap.add_argument("--model", default="pkg:smollm2-135m-instruct")
    ap.add_argument("--epochs", type=float, default=3.0)
    ap.add_argument("--batch", type=int, default=4, help="packed sequences per optimizer step")
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=1, help="interleaved pairs of trainings")
    ap.add_argument("--eval-suite", default="svamp")
    ap.add_argument("--eval-limit", type=int, default=200, help="0: no accuracy check")
    ap.add_argument("--calculator", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--keep", default=None, help="folder to keep the students and their evals in")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--force", action="store_true", help="time even on a busy machine")
    ap.add_argument("--worker", choices=["ours", "trl"], help=argparse.SUPPRESS)
    ap.add_argument("--save", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)
    require_quiet(args.threads, args.force)
    from toolkit.core.stats import paired

    keep = Path(args.keep or tempfile.mkdtemp(prefix="train-vs-trl-"))
    runs = []
    for repeat in range(args.repeats):
        for which in ("ours", "trl"):
            runs.append(_spawn(args, which, keep / f"{which}-{repeat}"))
            print(json.dumps(runs[-1]), flush=True)
    mean = {which: {key: sum(r[key] for r in runs if r["trainer"] == which) / args.repeats
                    for key in ("tokens_per_s", "peak_rss_bytes", "final_loss")} for which in ("ours", "trl")}
    result = {"bench": "train_vs_trl", "machine": machine(args.threads),
              "settings": {k: getattr(args, k) for k in ("rows", "model", "epochs", "batch", "seq_len", "lr",
                                                           "threads", "seed", "repeats")},
              "runs": runs, "mean": mean,
              "ours_over_trl": {"tokens_per_s": round(mean["ours"]["tokens_per_s"] / mean["trl"]["tokens_per_s"], 3),
                                "peak_rss": round(mean["ours"]["peak_rss_bytes"] / mean["trl"]["peak_rss_bytes"], 3)}}
    if args.eval_limit:
        right = {which: _evaluate(args, keep / f"{which}-0", keep / f"eval-{which}") for which in ("ours", "trl")}
        result["accuracy"] = {"suite": args.eval_suite, "n": len(right["ours"]),
                              "ours": sum(right["ours"].values()) / len(right["ours"]),
                              "trl": sum(right["trl"].values()) / len(right["trl"]),
                              "trl_minus_ours": paired(right["ours"], right["trl"])}
    emit(result, args.out)


if __name__ == "__main__":
    main()
