"""The one prompt rule: a student's messages as the exact text it is trained on, evaluated with and shipped with.

The messages come from the student's strategies (toolkit.data.strategies: `training_prompt`, `eval_prompt`): a
system text and the question. A tokenizer with a chat template renders them with the template and its
generation prompt; one without renders them in the plain format below. Training (toolkit.training.train), every
eval backend and the bundle runners (toolkit.export.bundle, which read the record this module writes) use this
rule and nothing else, so a student is asked in deployment exactly as it was taught.
"""
from __future__ import annotations

from pathlib import Path

from toolkit.core import untrusted_json
from toolkit.core.errors import ToolkitError
from toolkit.data.strategies import STRATEGIES, TAGS, is_tagged, training_prompt

Messages = list[dict[str, str]]

PROMPT_FILE = "prompt.json"  # the record, beside a student's config.json and in every export and bundle
KIND = "toolkit-prompt"
# The plain format, for a tokenizer without a chat template: the system text, a blank line, the question (both
# stripped), "Answer:"; the reply follows after one space (PLAIN_ANSWER_PREFIX), and in training the tokenizer's
# end token after it. Generation also stops where the model starts another question.
PLAIN_TEMPLATE = "{system}\n\nQuestion: {question}\nAnswer:"
PLAIN_ANSWER_PREFIX = " "
PLAIN_STOP = ("\nQuestion:",)


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def plain_text(messages: Messages) -> str:
    """Messages in the plain format: system text first, user turns as questions, assistant turns as answers
    (a system and a user message give exactly PLAIN_TEMPLATE)."""
    parts = []
    for m in messages:
        if m["role"] == "system":
            parts.append(m["content"].strip() + "\n\n")
        elif m["role"] == "user":
            parts.append(f"Question: {m['content'].strip()}\nAnswer:")
        else:
            parts.append(f"{PLAIN_ANSWER_PREFIX}{m['content'].strip()}\n\n")
    return "".join(parts)


def plain_prompt(prompt: str, prefix: str) -> str:
    """A plain prompt continued by `prefix` (a forced strategy tag), after the answer's leading space."""
    return prompt + (PLAIN_ANSWER_PREFIX + prefix if prefix else "")


def render(tokenizer, messages: Messages) -> tuple[str, tuple[str, ...]]:
    """(prompt text, stop strings) of `messages` for a transformers tokenizer: its chat template with the
    generation prompt when it has one, else the plain format.

    A trailing assistant message is a prefix the model continues (a forced strategy tag), not a closed turn:
    the generation prompt and then the prefix verbatim (continue_final_message would strip its trailing
    newline, and "[pot]" then tokenizes differently from the "[pot]\n" the student learned).
    """
    prefix = ""
    if messages and messages[-1]["role"] == "assistant":
        messages, prefix = messages[:-1], messages[-1]["content"]
    if has_chat_template(tokenizer):
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False) + prefix, ()
    return plain_prompt(plain_text(messages), prefix), PLAIN_STOP


def training_texts(tokenizer, messages: Messages, completion: str) -> tuple[str, str]:
    """(prompt, prompt + completion + end) of one training example: the prompt exactly as `render` gives it at
    inference, then the reply and the end of its turn (the template's closing of the assistant turn; in the
    plain format the tokenizer's end token), so that the student learns to stop."""
    prompt, _ = render(tokenizer, messages)
    end = tokenizer.eos_token or ""
    if not has_chat_template(tokenizer):
        return prompt, prompt + PLAIN_ANSWER_PREFIX + completion + end
    full = tokenizer.apply_chat_template(messages + [{"role": "assistant", "content": completion}], tokenize=False)
    if not full.startswith(prompt):  # templates that rewrite earlier turns: the reply appended to the prompt
        full = prompt + completion + end
    return prompt, full


def prompt_record(strategies: list[str] | tuple[str, ...], chat: bool) -> dict:
    """The rule for a student of `strategies` whose tokenizer has (`chat`) or lacks a chat template, as data: what a
    runtime without toolkit needs to build the same prompt (toolkit.export.bundle's runners read it).

    format "chat": messages [{"role": "system", "content": system}, {"role": "user", "content": question}]
    rendered by the model's chat template with the generation prompt; "plain": plain_template with the system
    text and the stripped question. A forced strategy (`tags`, tagged students only) follows the prompt verbatim,
    in the plain format after plain_answer_prefix.
    """
    chosen = list(strategies)
    return {"kind": KIND, "format": "chat" if chat else "plain", "strategies": chosen,
            "system": training_prompt("", chosen)[0]["content"],
            "tags": {s: TAGS[s] + "\n" for s in chosen} if is_tagged(chosen) else {},
            "plain_template": PLAIN_TEMPLATE, "plain_answer_prefix": PLAIN_ANSWER_PREFIX,
            "plain_stop": list(PLAIN_STOP)}


def record_for(tokenizer, strategies: list[str] | tuple[str, ...]) -> dict:
    """The prompt record of a student of `strategies` with this tokenizer."""
    return prompt_record(strategies, has_chat_template(tokenizer))


def read_record(folder: Path) -> dict | None:
    """The prompt record in `folder` (a student or export folder; it may come from elsewhere), or None when it
    has none. Only its strategies and format are read back: the rest follows from them by prompt_record."""
    path = Path(folder) / PROMPT_FILE
    if not path.exists() and not path.is_symlink():
        return None  # anything else there (a FIFO, a device, a link) is read_bounded's to refuse, not to skip
    try:
        data = untrusted_json.load(path, max_bytes=1 << 16)  # ours is ~1 KB
    except OSError as exc:  # unreadable (permissions, a dangling link swapped in): one line, not a traceback
        raise ToolkitError(f"{path}: cannot read the prompt record ({exc.strerror or exc})") from None
    strategies, fmt = data.get("strategies"), data.get("format")
    if (data.get("kind") != KIND or fmt not in ("chat", "plain") or not isinstance(strategies, list) or not strategies
            or any(s not in STRATEGIES for s in strategies) or len(set(strategies)) != len(strategies)):
        raise ToolkitError(f"{path} is not a prompt record (kind {KIND!r}, format chat or plain, strategies "
                           f"among {', '.join(STRATEGIES)})")
    return prompt_record(strategies, fmt == "chat")
