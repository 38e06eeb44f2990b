"""Grouped-query attention in torch generation: SDPA gets the grouped key/value heads as they are, and the
answers are byte for byte those of transformers' own attention (eval/gqa_attention.py)."""
from __future__ import annotations

import pytest
import torch

from tests.conftest import build_export_model
from toolkit.runtime.models import resolve_model
from toolkit.eval.generate import TorchGenerator
from toolkit.eval.gqa_attention import NAME, grouped_sdpa
from toolkit.runtime.loading import load_model_and_tokenizer

# Different lengths, so the batch is left-padded and the padding mask matters.
PROMPTS = [[{"role": "user", "content": q}] for q in [
           "Tom has 3 apples and buys 5 more. How many apples does he have?",
           "What is 2 times 3?",
           "A baker makes 24 muffins, sells 18 of them in the morning and 2 in the afternoon. How many are left?",
           "Divide 28 pencils into 4 boxes."]]


def test_sdpa_takes_the_mask_and_the_grouped_heads_with_bitwise_the_same_output():
    """The premise: with a padding mask, SDPA on grouped heads equals SDPA on copied heads, bit for bit."""
    from transformers.integrations.sdpa_attention import repeat_kv

    torch.manual_seed(0)
    for q_len, k_len in ((1, 37), (12, 12)):  # a decoding step and a prefill
        q, k, v = torch.randn(3, 6, q_len, 16), torch.randn(3, 2, k_len, 16), torch.randn(3, 2, k_len, 16)
        mask = torch.zeros(3, 1, q_len, k_len)
        mask[1, :, :, :4] = torch.finfo(torch.float32).min  # row 1 is left-padded
        copied = torch.nn.functional.scaled_dot_product_attention(q, repeat_kv(k, 3), repeat_kv(v, 3), attn_mask=mask)
        grouped = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
        assert torch.equal(copied, grouped)


def _implementations_seen(model) -> list[str]:
    seen = []
    model.register_forward_pre_hook(lambda m, args: seen.append(m.config._attn_implementation))
    return seen


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_generation_on_grouped_attention_gives_the_same_answers(arch, tmp_path):
    model, tok = load_model_and_tokenizer(resolve_model(str(build_export_model(tmp_path / arch, arch))))
    assert model.config._attn_implementation == "sdpa" and model.config.num_key_value_heads < \
        model.config.num_attention_heads
    seen = _implementations_seen(model)
    gen = TorchGenerator(model, tok, batch_size=4, threads=1)
    gen.grouped_attention = False
    reference = gen.generate(PROMPTS, max_new_tokens=16)
    assert set(seen) == {"sdpa"}
    seen.clear()
    gen.grouped_attention = True
    grouped = gen.generate(PROMPTS, max_new_tokens=16)
    assert set(seen) == {NAME}  # every forward of every step went through the grouped function
    assert grouped == reference
    assert len(set(reference)) > 1  # the prompts give different answers: the check can tell them apart
    assert model.config._attn_implementation == "sdpa"  # restored for whatever runs next (training)


def test_models_without_grouped_heads_or_on_another_attention_are_left_alone(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    full = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                        num_attention_heads=4, num_key_value_heads=4))
    eager = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=4, num_key_value_heads=2, attn_implementation="eager"))
    for model, implementation in ((full, "sdpa"), (eager, "eager")):
        assert model.config._attn_implementation == implementation
        with grouped_sdpa(model):
            assert model.config._attn_implementation == implementation
    grouped = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                           num_attention_heads=4, num_key_value_heads=2))
    with grouped_sdpa(grouped, enabled=False):
        assert grouped.config._attn_implementation == "sdpa"
    with pytest.raises(RuntimeError), grouped_sdpa(grouped):
        assert grouped.config._attn_implementation == NAME
        raise RuntimeError("generation failed")
    assert grouped.config._attn_implementation == "sdpa"  # restored on the way out of a failure too
