"""The calculator inside each backend's decoding loop (toolkit/data/calculator.py holds the arithmetic).

Token-level backends (torch and optimum ONNX through a LogitsProcessor, onnxruntime-genai through
get/set_logits, llama.cpp in process through its logits_processor) pick every next token themselves:
one `calculator.Sequence` per row forces the result's tokens and then keeps the next tokens from extending
its number (`36` + `5`, `.5`).
A served model is text in, text out: `stream_with_calculator` reads the server's token stream, and
where the model's own text leaves the calculator's result it stops the stream and asks again with the
result appended to the prompt (a raw completion; see openai_backend.LlamaServerGenerator).
"""
from __future__ import annotations

from collections.abc import Callable, Iterator

from toolkit.data.calculator import CONTINUES, MAY_CONTINUE, RANKED, Sequence, result_for, steer


def hf_sequence(tokenizer, prefix: str = "") -> Sequence:
    """A calculator sequence over a transformers tokenizer."""
    return Sequence(lambda ids: tokenizer.decode(ids, skip_special_tokens=True),
                    lambda text: tokenizer(text, add_special_tokens=False)["input_ids"], prefix)


def assistant_prefix(messages: list[dict]) -> str:
    """The assistant text a prompt already ends with (a forced tag, a prefilled answer), else ''."""
    return messages[-1]["content"] if messages and messages[-1]["role"] == "assistant" else ""


class TorchCalculator:
    """A transformers LogitsProcessor for one left-padded batch whose prompts are `width` tokens wide."""

    def __init__(self, sequences: list[Sequence], width: int):
        self.seqs, self.width = sequences, width

    def __call__(self, input_ids, scores):
        # heavy optional runtime, imported on first use
        import torch

        for row, seq in enumerate(self.seqs):
            for tok in input_ids[row, self.width + len(seq.ids):].tolist():
                seq.push(tok)
            tok = seq.choose(lambda: iter(torch.topk(scores[row], min(RANKED, scores.shape[-1])).indices.tolist()))
            if tok is not None:
                # A finite score, whatever an earlier processor made of it: a row of -inf alone would make
                # greedy take token 0 and sampling fail on NaN.
                scores[row] = -torch.inf
                scores[row, tok] = 0.0
        return scores


class LlamaCppCalculator:
    """llama-cpp-python's logits_processor for one prompt of `n_prompt` tokens (it sees every token so far)."""

    def __init__(self, seq: Sequence, n_prompt: int):
        self.seq, self.n_prompt = seq, n_prompt

    def __call__(self, input_ids, scores):
        for tok in input_ids[self.n_prompt + len(self.seq.ids):].tolist():
            self.seq.push(int(tok))
        return steer(self.seq, scores)


class End:
    """The last item of a stream: `by_model` when the model ended its answer, not the token budget."""

    def __init__(self, by_model: bool):
        self.by_model = by_model


# A stream opener for the text loop: (text generated so far, token budget, keep the first tokens from
# extending the number the text ends with) -> the model's next pieces (str, about one per token), then one End.
Opener = Callable[[str, int, bool], Iterator["str | End"]]


def stream_with_calculator(open_stream: Opener, prefix: str, max_tokens: int) -> tuple[str, int, int]:
    """(generated text, results forced, results that differed from the model's own text) for a server.

    After `expr =` the model's pieces are compared with the result's text: while they agree the stream
    goes on untouched; when they leave it (another number, the same digits continued, or the end of the
    answer), the stream is closed and reopened from the text with the result appended, its first tokens
    kept from extending the number (calculator.CONTINUES). `max_tokens` counts the model's tokens, including those dropped at a changed result.
    """
    gen, used, changed, guard = "", 0, 0, False
    pending = result_for(prefix)  # a result the model's next pieces are being compared with
    forced, seen = int(pending is not None), ""  # seen: the model's text since `pending` began
    while used < max_tokens:
        diverged, ended = False, False
        stream = open_stream(gen, max_tokens - used, guard)
        guard = False
        try:
            for piece in stream:
                if isinstance(piece, End):
                    ended = piece.by_model
                    break
                used += 1
                if pending is not None:
                    seen += piece
                    want = pending.text
                    if len(seen) <= len(want) and want.startswith(seen):
                        continue  # agrees so far (when complete, the next pieces must not extend it)
                    rest = seen[len(want):] if seen.startswith(want) else None
                    if rest is None or CONTINUES.match(rest):
                        diverged = True
                        break
                    if rest in MAY_CONTINUE:
                        continue  # `36.`: the next piece says whether it is 36.5
                    piece, pending, seen = seen, None, ""
                gen += piece
                if gen.endswith(("=", "= ")):
                    pending = result_for(prefix + gen)
                    forced += pending is not None
        finally:
            stream.close()
        if pending is None:
            break
        if not diverged and seen.startswith(pending.text):  # the model wrote the result itself, then ended
            gen, pending = gen + seen, None
            break
        gen, pending, seen = gen + pending.text, None, ""
        if not (diverged or ended):
            break  # the budget ran out inside the result: it is written, nothing follows
        changed += 1
        guard = True
    return gen, forced, changed
