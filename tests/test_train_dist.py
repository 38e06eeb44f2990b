"""Data-parallel training: two torchrun CPU processes (gloo) follow one process's loss curve and weights."""
from __future__ import annotations

import json

import torch

from tests.conftest import write_jsonl
from toolkit.recipe import TrainConfig
from toolkit.train import tokenize_example, train
from toolkit.train_job import launch, write_job

ROWS = [{"messages": [{"role": "user", "content": f"What is {a} plus {b}?"}],
         "completion": f"{a} + {b} = {a + b}. The answer is {a + b}."}
        for a, b in [(2, 3), (4, 4), (10, 3), (3, 3), (5, 1), (9, 4), (2, 6)]]

# Gradients summed over two processes add the same terms in another order: float32 rounding only.
LOSS_RTOL = 1e-5
WEIGHT_ATOL = 1e-5


def test_two_gloo_processes_match_one_process(tiny_model_dir, tmp_path):
    from safetensors.torch import load_file

    from toolkit.loading import load_model_and_tokenizer
    from toolkit.models import resolve_model

    # seq_len 48 keeps one example per packed sequence: 7 sequences, global batches of 3, 3 and 1,
    # so in the third batch the second process has nothing and still joins the all-reduce.
    cfg = TrainConfig(max_steps=6, batch_size=3, seq_len=48, lr=3e-3, warmup_ratio=0.0, threads=1,
                      checkpoint_every=0)
    model, tok = load_model_and_tokenizer(resolve_model(str(tiny_model_dir)))
    examples = [tokenize_example(tok, r["messages"], r["completion"], cfg.seq_len) for r in ROWS]
    one = train(model, tok, examples, cfg, tmp_path / "one", seed=5)
    assert one["packed_sequences"] == 7 and one["processes"] == 1

    rows = write_jsonl(tmp_path / "train.jsonl", ROWS)
    job = write_job(tmp_path / "job" / "train-job.json", student=str(tiny_model_dir), base_dir=None, rows=rows,
                    cfg=cfg, out=tmp_path / "two", seed=5)
    steps: list[int] = []
    two = launch(job, processes=2, threads=1, on_step=lambda row: steps.append(row["step"]))
    assert two["processes"] == 2
    assert steps == list(range(1, 7))
    for a, b in zip(one["curve"], two["curve"]):
        assert abs(a["loss"] - b["loss"]) <= LOSS_RTOL * abs(a["loss"]), (a, b)
    got = load_file(tmp_path / "two" / "model.safetensors")
    for name, p in model.named_parameters():
        if name in got:  # tied embeddings are stored once
            torch.testing.assert_close(got[name], p.detach(), atol=WEIGHT_ATOL, rtol=0)
    assert json.loads((tmp_path / "two" / "training_info.json").read_text())["examples"] == 7
