"""The calculator: what it accepts and how it prints, what it refuses, and its per-sequence decoding state."""
from __future__ import annotations

import re
from fractions import Fraction

import pytest

from toolkit.data.calculator import CalcError, Sequence, evaluate, format_number, result_for
from toolkit.eval.calc_decode import End, stream_with_calculator


@pytest.mark.parametrize("expr, shown", [
    ("12 * 3", "36"), ("1,234 + 1", "1235"), ("3x5", "15"), ("4 × 2.5", "10"), ("7 ÷ 2", "3.5"),
    ("10 − 4", "6"), ("50 * 20%", "10"), ("30% * 40", "12"), ("0.1 + 0.2", "0.3"), ("1/3", "0.3333"),
    ("2/3", "0.6667"), ("7/8", "0.875"), ("1/1024", "0.0009765625"), ("-(2 + 3) * 4", "-20"), ("2/3*3", "2"),
    ("(((1+1)))", "2"), (".5 * 4", "2"), ("100 / 8", "12.5"), ("5 - -3", "8"),
])
def test_valid_expressions_and_how_results_print(expr, shown):
    assert format_number(evaluate(expr)) == shown


@pytest.mark.parametrize("expr", [
    "2 ** 10", "2 ^ 10", "1e308 * 2", "9" * 16 + " + 1", "999999999999999 * 999999999999999",
    "(" * 9 + "1" + ")" * 9, "1 + " * 40 + "1", "1" + " " * 250 + "+ 1", "abs(3) + 1", "__import__('os')",
    "a * b", "3 * x", "1,23 + 4", "50 + 10%", "10%", "5 / 0", "(2 + 3", "2 + 3)", "", "3 +", "1; 2",
])
def test_hostile_and_non_arithmetic_input_is_refused(expr):
    with pytest.raises(CalcError):
        evaluate(expr)


def test_tiny_results_are_refused_not_printed_as_zero():
    with pytest.raises(CalcError):
        format_number(Fraction(1, 30000))


@pytest.mark.parametrize("text, forced", [
    ("He has 12 * 3 =", " 36"), ("He has 12 * 3 = ", "36"), ("The tax is 5 * 2 =", " 10"),
    ("(so 3 * 4 =", " 12"), ("3 + 4 = 7 + 2 =", " 9"), ("$5 * 3 =", " 15"), ("total: 1,200 / 4 =", " 300"),
    ("answer = a * b", None), ("x = 5", None), ("answer =", None), ("apples + 5 =", None), ("12 * 3 = 36 =", None),
    ("2**10 =", None), ("20% of 50 =", None), ("He has 12 * 3", None), ("12 * 3 =  ", None), ("-5 =", None),
    ("box x 3 =", None), ("(" * 12 + "1+1" + ")" * 12 + " =", None),
    # after sentence punctuation (a `.` or `,` and a space), the expression starts afresh
    ("He has 3 bags. 3 * 4 =", " 12"), ("So, 3 * 4 =", " 12"), ("5 - 2 = 3. 3 * 4 =", " 12"),
    ("1. 5 + 3 = ", "8"), ("I have 3, 4 * 2 =", " 8"), ("It costs 1,200. 2 * 3 =", " 6"),
])
def test_the_trigger_fires_only_on_arithmetic_before_equals(text, forced):
    found = result_for(text)
    assert (found.text if found else None) == forced


# A word-level "tokenizer" for the decoding state: one token per whitespace-separated piece.
VOCAB = [" ", "=", " =", "3", "6", "5", " apples", ".", "12", " *", " 3", "<end>", " 36", " 365", ".5", ",000", ","]


def _tok():
    decode = lambda ids: "".join(VOCAB[i] for i in ids)  # noqa: E731
    def encode(text):
        ids, rest = [], text
        while rest:  # greedy longest match
            i = max((k for k, v in enumerate(VOCAB) if rest.startswith(v)), key=lambda k: len(VOCAB[k]))
            ids.append(i)
            rest = rest[len(VOCAB[i]):]
        return ids
    return decode, encode


def _decode_with(model_best: list[int], prefix: str) -> tuple[str, Sequence]:
    """Run a Sequence against a scripted model that would write `model_best`, one token a step."""
    decode, encode = _tok()
    seq = Sequence(decode, encode, prefix)
    for best in model_best:
        chosen = seq.choose(lambda: iter([best] + [i for i in range(len(VOCAB)) if i != best]))
        seq.push(best if chosen is None else chosen)
    return decode(seq.ids), seq


def test_a_prefix_ending_in_an_expression_is_answered_first():
    text, seq = _decode_with([VOCAB.index(" 365"), VOCAB.index(" apples")], "He has 12 * 3 =")
    assert text == " 36 apples" and (seq.forced, seq.changed) == (1, 1)


def test_an_expression_the_model_writes_is_answered_and_agreement_is_not_a_change():
    # the model writes "12 * 3 =" and then itself " 36 apples"
    script = [VOCAB.index(t) for t in ("12", " *", " 3", " =", " 36", " apples")]
    text, seq = _decode_with(script, "")
    assert text == "12 * 3 = 36 apples" and (seq.forced, seq.changed) == (1, 0)


def test_digits_after_a_forced_result_are_kept_off_and_count_as_a_change():
    # the model writes " 3", "6" (agreeing so far) then "5": "365" would undo the calculator
    script = [VOCAB.index(t) for t in ("12", " *", " 3", " =", " ", "3", "6", "5", ".")]
    decode, encode = _tok()
    seq = Sequence(decode, lambda t: [VOCAB.index(" "), VOCAB.index("3"), VOCAB.index("6")])
    for best in script:
        chosen = seq.choose(lambda: iter([best] + [i for i in range(len(VOCAB)) if i != best]))
        seq.push(best if chosen is None else chosen)
    text = decode(seq.ids)
    assert text.startswith("12 * 3 = 36") and not text.startswith("12 * 3 = 365")
    assert (seq.forced, seq.changed) == (1, 1)


def test_the_same_equals_sign_never_fires_twice():
    script = [VOCAB.index(t) for t in (" =", " ", " apples")]
    text, seq = _decode_with(script, "12 * 3")
    assert text.count("36") == 1 and seq.forced == 1


def _opener(script: list[str]):
    """A fake server: whatever the prompt, the model's pieces are read from `script` (what it would write
    after each prompt, keyed by how much text was generated)."""
    calls = []

    def open_stream(gen, budget, guard):
        calls.append((gen, guard))
        pieces = script[len(calls) - 1]
        def run():
            for p in pieces[:budget]:
                yield p
            yield End(by_model=len(pieces) <= budget)
        return run()
    return open_stream, calls


def test_the_server_loop_keeps_an_agreeing_stream_and_reopens_a_diverging_one():
    opener, calls = _opener([[" 36", " apples", " and", " 2", " *", " 5", " =", " 11", " pears"],
                             [" pears", "."]])
    text, forced, changed = stream_with_calculator(opener, "He has 12 * 3 =", 64)
    assert text == " 36 apples and 2 * 5 = 10 pears."
    assert (forced, changed) == (2, 1)
    assert calls == [("", False), (" 36 apples and 2 * 5 = 10", True)]  # one reopen, guarded, after the forced 10


def test_the_server_loop_rejects_digits_continuing_the_result():
    opener, calls = _opener([[" 3", "6", "5", " apples"], [" apples"]])
    text, forced, changed = stream_with_calculator(opener, "12 * 3 =", 64)
    assert text == " 36 apples" and (forced, changed) == (1, 1)


@pytest.mark.parametrize("model_writes", [(".5",), (".", "5"), (",000",), (",", "5")])
def test_a_forced_result_cannot_be_extended_by_a_decimal_or_thousands_part(model_writes):
    # the model agrees on " 36" and then wants 36.5 (or 36,000): in one token or two
    script = [VOCAB.index(t) for t in ("12", " *", " 3", " =", " 36", *model_writes, " apples", " apples")]
    text, seq = _decode_with(script, "")
    assert text.startswith("12 * 3 = 36") and not re.match(r"[.,]?\d", text[len("12 * 3 = 36"):]), text
    assert (seq.forced, seq.changed) == (1, 1)  # the model's own number was not the result: counted as changed


def test_sentence_punctuation_after_a_forced_result_is_allowed_and_not_a_change():
    script = [VOCAB.index(t) for t in ("12", " *", " 3", " =", " 36", ".", " apples")]
    text, seq = _decode_with(script, "")
    assert text == "12 * 3 = 36. apples" and (seq.forced, seq.changed) == (1, 0)


def test_a_result_cut_by_the_token_limit_is_kept_for_writing_whole():
    decode, encode = _tok()
    seq = Sequence(decode, lambda t: [VOCAB.index(" "), VOCAB.index("3"), VOCAB.index("6")], "12 * 3 =")
    tok = seq.choose(lambda: iter(range(len(VOCAB))))  # the limit allows one token
    seq.push(tok)
    assert decode(seq.ids) + seq.unwritten() == " 36"
    assert Sequence(decode, encode, "no arithmetic").unwritten() == ""


def _forced_token(tok, prefix: str) -> int:
    return tok(result_for(prefix).text, add_special_tokens=False)["input_ids"][0]


def test_torch_calculator_forces_a_token_an_earlier_processor_ruled_out(tiny_model_dir):
    """An earlier processor (a ban list, a grammar) set the forced token to -inf: greedy still takes it and
    sampling sees a finite row, never NaN."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LogitsProcessor, LogitsProcessorList

    from toolkit.eval.calc_decode import TorchCalculator, hf_sequence

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    prefix = "He has 12 * 3 ="
    forced = _forced_token(tok, prefix)

    class Ban(LogitsProcessor):
        def __call__(self, input_ids, scores):
            scores[:, forced] = -torch.inf
            return scores

    ban = Ban()
    scores = ban(None, torch.randn(1, len(tok)))
    out = TorchCalculator([hf_sequence(tok, prefix)], 4)(torch.zeros(1, 4, dtype=torch.long), scores)
    assert int(out[0].argmax()) == forced and torch.isfinite(out[0, forced])
    assert not torch.softmax(out[0], -1).isnan().any()
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    ids = tok("Tom has", return_tensors="pt", add_special_tokens=False)["input_ids"]
    for sample in (False, True):
        procs = LogitsProcessorList([ban, TorchCalculator([hf_sequence(tok, prefix)], ids.shape[1])])
        gen = model.generate(ids, max_new_tokens=4, do_sample=sample, logits_processor=procs,
                             pad_token_id=tok.pad_token_id, temperature=0.7 if sample else None, top_p=None,
                             top_k=None)
        assert tok.decode(gen[0, ids.shape[1]:]).startswith(" 36"), sample


def test_torch_backend_writes_a_result_cut_by_the_token_limit_whole(tiny_model_dir):
    from toolkit.eval.generate import open_generator
    from toolkit.eval.prompts import build_messages

    prompt = build_messages("What is 4817 * 29?") + [{"role": "assistant", "content": "So 4817 * 29 = "}]
    gen = open_generator(str(tiny_model_dir), "torch", batch_size=1, threads=1, calculator=True)
    try:
        out = gen.generate([prompt], max_new_tokens=1)
    finally:
        gen.close()
    assert out == ["139693"] and gen.calc_counts[0][0] == 1  # the limit allowed one of its tokens


@pytest.mark.parametrize("pieces", [[" 36", ".5", " apples"], [" 36", ".", "5", " apples"], [" 36", ",000"]])
def test_the_server_loop_rejects_a_decimal_or_thousands_part_after_the_result(pieces):
    opener, calls = _opener([pieces, [" apples"]])
    text, forced, changed = stream_with_calculator(opener, "12 * 3 =", 64)
    assert text == " 36 apples" and (forced, changed) == (1, 1)
    assert calls[1] == (" 36", True)  # reopened after the result, its first tokens kept from extending it


def test_the_server_loop_keeps_sentence_punctuation_after_the_result():
    for pieces, want in (([" 36", ".", " apples"], " 36. apples"), ([" 36", "."], " 36.")):
        opener, calls = _opener([pieces])
        assert stream_with_calculator(opener, "12 * 3 =", 64) == (want, 1, 0) and len(calls) == 1
