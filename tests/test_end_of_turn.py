"""The token that ends a turn: taken from the chat template, for families whose config lists several end tokens
(Llama-3.2-1B-Instruct, gemma-3-1b-it); generation stops at every one of them."""
from __future__ import annotations

import pytest
import torch

from tests.conftest import LLAMA3_SPECIALS
from toolkit.eval.generate import TorchGenerator
from toolkit.runtime.loading import load_model_and_tokenizer
from toolkit.runtime.models import resolve_model
from toolkit.training.train import IGNORE, tokenize_example

MESSAGES = [{"role": "user", "content": "What is 3 plus 5?"}]
FAMILIES = {  # fixture, end-of-turn token, every end token of the config
    "llama3": ("llama3_dir", "<|eot_id|>", {"<|end_of_text|>", "<|eom_id|>", "<|eot_id|>"}),
    "gemma3": ("gemma3_dir", "<end_of_turn>", {"<eos>", "<end_of_turn>"}),
}


def next_token_table(model, table: dict[int, int], default: int) -> None:
    """Weights that make the model a lookup table: after input token t greedy decoding emits table.get(t, default).
    No layer adds to the residual stream; t's embedding is the axis of its successor, whose output row is that
    axis (the head is untied from the embedding)."""
    successors = sorted(set(table.values()) | {default})
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        emb = model.get_input_embeddings().weight
        emb.zero_()
        emb[:, successors.index(default)] = 1.0
        for token, successor in table.items():
            emb[token].zero_()
            emb[token, successors.index(successor)] = 1.0
        head = torch.zeros_like(emb)
        for axis, successor in enumerate(successors):
            head[successor, axis] = 1.0
        model.get_output_embeddings().weight = torch.nn.Parameter(head)


def _ids(tok, tokens) -> set[int]:
    return set(tok.convert_tokens_to_ids(sorted(tokens)))


@pytest.mark.parametrize("family", FAMILIES)
def test_the_end_of_turn_token_is_eos_and_every_end_token_stops(family, request):
    fixture, turn_end, ends = FAMILIES[family]
    model, tok = load_model_and_tokenizer(resolve_model(str(request.getfixturevalue(fixture))))
    assert tok.eos_token == turn_end
    stops = model.generation_config.eos_token_id
    assert stops[0] == tok.eos_token_id and set(stops) == _ids(tok, ends)
    assert model.config.eos_token_id == stops

    # Training appends the end-of-turn token and learns it (nothing of the template after it).
    ex = tokenize_example(tok, MESSAGES, "3 + 5 = 8. The answer is 8.", 256)
    assert ex.input_ids[-1] == ex.labels[-1] == tok.eos_token_id
    assert tok.decode([t for t in ex.labels if t != IGNORE]) == "3 + 5 = 8. The answer is 8." + turn_end

    # Greedy generation stops at each end token the config lists, the end of turn included: in transformers'
    # generate, and in toolkit eval's torch backend (a model that writes 8, then the end token, then 8 again...).
    prompt = tok.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False)
    x = tok(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
    eight = tok("8", add_special_tokens=False)["input_ids"][0]
    for end in sorted(_ids(tok, ends)):
        next_token_table(model, {}, default=end)
        out = model.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=6, do_sample=False)
        assert out[0, x.shape[1]:].tolist() == [end], (family, tok.convert_ids_to_tokens(end))
        next_token_table(model, {x[0, -1].item(): eight, eight: end}, default=eight)
        gen = TorchGenerator(model, tok, batch_size=1, threads=1)
        assert gen.generate([MESSAGES], max_new_tokens=6) == ["8"], (family, tok.convert_ids_to_tokens(end))


def test_a_template_without_a_special_turn_end_keeps_the_configs_eos(tmp_path):
    """No special token follows the assistant's content (a plain `Assistant:` template): the tokenizer's EOS
    stays when the config lists it, and generation still stops at every end token."""
    from tests.conftest import build_turn_model

    folder = build_turn_model(tmp_path / "plain", "llama3")
    (folder / "chat_template.jinja").write_text(
        "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}assistant:{% endif %}")
    model, tok = load_model_and_tokenizer(resolve_model(str(folder)))
    assert tok.eos_token == "<|eot_id|>"
    assert set(model.generation_config.eos_token_id) == _ids(tok, LLAMA3_SPECIALS[1:2] + LLAMA3_SPECIALS[4:])
