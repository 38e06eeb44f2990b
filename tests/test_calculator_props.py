"""Property tests (hypothesis) of the calculator: its arithmetic is Python's `fractions`, its trigger reads the
expression back from any sentence, and no forced result is ever changed or extended by the model."""
from __future__ import annotations

import ast
from fractions import Fraction

from hypothesis import given, settings
from hypothesis import strategies as st

from toolkit.data.calculator import (CONTINUES, MAX_MAGNITUDE, CalcError, Sequence, evaluate, format_number,
                                    result_for)

# A fixed budget of examples per property, the same in every run (derandomized: CI sees no flaky seeds).
BUDGET = settings(max_examples=300, deadline=None, derandomize=True)


@st.composite
def numbers(draw) -> tuple[str, str]:
    """(as written, as Python source): `12`, `1,234`, `3.25`, `.5`."""
    whole = draw(st.integers(0, 99_999))
    form = draw(st.sampled_from(["int", "commas", "decimal", "point"]))
    if form == "commas" and whole >= 1000:
        return f"{whole:,}", f"Fraction('{whole}')"
    if form == "decimal":
        text = f"{whole}.{draw(st.integers(0, 999))}"
        return text, f"Fraction('{text}')"
    if form == "point":
        text = f".{draw(st.integers(0, 99))}"
        return text, f"Fraction('{text}')"
    return str(whole), f"Fraction('{whole}')"


_TIMES, _DIVIDE, _MINUS = ["*", "x", "×"], ["/", "÷"], ["-", "−"]


def _expressions(leaves):
    """(written, Python, has a binary operator) for arithmetic trees: binary operators in their aliases, unary
    minus, parentheses, spaces or none. Python parses the same flat string with the same precedence."""
    def extend(kids):
        def binary(draw):
            (a, pa, _), (b, pb, _) = draw(kids), draw(kids)
            op = draw(st.sampled_from(["+", "-", "*", "/"]))
            written = draw(st.sampled_from({"+": ["+"], "-": _MINUS, "*": _TIMES, "/": _DIVIDE}[op]))
            pad = draw(st.sampled_from(["", " "]))
            return f"{a}{pad}{written}{pad}{b}", f"{pa} {op} {pb}", True

        def paren(draw):
            a, pa, bin_ = draw(kids)
            return f"({a})", f"({pa})", bin_

        def negate(draw):
            a, pa, bin_ = draw(kids)
            return f"-{a}", f"-{pa}", bin_

        return st.one_of(st.composite(binary)(), st.composite(paren)(), st.composite(negate)())
    return st.recursive(leaves.map(lambda n: (*n, False)), extend, max_leaves=6)


EXPRESSIONS = _expressions(numbers())


def _eval(node: ast.AST, steps: list[Fraction]) -> Fraction:
    if isinstance(node, ast.BinOp):
        a, b = _eval(node.left, steps), _eval(node.right, steps)
        ops = {ast.Add: a.__add__, ast.Sub: a.__sub__, ast.Mult: a.__mul__, ast.Div: a.__truediv__}
        steps.append(ops[type(node.op)](b))
        return steps[-1]
    if isinstance(node, ast.UnaryOp):
        return -_eval(node.operand, steps)
    assert isinstance(node, ast.Call)
    return Fraction(node.args[0].value)


def _reference(written: str, python: str) -> tuple[Fraction | None, bool]:
    """(Python's Fraction value, or None for a division by zero; whether `written` is within the calculator's
    limits: every step within 1e15, at most 8 nested parentheses, 200 characters)."""
    steps: list[Fraction] = []
    try:
        value = _eval(ast.parse(python, mode="eval").body, steps)
    except ZeroDivisionError:
        value = None
    depth = deepest = 0
    for c in written:
        depth += (c == "(") - (c == ")")
        deepest = max(deepest, depth)
    return value, all(abs(v) <= MAX_MAGNITUDE for v in steps) and deepest <= 8 and len(written) <= 200


@BUDGET
@given(EXPRESSIONS)
def test_the_parser_agrees_with_fractions(expr):
    """Whatever the parser accepts evaluates as Python's Fraction arithmetic (same precedence, same value); within
    its limits it accepts everything but a division by zero."""
    written, python, _ = expr
    want, within = _reference(written, python)
    try:
        got = evaluate(written)
    except CalcError:
        assert want is None or not within, (written, want)
        return
    assert got == want, (written, python)


CONTEXTS = ["", "He has ", "So, ", "He has 3 bags. ", "5 - 2 = 3. ", "(so ", "It costs 1,200. ", "Step 2: "]


@BUDGET
@given(EXPRESSIONS, st.sampled_from(CONTEXTS), st.booleans())
def test_the_trigger_fires_on_every_computable_expression_in_any_sentence(expr, context, space):
    """`<context><expression> =` forces the expression's own value (as format_number prints it) whenever it holds
    a binary operator and is within the limits, whatever sentence comes before it; it never forces another value."""
    written, python, has_binary = expr
    want, within = _reference(written, python)
    found = result_for(f"{context}{written} =" + (" " if space else ""))
    try:
        shown = None if want is None else format_number(want)
    except CalcError:  # a nonzero value too small to write
        shown = None
    if shown is None or not has_binary or not within:
        assert found is None or found.value == want, (context, written)
        return
    assert found is not None and found.value == want, (context, written)
    assert found.text == ("" if space else " ") + shown


# A vocabulary where results can be written several ways and extended in every way the guard must stop:
# single digits, multi-digit pieces, `.5`, `,000`, `5.`, a lone `.` or `,`, and an empty-text (end-like) token.
VOCAB = [" ", "=", " =", "= ", "+", " *", "*", "-", ".", ",", ".5", ",000", "5.", "36", " 36", " 1", "12", " apples",
         "", *"0123456789"]


def _encode(text: str) -> list[int]:
    ids, rest = [], text
    while rest:  # greedy longest match; every character a result can hold is in VOCAB
        i = max((k for k, v in enumerate(VOCAB) if v and rest.startswith(v)), key=lambda k: len(VOCAB[k]))
        ids.append(i)
        rest = rest[len(VOCAB[i]):]
    return ids


def _decode(ids: list[int]) -> str:
    return "".join(VOCAB[i] for i in ids)


@BUDGET
@given(prefix=st.sampled_from(["", "He has 12 * 3 =", "So 7 / 2 = ", "It is 4817 * 29 =", "Then 1 - 3 ="]),
       best=st.lists(st.integers(0, len(VOCAB) - 1), min_size=1, max_size=40),
       order=st.permutations(range(len(VOCAB))))
def test_no_forced_result_is_ever_changed_or_extended(prefix, best, order):
    """A scripted model whose best token each step is drawn at random (the rest ranked in a random order):
    every result the calculator forces is in the text whole (or kept for writing whole when the steps ran
    out), the text after it never extends its number, and `changed` is 0 exactly when the model's best token
    was taken at every step."""
    seq = Sequence(_decode, _encode, prefix)
    forced = [(0, result_for(prefix).text)] if result_for(prefix) else []
    overridden = False
    for b in best:
        chosen = seq.choose(lambda b=b: iter([b] + [i for i in order if i != b]))
        took = b if chosen is None else chosen
        overridden |= took != b
        before = seq.forced
        seq.push(took)
        if seq.forced > before:  # the model wrote `expression =` itself: record what must follow
            text = _decode(seq.ids)
            forced.append((len(text), result_for(prefix + text).text))
    full = _decode(seq.ids) + seq.unwritten()
    for at, result in forced:
        assert full[at:].startswith(result), (prefix, full, result)
        assert not CONTINUES.match(full[at + len(result):]), (prefix, full, result)
    assert (seq.changed > 0) == overridden, (prefix, full)

