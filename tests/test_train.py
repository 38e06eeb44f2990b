"""Trainer: answer-only labels, packing that changes nothing but padding, real steps that lower the loss,
and a seed-fixed golden loss curve."""
from __future__ import annotations

import json

import pytest
import torch

from toolkit.core.memory import mmap_threshold
from toolkit.runtime.models import resolve_model
from toolkit.core.recipe import TrainConfig
from toolkit.runtime.loading import load_model_and_tokenizer
from toolkit.training.train import IGNORE, Example, collate, pack, tokenize_example, train

MESSAGES = [{"role": "user", "content": "Tom has 3 apples and buys 5 more. How many apples does he have?"}]

GOLDEN_QA = [("What is 3 plus 5?", "3 + 5 = 8. The answer is 8."),
             ("Divide 28 pencils by 4 boxes.", "28 / 4 = 7. The answer is 7."),
             ("Tom has 24 muffins and sells 18. How many are left?", "24 - 18 = 6. The answer is 6."),
             ("Each box holds 7 pencils. How many in 4 boxes?", "4 * 7 = 28. The answer is 28.")]
# Per-step mean loss (nats per answer token) of the tiny llama (conftest, seed 0) on GOLDEN_QA with
# GOLDEN_CFG and seed 0, measured on CPU: identical to 6 decimals with 1 and 2 threads.
GOLDEN_CURVE = [6.099608, 5.817647, 5.46892, 5.251826, 4.948169, 4.977941, 4.763346, 4.682383]
GOLDEN_CFG = TrainConfig(max_steps=8, batch_size=2, seq_len=64, lr=3e-3, warmup_ratio=0.0, threads=1,
                         checkpoint_every=0)
# Float rounding across CPUs and kernels moves the loss by about 1e-6 of itself over 8 steps; a change in
# the data, packing, order, masking, loss or optimizer moves it by far more than 1e-4.
GOLDEN_RTOL = 1e-4


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return load_model_and_tokenizer(resolve_model(str(tiny_model_dir)))


def test_labels_cover_only_the_completion(tiny):
    _, tok = tiny
    ex = tokenize_example(tok, MESSAGES, "3 + 5 = 8. The answer is 8.", max_len=512)
    labelled = [t for t, l in zip(ex.input_ids, ex.labels) if l != IGNORE]
    assert tok.decode(labelled) == "3 + 5 = 8. The answer is 8.<|im_end|>"
    prompt = tok.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False)
    assert tok.decode(ex.input_ids[: ex.labels.count(IGNORE)]) == prompt


def test_pack_keeps_every_example_whole_and_within_length():
    examples = [Example(list(range(n)), list(range(n))) for n in (50, 40, 30, 30, 20, 10, 90)]
    bins = pack(examples, seq_len=100, seed=0)
    assert sorted(len(e.input_ids) for b in bins for e in b) == sorted(len(e.input_ids) for e in examples)
    assert all(sum(len(e.input_ids) for e in b) <= 100 for b in bins)
    assert len(bins) == 3  # 270 tokens, first-fit decreasing: 90+10, 50+40, 30+30+20
    assert pack(examples, 100, seed=0) == bins


def test_packed_loss_equals_separate_loss(tiny):
    """The block-diagonal mask and restarted positions make a packed example train exactly as alone."""
    model, tok = tiny
    a = tokenize_example(tok, MESSAGES, "3 + 5 = 8. The answer is 8.", 512)
    b = tokenize_example(tok, [{"role": "user", "content": "Divide 28 pencils by 4 boxes."}],
                         "28 / 4 = 7. The answer is 7.", 512)

    def logits(batch):
        t = collate(batch, tok.pad_token_id)
        with torch.no_grad():
            return model(input_ids=t["input_ids"], attention_mask=t["attention_mask"],
                         position_ids=t["position_ids"]).logits

    packed = logits([[a, b]])[0]
    alone_a, alone_b = logits([[a]])[0], logits([[b]])[0]
    n = len(a.input_ids)
    torch.testing.assert_close(packed[:n], alone_a, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(packed[n:n + len(b.input_ids)], alone_b, atol=1e-4, rtol=1e-4)


def test_training_lowers_loss_and_saves_a_loadable_folder(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, tok = load_model_and_tokenizer(resolve_model(str(tiny_model_dir)))
    examples = [tokenize_example(tok, MESSAGES, "3 + 5 = 8. The answer is 8.", 256)] * 8
    cfg = TrainConfig(max_steps=30, batch_size=2, seq_len=256, lr=3e-3, warmup_ratio=0.0, threads=1)
    stats = train(model, tok, examples, cfg, tmp_path / "student", seed=0)
    assert stats["steps"] == 30
    assert stats["final_loss"] < 0.5 * stats["first_loss"]
    out = tmp_path / "student"
    assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()
    assert json.loads((out / "training_info.json").read_text())["examples"] == 8
    assert not (tmp_path / "student.tmp").exists()
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    assert AutoTokenizer.from_pretrained(out).eos_token == "<|im_end|>"
    for p, q in zip(model.parameters(), reloaded.parameters()):
        torch.testing.assert_close(p, q)


def test_lora_training_merges_into_a_plain_folder(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    model, tok = load_model_and_tokenizer(resolve_model(str(tiny_model_dir)))
    examples = [tokenize_example(tok, MESSAGES, "The answer is 8.", 256)] * 4
    cfg = TrainConfig(max_steps=5, batch_size=2, seq_len=256, lr=1e-2, lora=4, threads=1)
    stats = train(model, tok, examples, cfg, tmp_path / "lora", seed=0)
    assert stats["final_loss"] < stats["first_loss"]
    assert not (tmp_path / "lora" / "adapter_config.json").exists()
    AutoModelForCausalLM.from_pretrained(tmp_path / "lora")


def test_golden_loss_curve(tiny_model_dir, tmp_path):
    """Fixed model, data, settings and seed give the committed per-step losses."""
    model, tok = load_model_and_tokenizer(resolve_model(str(tiny_model_dir)))
    examples = [tokenize_example(tok, [{"role": "user", "content": q}], a, GOLDEN_CFG.seq_len) for q, a in GOLDEN_QA]
    stats = train(model, tok, examples, GOLDEN_CFG, tmp_path / "student", seed=0)
    assert stats["packed_sequences"] == 4
    assert [row["loss"] for row in stats["curve"]] == pytest.approx(GOLDEN_CURVE, rel=GOLDEN_RTOL)


class _Stop(RuntimeError):
    pass


def test_a_train_that_raises_undoes_the_malloc_pin_and_gradient_checkpointing(tiny_model_dir, tmp_path):
    """A library caller whose training raises mid-way (here its own log callback, after setup and one step)
    gets its model back without gradient checkpointing and its process's malloc without the pin."""
    model, tok = load_model_and_tokenizer(resolve_model(str(tiny_model_dir)))
    examples = [tokenize_example(tok, MESSAGES, "3 + 5 = 8. The answer is 8.", 64)] * 4
    cfg = TrainConfig(max_steps=3, batch_size=2, seq_len=64, threads=1, checkpoint_every=0,
                      gradient_checkpointing=True)
    seen = []

    def log(row: dict) -> None:
        seen.append((model.is_gradient_checkpointing, mmap_threshold()))
        raise _Stop("a callback that fails")

    with pytest.raises(_Stop):
        train(model, tok, examples, cfg, tmp_path / "student", seed=0, log=log)
    assert seen == [(True, 128 * 1024)]  # during training: checkpointing on, blocks from 128 kB get their own mmap
    assert not model.is_gradient_checkpointing
    assert mmap_threshold() == 32 * 1024 * 1024  # the pin is undone: heap reuse below 32 MB, as after success
    assert not (tmp_path / "student").exists()
