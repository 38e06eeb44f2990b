"""What every generation backend shares: the Generator interface, batching, answers in order, llama.cpp prompts."""
from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from toolkit.data.calculator import Sequence
from toolkit.data.prompt_rule import PLAIN_STOP, plain_prompt, plain_text
from toolkit.eval.prompts import cut_at_stop

Messages = list[dict[str, str]]


class Generator(Protocol):
    """What every backend offers: greedy (temperature 0) or sampled chat completions, in prompt order.

    `config` describes the backend's settings (threads, batch size, prompt format) for the results JSON;
    `close()` releases what it holds (a server process, a session). With `calculator` on, arithmetic
    the model writes before `=` is computed and forced (eval/calc_decode.py), and `calc_counts` holds
    (results forced, results that differed from the model's own) per prompt of the last `generate`.
    """

    name: str
    config: dict
    calculator: bool
    calc_counts: list[tuple[int, int]]

    def generate(self, prompts: list[Messages], max_new_tokens: int, temperature: float = 0.0,
                 on_done: Callable[[int], None] | None = None) -> list[str]: ...

    def close(self) -> None: ...


def length_sorted_batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Prompt indices grouped into batches of similar length, so that each batch pads little."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    return [order[s:s + batch_size] for s in range(0, len(order), batch_size)]


def equal_length_batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Prompt indices grouped into batches of exactly equal length (no padding at all), shortest first."""
    groups: dict[int, list[int]] = {}
    for i, n in enumerate(lengths):
        groups.setdefault(n, []).append(i)
    return [idx[s:s + batch_size] for n in sorted(groups) for idx in [groups[n]]
            for s in range(0, len(idx), batch_size)]


class BatchAnswers:
    """Answers and calculator counts gathered batch by batch (in length order), kept in prompt order;
    `stops`: each prompt's stop strings, where its answer is cut."""

    def __init__(self, stops: list[tuple[str, ...]]):
        self.stops = stops
        self.texts = [""] * len(stops)
        self.calc_counts: list[tuple[int, int]] = [(0, 0)] * len(stops)  # (results forced, results changed)

    def put_batch(self, idx: list[int], texts: list[str], seqs: list[Sequence],
                  on_done: Callable[[int], None] | None) -> None:
        """The generated texts of the prompts `idx`, row by row; `seqs`: their calculator sequences (empty
        when the calculator is off); `on_done(n)` hears that n more prompts are answered. A forced result that
        the token limit cut off is written whole (as the server loop does): a cut `13969` would read as an answer."""
        for row, i in enumerate(idx):
            self.texts[i] = cut_at_stop(texts[row] + (seqs[row].unwritten() if seqs else ""), self.stops[i])
            if seqs:
                self.calc_counts[i] = (seqs[row].forced, seqs[row].changed)
        if on_done:
            on_done(len(idx))


def llama_prompt(llm, messages: Messages) -> tuple[str, list[str]]:
    """(prompt text, stop strings) for a llama-cpp-python model by the prompt rule (toolkit.data.prompt_rule.render,
    with the GGUF's own template engine): its GGUF chat template rendered as its create_chat_completion does, or
    the plain format; a trailing assistant message is continued (the generation prompt, then its text)."""
    # heavy optional runtime, imported on first use
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    prefix = ""
    if messages and messages[-1]["role"] == "assistant":
        messages, prefix = messages[:-1], messages[-1]["content"]
    template = llm.metadata.get("tokenizer.chat_template")
    if not template:
        return plain_prompt(plain_text(messages), prefix), list(PLAIN_STOP)
    special = [llm._model.token_get_text(t) if t != -1 else "" for t in (llm.token_eos(), llm.token_bos())]
    result = Jinja2ChatFormatter(template=template, eos_token=special[0], bos_token=special[1])(messages=messages)
    return result.prompt + prefix, [special[0]] if special[0] else []
