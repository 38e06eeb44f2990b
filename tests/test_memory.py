"""Memory: peak RSS per block and per run stage, the answer-only loss against the full one, activation checkpointing."""
from __future__ import annotations

import json
import mmap

import pytest
import torch

from tests.conftest import DATA, toolkit, write_tiny_recipe
from toolkit.core.recipe import TrainConfig
import toolkit.training.train as train_module
from toolkit.training.train import IGNORE, _shifted_loss, batch_loss, collate, tokenize_example, train

QA = [("Tom has 3 apples and buys 5 more. How many apples does he have?", "3 + 5 = 8. The answer is 8."),
      ("Divide 28 pencils by 4 boxes.", "28 / 4 = 7. The answer is 7."),
      ("A baker makes 24 muffins and sells 18.", "24 - 18 = 6. The answer is 6."),
      ("What is 2 times 3?", "2 * 3 = 6. The answer is 6.")]


def _touch(n_bytes: int) -> mmap.mmap:
    """n_bytes of fresh pages, really resident (every page written). An anonymous mapping, not a bytearray:
    late in the full suite malloc serves a bytearray from freed memory that is still resident, and RSS
    does not grow at all."""
    buf = mmap.mmap(-1, n_bytes)
    buf[::4096] = b"\1" * len(range(0, n_bytes, 4096))
    return buf


@pytest.mark.parametrize("sampled", [False, True])
def test_peak_rss_sees_a_block_and_forgets_the_one_before(sampled, monkeypatch, tmp_path):
    from toolkit.core import memory

    if sampled:  # a kernel that refuses the VmHWM reset: the sampler thread takes over
        monkeypatch.setattr(memory, "_CLEAR_REFS", tmp_path / "missing" / "clear_refs")
    mb = 1 << 20
    with memory.PeakRSS() as first:
        buf = _touch(300 * mb)
        if sampled:
            import time

            time.sleep(0.3)  # a few sampler periods while the buffer is resident
        del buf
    with memory.PeakRSS() as second:
        pass
    assert first.method == second.method == ("sampled" if sampled else "vmhwm")
    assert first.peak_bytes - second.peak_bytes > 250 * mb  # the second block did not inherit the first's peak
    assert memory.process_peak_bytes() >= first.peak_bytes


def _batch(tok):
    examples = [tokenize_example(tok, [{"role": "user", "content": q}], a, 512) for q, a in QA]
    # Two packed bins of two examples each, plus padding in the shorter bin.
    return collate([[examples[0], examples[1]], [examples[2], examples[3]]], tok.pad_token_id)


def _qwen2(tiny_model_dir):
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    torch.manual_seed(1)
    config = Qwen2Config(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         tie_word_embeddings=False)
    return Qwen2ForCausalLM(config), tok


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2"])
def test_answer_only_loss_equals_the_full_loss_and_gradients(arch, tiny_model_dir, tiny_gpt2_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if arch == "qwen2":
        model, tok = _qwen2(tiny_model_dir)
    else:
        path = tiny_model_dir if arch == "llama" else tiny_gpt2_dir
        model, tok = AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)
    model.train()
    t = _batch(tok)
    head = model.get_output_embeddings()
    rows = []
    hook = head.register_forward_hook(lambda mod, inp, out: rows.append(inp[0].shape))

    def full_logits_loss():  # the reference: the model's own forward, logits at every position
        logits = model(input_ids=t["input_ids"], attention_mask=t["attention_mask"], position_ids=t["position_ids"],
                       use_cache=False).logits
        return _shifted_loss(logits, t["labels"])

    def loss_and_grads(answer_only: bool):
        model.zero_grad(set_to_none=True)
        torch.manual_seed(0)  # GPT-2 has dropout: the same masks in both passes
        loss = batch_loss(model, t) if answer_only else full_logits_loss()
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    full, full_grads = loss_and_grads(False)
    rows.clear()
    part, part_grads = loss_and_grads(True)
    hook.remove()
    answer_tokens = int((t["labels"][:, 1:] != IGNORE).sum())
    # The head ran on the answer tokens only: (answer tokens, hidden), not (batch, seq, hidden).
    assert rows == [torch.Size([answer_tokens, model.config.hidden_size if arch != "gpt2" else model.config.n_embd])]
    torch.testing.assert_close(part, full, rtol=1e-5, atol=1e-5)
    assert part_grads.keys() == full_grads.keys()
    for name in full_grads:
        torch.testing.assert_close(part_grads[name], full_grads[name], rtol=1e-4, atol=1e-6, msg=name)


def test_chunked_head_loss_equals_one_pass_and_recomputes_each_chunk(tiny_model_dir, monkeypatch):
    """The LM head and its cross-entropy a few answer tokens at a time: same loss and gradients as one pass,
    and no chunk's logits kept for the backward pass (the head runs again on each chunk there)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, tok = AutoModelForCausalLM.from_pretrained(tiny_model_dir), AutoTokenizer.from_pretrained(tiny_model_dir)
    model.train()
    t = _batch(tok)
    answer_tokens = int((t["labels"][:, 1:] != IGNORE).sum())
    chunk = 7
    assert answer_tokens > 2 * chunk
    rows = []
    model.get_output_embeddings().register_forward_hook(lambda mod, inp, out: rows.append(inp[0].shape[0]))

    def loss_and_grads(loss_chunk):
        model.zero_grad(set_to_none=True)
        rows.clear()
        monkeypatch.setattr(train_module, "LOSS_CHUNK_TOKENS", loss_chunk)
        loss = batch_loss(model, t)
        forward_rows = list(rows)
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}, forward_rows, rows[len(forward_rows):]

    whole, whole_grads, whole_fwd, whole_bwd = loss_and_grads(answer_tokens)  # all in one pass
    part, part_grads, part_fwd, part_bwd = loss_and_grads(chunk)
    assert whole_fwd == [answer_tokens] and whole_bwd == []
    assert max(part_fwd) <= chunk and sum(part_fwd) == answer_tokens
    assert part_bwd == part_fwd[::-1]  # each chunk's logits recomputed in the backward pass, none kept
    torch.testing.assert_close(part, whole, rtol=1e-5, atol=1e-5)
    for name in whole_grads:
        torch.testing.assert_close(part_grads[name], whole_grads[name], rtol=1e-4, atol=1e-6, msg=name)


def test_gradient_checkpointing_trains_the_same_weights(tiny_model_dir, tmp_path):
    from toolkit.runtime.loading import load_model_and_tokenizer
    from toolkit.runtime.models import resolve_model

    curves = {}
    for setting in (False, True):
        model, tok = load_model_and_tokenizer(resolve_model(str(tiny_model_dir)))
        examples = [tokenize_example(tok, [{"role": "user", "content": q}], a, 256) for q, a in QA]
        cfg = TrainConfig(max_steps=3, batch_size=2, seq_len=128, threads=1, checkpoint_every=0,
                          gradient_checkpointing=setting)
        stats = train(model, tok, examples, cfg, tmp_path / f"gc-{setting}", seed=0)
        assert stats["gradient_checkpointing"] is setting
        assert not model.is_gradient_checkpointing  # switched off again before the save
        curves[setting] = [r["loss"] for r in stats["curve"]]
    assert curves[True] == pytest.approx(curves[False], rel=1e-5)


def test_manifest_records_peak_memory_for_every_stage(tmp_path, tiny_model_dir, teacher_server):
    """The real CLI, two rounds (every FDD stage kind): each stage carries its peak RSS, the table shows it."""
    recipe = write_tiny_recipe(tmp_path, tiny_model_dir, teacher_server.base_url)
    r = toolkit("distill", str(recipe), f"data.root={DATA}", "distill.rounds=2", "distill.label_solves=2",
                "distill.vote_min=1", "distill.question_max_tokens=96", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    manifest = json.loads((tmp_path / "runs" / "tiny" / "manifest.json").read_text())
    stages = manifest["stages"]
    assert len(stages) == 10
    for name, stage in stages.items():
        # A python process with torch imported holds well over 50 MB; less than 64 GB on any test machine.
        assert 50e6 < stage["peak_rss_bytes"] < 64e9, name
        assert stage["peak_rss_method"] == "vmhwm", name
        assert 50e6 < stage["start_rss_bytes"] <= stage["peak_rss_bytes"], name
    assert manifest["peak_rss_bytes"] >= max(s["peak_rss_bytes"] for s in stages.values())
    assert "peak memory" in r.stdout and " GB" in r.stdout


def _tiny(tiny_model_dir):
    from toolkit.runtime.loading import load_model_and_tokenizer
    from toolkit.runtime.models import resolve_model

    model, tok = load_model_and_tokenizer(resolve_model(str(tiny_model_dir)))
    return model, tok, [tokenize_example(tok, [{"role": "user", "content": q}], a, 64) for q, a in QA]


def test_micro_batches_split_each_batch_and_train_the_same_weights(tiny_model_dir, tmp_path):
    curves, rows = {}, {}
    for micro in (2, 1):
        model, tok, examples = _tiny(tiny_model_dir)
        seen = []
        model.get_input_embeddings().register_forward_hook(lambda m, args, out: seen.append(args[0].shape[0]))
        cfg = TrainConfig(max_steps=2, batch_size=2, seq_len=64, threads=1, checkpoint_every=0,
                          micro_batch_size=micro, precision="fp32")
        stats = train(model, tok, examples, cfg, tmp_path / f"micro-{micro}", seed=0)
        curves[micro], rows[micro] = [r["loss"] for r in stats["curve"]], seen
    assert max(rows[2]) == 2  # seq_len 64 leaves at least 2 packed sequences to split
    assert rows[1] == [1] * sum(rows[2])  # the same sequences, one per pass
    assert curves[1] == pytest.approx(curves[2], rel=1e-5)


def test_bf16_precision_runs_the_matmuls_in_bf16_and_keeps_the_student_fp32(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    curves = {}
    for precision in ("fp32", "bf16"):
        model, tok, examples = _tiny(tiny_model_dir)
        dtypes = set()
        model.model.layers[0].mlp.down_proj.register_forward_hook(lambda m, args, out: dtypes.add(out.dtype))
        cfg = TrainConfig(max_steps=3, batch_size=2, seq_len=64, threads=1, checkpoint_every=0, precision=precision)
        stats = train(model, tok, examples, cfg, tmp_path / precision, seed=0)
        assert stats["precision"] == precision
        assert dtypes == {torch.bfloat16 if precision == "bf16" else torch.float32}
        saved = AutoModelForCausalLM.from_pretrained(tmp_path / precision, torch_dtype="auto")
        assert {p.dtype for p in saved.parameters()} == {torch.float32}
        curves[precision] = [r["loss"] for r in stats["curve"]]
    assert curves["bf16"] != curves["fp32"]  # a different arithmetic, not a relabelled fp32 run
    assert curves["bf16"] == pytest.approx(curves["fp32"], rel=0.05)


def test_adamw_is_fused(tiny_model_dir, tmp_path, monkeypatch):
    made = []

    class Spy(torch.optim.AdamW):
        def __init__(self, *args, **kwargs):
            made.append(kwargs.get("fused"))
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(torch.optim, "AdamW", Spy)
    model, tok, examples = _tiny(tiny_model_dir)
    cfg = TrainConfig(max_steps=1, batch_size=2, seq_len=64, threads=1, checkpoint_every=0)
    train(model, tok, examples, cfg, tmp_path / "fused", seed=0)
    assert made == [True]


def test_tied_embedding_gradient_is_added_in_place_and_trains_the_same_weights(tiny_model_dir, tmp_path, monkeypatch):
    """The tiny llama ties its embedding to the LM head: the lookup runs outside autograd (so autograd never
    makes the embedding's dense gradient, 113 MB for SmolLM2) and its gradient is added to the head's in
    place; losses and saved weights equal autograd's path to float rounding."""
    from transformers import AutoModelForCausalLM

    curves, weights = {}, {}
    for in_place in (False, True):
        model, tok, examples = _tiny(tiny_model_dir)
        grad_mode = []
        model.get_input_embeddings().register_forward_hook(lambda m, a, o: grad_mode.append(torch.is_grad_enabled()))
        cfg = TrainConfig(max_steps=3, batch_size=2, seq_len=64, threads=1, checkpoint_every=0)
        with monkeypatch.context() as patch:
            if not in_place:  # the reference: autograd makes the embedding's gradient
                patch.setattr(train_module.EmbeddingGrad, "of", classmethod(lambda cls, model: None))
            stats = train(model, tok, examples, cfg, tmp_path / f"in-place-{in_place}", seed=0)
        assert grad_mode and set(grad_mode) == {not in_place}
        curves[in_place] = [r["loss"] for r in stats["curve"]]
        weights[in_place] = AutoModelForCausalLM.from_pretrained(tmp_path / f"in-place-{in_place}").state_dict()
    assert curves[True] == pytest.approx(curves[False], rel=1e-5)
    for name, w in weights[False].items():
        torch.testing.assert_close(weights[True][name], w, rtol=1e-4, atol=1e-6, msg=name)


def test_embedding_grad_skips_padding_idx_as_autograd_does():
    from toolkit.training.train import EmbeddingGrad

    torch.manual_seed(0)
    emb = torch.nn.Embedding(10, 4, padding_idx=3)
    ids = torch.tensor([[3, 1, 3, 5], [1, 1, 9, 3]])  # the padding id at real positions, repeated ids
    upstream = torch.randn(2, 4, 4)
    (emb(ids) * upstream).sum().backward()
    expected = emb.weight.grad.clone()
    emb.weight.grad = torch.zeros_like(emb.weight)  # the head's gradient stands here in training
    embeds = EmbeddingGrad(emb).lookup(ids)
    (embeds * upstream).sum().backward()
    EmbeddingGrad(emb).add_grad(ids, embeds)
    torch.testing.assert_close(emb.weight.grad, expected)
    assert not emb.weight.grad[3].any()


def test_embedding_grad_only_where_the_head_shares_a_trained_plain_embedding(tiny_model_dir):
    """Untied (no head gradient to add to), frozen (LoRA) or transformed (Gemma 3's scaled) embeddings are
    left to autograd."""
    from toolkit.training.train import EmbeddingGrad

    untied, _ = _qwen2(tiny_model_dir)
    assert EmbeddingGrad.of(untied) is None
    frozen, _, _ = _tiny(tiny_model_dir)
    frozen.get_input_embeddings().weight.requires_grad_(False)
    assert EmbeddingGrad.of(frozen) is None
    scaled, _, _ = _tiny(tiny_model_dir)
    plain = scaled.get_input_embeddings()
    subclass = type("ScaledEmbedding", (torch.nn.Embedding,), {})(plain.num_embeddings, plain.embedding_dim)
    subclass.weight = plain.weight
    scaled.set_input_embeddings(subclass)
    assert EmbeddingGrad.of(scaled) is None
    tied, _, _ = _tiny(tiny_model_dir)
    assert EmbeddingGrad.of(tied).emb is tied.get_input_embeddings()
