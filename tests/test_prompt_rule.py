"""The prompt rule (toolkit/data/prompt_rule.py) in training: the plain format of a tokenizer without a chat template,
answer-only labels when a merge crosses the prompt/answer boundary, and the record a student folder carries."""
from __future__ import annotations

import json
import os

import pytest

from tests.conftest import build_tiny_tokenizer
from toolkit.core.errors import ToolkitError
from toolkit.data.prompt_rule import PLAIN_STOP, PROMPT_FILE, prompt_record, read_record, render, training_texts
from toolkit.data.strategies import COT_INSTRUCTION, training_prompt
from toolkit.training.train import IGNORE, tokenize_example

# The generation prompt ends with "Answer:"; an assistant turn is "Answer:" + the reply + "</s>".
ANSWER_TEMPLATE = ("{% for m in messages %}{% if m['role'] == 'assistant' %}Answer:{{ m['content'] }}</s>"
                   "{% else %}{{ m['role'] }}: {{ m['content'] }}\n{% endif %}{% endfor %}"
                   "{% if add_generation_prompt %}Answer:{% endif %}")


def merging_tokenizer(chat: bool):
    """A character-level BPE with no pre-tokenizer and two merges, ': ' before 'r:': the prompt alone ends in the
    token 'r:', while in prompt + ' He…' the merge ': ' takes the prompt's ':' and the answer's space, so the
    prompt's ids are not a prefix of the example's and the old count of prompt tokens labels ': '."""
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    texts = [COT_INSTRUCTION, "system user Question: Answer: He has 3 + 5 = 8.\n"]
    chars = sorted({c for t in texts for c in t} | {"\n"})
    vocab = {"<unk>": 0, "</s>": 1, **{c: i + 2 for i, c in enumerate(chars)}}
    vocab[": "], vocab["r:"] = len(vocab), len(vocab) + 1
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[(":", " "), ("r", ":")], unk_token="<unk>"))
    tok.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", unk_token="<unk>", pad_token="<unk>")
    if chat:
        fast.chat_template = ANSWER_TEMPLATE
    return fast


@pytest.mark.parametrize("chat", [True, False], ids=["chat", "plain"])
def test_labels_follow_character_offsets_when_a_merge_crosses_the_boundary(chat):
    tok = merging_tokenizer(chat)
    messages = training_prompt("Tom has 3 + 5.", ["cot"])
    # In the plain format the rule puts the space between "Answer:" and the reply; here the reply brings its own.
    completion = " He has 8." if chat else "He has 8."
    prompt, full = training_texts(tok, messages, completion)
    assert prompt == render(tok, messages)[0] and prompt.endswith("Answer:") and full.startswith(prompt + " He")
    prompt_ids, full_ids = (tok(t, add_special_tokens=False)["input_ids"] for t in (prompt, full))
    assert full_ids[: len(prompt_ids)] != prompt_ids  # the merge really crosses the boundary
    ex = tokenize_example(tok, messages, completion, 512)
    assert ex.input_ids == full_ids
    labelled = [t for t, label in zip(ex.input_ids, ex.labels) if label != IGNORE]
    # Exactly the tokens that start in the reply: ": " holds the prompt's ":" and is not labelled.
    assert tok.decode(labelled) == "He has 8.</s>"
    starts = [s for s, _ in tok(full, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]]
    assert all((label != IGNORE) == (s >= len(prompt)) for s, label in zip(starts, ex.labels))


def test_a_tokenizer_without_a_chat_template_trains_on_the_plain_eval_prompt(tmp_path):
    """No chat template: the example is the plain-format prompt the eval renders, then ' ' + reply + end token."""
    tok = build_tiny_tokenizer(tmp_path)
    tok.chat_template = None
    messages = training_prompt("Tom has 3 apples and buys 5 more. How many apples does he have?", ["cot"])
    text, stops = render(tok, messages)
    assert text == (f"{COT_INSTRUCTION}\n\nQuestion: Tom has 3 apples and buys 5 more. How many apples does he "
                    f"have?\nAnswer:") and stops == PLAIN_STOP
    ex = tokenize_example(tok, messages, "He has 3 + 5 = 8 apples.\nThe answer is 8.", 512)
    n_prompt = ex.labels.count(IGNORE)
    assert tok.decode(ex.input_ids[:n_prompt]) == text
    assert tok.decode(ex.input_ids[n_prompt:]) == " He has 3 + 5 = 8 apples.\nThe answer is 8.<|im_end|>"


def test_the_record_and_its_checks(tmp_path):
    record = prompt_record(["cot", "pot"], chat=False)
    assert record["format"] == "plain" and record["tags"] == {"cot": "[cot]\n", "pot": "[pot]\n"}
    assert record["system"] == training_prompt("Q", ["cot", "pot"])[0]["content"]
    plain = build_tiny_tokenizer(tmp_path / "tok")
    plain.chat_template = None
    # the record's template is the rule's plain format (what a runner without toolkit builds)
    assert record["plain_template"].format(system=record["system"], question="Q") == render(
        plain, training_prompt(" Q ", ["cot", "pot"]))[0]
    assert read_record(tmp_path) is None
    (tmp_path / PROMPT_FILE).write_text(json.dumps(record))
    assert read_record(tmp_path) == record
    for bad in ({**record, "strategies": ["cot", "rm -rf"]}, {**record, "format": "xml"}, {**record, "kind": "x"}):
        (tmp_path / PROMPT_FILE).write_text(json.dumps(bad))
        with pytest.raises(ToolkitError, match="is not a prompt record"):
            read_record(tmp_path)

    (tmp_path / PROMPT_FILE).unlink()
    (tmp_path / PROMPT_FILE).symlink_to("/dev/zero")  # a record that is there but not a file: refused, not skipped
    with pytest.raises(ToolkitError, match="not a regular file"):
        read_record(tmp_path)


def test_an_unreadable_record_is_one_error(tmp_path):
    """A record the user may not read (root reads anything, so the denial is simulated at the open)."""
    (tmp_path / PROMPT_FILE).write_text("{}")
    real_open = os.open

    def denied(path, *a, **k):
        if str(path).endswith(PROMPT_FILE):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *a, **k)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(os, "open", denied)
        with pytest.raises(ToolkitError, match="cannot read the prompt record \\(Permission denied\\)"):
            read_record(tmp_path)
