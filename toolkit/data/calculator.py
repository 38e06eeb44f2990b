"""A safe arithmetic calculator for decoding: when the text ends in `<expression> =`, the result to force.

Standard library only (`steer` imports numpy, which both device runtimes bring): edge bundles ship
this file beside their run.py (export/bundle.py), so it must run where only llama-cpp-python or
onnxruntime-genai is installed.

What it accepts (anything else is refused, and the model writes on unaided):
- numbers: `12`, `3.5`, `.5`, `1,234` (a comma only as a thousands separator: groups of exactly 3 digits);
- `+ - * / ( )`, `x` and `×` for times, `÷` for divided by, `−` for minus, unary minus;
- a percent sign right after a number that is multiplied or divided (`50 * 20%` is 10, `30% * 40`
  is 12); beside `+` or `-` it is ambiguous (`50 + 10%`: 50.1 or 55?) and refused, as is `20% of 50`.
No `**`, names, calls or exponents; at most 200 characters, 64 tokens, 8 nested parentheses, 15 digits
per number and 1e15 in magnitude at every step. Arithmetic is exact (fractions), so `0.1 + 0.2` is 0.3.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction
from typing import Callable, Iterable

MAX_CHARS = 200
MAX_TOKENS = 64
MAX_DEPTH = 8
MAX_DIGITS = 15
MAX_MAGNITUDE = Fraction(10) ** 15
DECIMALS = 4  # a result that does not terminate within EXACT_DECIMALS is rounded to this many places
EXACT_DECIMALS = 10

_TOKEN = re.compile(r"\s*(?:(?P<num>\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)|(?P<op>[-+*/()%x×÷−]))")
_OPS = {"x": "*", "×": "*", "÷": "/", "−": "-"}
# Characters an expression may span when it is read back from the end of a text.
_RUN_CHARS = set("0123456789.,+-*/()%x×÷− ")
# Text after a forced result that would extend its number: `36` + `5`, `.5` or `,000` (36.5, 36,000).
CONTINUES = re.compile(r"[.,]?\d")
# Text after a forced result that the next token could still turn into an extension (`36.` + `5`; an
# empty-text token such as an end token changes nothing).
MAY_CONTINUE = frozenset({"", ".", ","})


class CalcError(ValueError):
    """Input the calculator refuses: not arithmetic, ambiguous, or beyond its limits."""


def _tokens(expr: str) -> list[tuple[str, str]]:
    if len(expr) > MAX_CHARS:
        raise CalcError(f"longer than {MAX_CHARS} characters")
    out, pos, end = [], 0, len(expr.rstrip())
    while pos < end:
        m = _TOKEN.match(expr, pos)
        if not m:
            raise CalcError(f"not arithmetic at {expr[pos:pos + 10]!r}")
        pos = m.end()
        if m.group("num"):
            digits = m.group("num").replace(",", "").replace(".", "")
            if len(digits) > MAX_DIGITS:
                raise CalcError(f"a number with more than {MAX_DIGITS} digits")
            out.append(("num", m.group("num").replace(",", "")))
        else:
            out.append(("op", _OPS.get(m.group("op"), m.group("op"))))
        if len(out) > MAX_TOKENS:
            raise CalcError(f"more than {MAX_TOKENS} tokens")
    return out


def _checked(v: Fraction) -> Fraction:
    if abs(v) > MAX_MAGNITUDE:
        raise CalcError("a result beyond 1e15")
    return v


class _Parser:
    """Recursive descent: expr := term (('+'|'-') term)*; term := factor (('*'|'/') factor)*;
    factor := '-' factor | NUMBER '%'? | '(' expr ')'. A factor's flag says it is a bare percentage."""

    def __init__(self, tokens: list[tuple[str, str]]):
        self.toks, self.i, self.depth, self.binary_ops = tokens, 0, 0, 0

    def peek(self) -> str | None:
        return self.toks[self.i][1] if self.i < len(self.toks) and self.toks[self.i][0] == "op" else None

    def expr(self) -> tuple[Fraction, bool]:
        value, pct = self.term()
        while self.peek() in ("+", "-"):
            op = self.toks[self.i][1]
            self.i += 1
            rhs, rpct = self.term()
            if pct or rpct:
                raise CalcError("a percentage beside + or - is ambiguous")
            value = _checked(value + rhs if op == "+" else value - rhs)
            self.binary_ops += 1
        return value, pct

    def term(self) -> tuple[Fraction, bool]:
        value, pct = self.factor()
        while self.peek() in ("*", "/"):
            op = self.toks[self.i][1]
            self.i += 1
            rhs, _ = self.factor()
            if op == "/" and rhs == 0:
                raise CalcError("division by zero")
            value, pct = _checked(value * rhs if op == "*" else value / rhs), False
            self.binary_ops += 1
        return value, pct

    def factor(self) -> tuple[Fraction, bool]:
        if self.i >= len(self.toks):
            raise CalcError("incomplete expression")
        kind, text = self.toks[self.i]
        self.i += 1
        if kind == "num":
            if self.peek() == "%":
                self.i += 1
                return Fraction(text) / 100, True
            return Fraction(text), False
        if text == "-":
            value, pct = self.factor()
            return -value, pct
        if text == "(":
            self.depth += 1
            if self.depth > MAX_DEPTH:
                raise CalcError(f"more than {MAX_DEPTH} nested parentheses")
            value, pct = self.expr()
            if self.peek() != ")":
                raise CalcError("unbalanced parentheses")
            self.i += 1
            self.depth -= 1
            return value, pct
        raise CalcError(f"unexpected {text!r}")


def evaluate(expr: str) -> Fraction:
    """The exact value of an arithmetic expression; CalcError for anything the module docstring excludes."""
    value, _ = _evaluate(expr)
    return value


def _evaluate(expr: str) -> tuple[Fraction, int]:
    p = _Parser(_tokens(expr))
    value, pct = p.expr()
    if p.i != len(p.toks):
        raise CalcError(f"unexpected {p.toks[p.i][1]!r}")
    if pct:
        raise CalcError("a bare percentage")
    return value, p.binary_ops


def format_number(v: Fraction) -> str:
    """Integers as integers; a fraction that terminates within 10 decimals exactly; others rounded to
    4 decimals with trailing zeros stripped (a nonzero value that rounds to 0 is refused)."""
    if v.denominator == 1:
        return str(v.numerator)
    d = v.denominator
    for p in (2, 5):
        while d % p == 0:
            d //= p
    places = EXACT_DECIMALS if d == 1 else DECIMALS
    scaled = round(abs(v) * 10 ** places)
    if scaled == 0:
        raise CalcError("a result too small to write")
    whole, frac = divmod(scaled, 10 ** places)
    text = f"{whole}.{frac:0{places}d}".rstrip("0").rstrip(".")
    return ("-" if v < 0 else "") + text


@dataclass(frozen=True)
class Forced:
    """What the calculator writes after `expression =`: `text` (with its leading space when the `=`
    had none) and the exact `value`; `start` is where the expression begins in the text it was read from."""

    expression: str
    value: Fraction
    text: str
    start: int


def _run_start(text: str, end: int) -> int:
    """Where the run of arithmetic characters that ends at `end` begins. An `x` glued to a letter is a
    word's last letter (`box`, `six`), not a times sign."""
    i = end
    while i > 0 and text[i - 1] in _RUN_CHARS:
        if text[i - 1] == "x" and i > 1 and text[i - 2].isalpha():
            break
        i -= 1
    return i


def result_for(text: str) -> Forced | None:
    """The result to force when `text` ends in `<arithmetic> =` (one optional space after the `=`), or None.

    The expression must hold at least one binary operator, so `x = 5`, `answer = a * b` and `= 7` never
    fire. It is the longest run of arithmetic characters before the `=` that parses, read from the
    run's start, from just after one of its opening parentheses (`(so 3 * 4 =` reads `3 * 4`), or from
    just after sentence punctuation: a `.` or `,` followed by a space (`bags. 3 * 4 =`, `So, 3 * 4 =`).
    """
    body = text[:-1] if text.endswith("= ") else text
    if not body.endswith("="):
        return None
    end = len(body) - 1
    start = _run_start(body, end)
    if end - start > MAX_CHARS:  # only the tail can matter; the parser refuses anything longer
        start = end - MAX_CHARS
    run = body[start:end]
    starts = [0] + [k + 1 for k, c in enumerate(run)
                    if c == "(" or (c in ".," and run[k + 1:k + 2].isspace())]
    for k in starts:
        expr = run[k:]
        try:
            value, ops = _evaluate(expr)
            result = format_number(value)
        except CalcError:
            continue
        if ops == 0:
            return None
        lead = len(expr) - len(expr.lstrip())
        space = "" if text.endswith(" ") else " "
        return Forced(expr.strip(), value, space + result, start + k + lead)
    return None


class Sequence:
    """One sequence's calculator during token-by-token decoding, for any runtime that lets the caller
    pick each next token (a logits processor, or a loop that appends tokens).

    `decode(ids)` and `encode(text)` are the model's tokenizer without special tokens; `prefix` is any
    assistant text already in the prompt (it may itself end in `12 * 3 =`). Each step the runtime calls
    `choose(ranked)`, where `ranked()` yields the model's candidate tokens best first: it returns the
    token the step must take, or None when the model is free; then `push(token)` with what was taken.
    After a forced result each next token is the model's best that does not extend the calculator's
    number: no digit (`36` + `5`), no `.` or `,` with a digit after it (`.5`, `,000`), and after a lone
    `.` or `,` the step after that is guarded too (`36.` + `5`), so the number written stays the result.

    `forced` counts results forced; `changed` those where the model's own best tokens would have
    differed (another number, or the same number continued). `unwritten()` is what a token limit cut off.
    """

    WINDOW = 96  # tokens decoded from the end to read an expression back (more when the expression is longer)

    def __init__(self, decode: Callable[[list[int]], str], encode: Callable[[str], list[int]], prefix: str = ""):
        self.decode, self.encode, self.prefix = decode, encode, prefix
        self.ids: list[int] = []
        self.queue: list[int] = []
        self.guard: str | None = None  # text since a forced result while the next token could extend it
        self.agree = True
        self.forced = self.changed = 0
        self.ended = False  # for the runtime: the row has ended (its later tokens are padding)
        self._texts: dict[int, str] = {}
        self._fire(prefix)

    def _text(self, tok: int) -> str:
        if tok not in self._texts:
            self._texts[tok] = self.decode([tok])
        return self._texts[tok]

    def _fire(self, text: str) -> bool:
        found = result_for(text)
        if found is None:
            return False
        self.queue = list(self.encode(found.text))
        self.forced += 1
        self.agree = True
        return True

    def _tail(self) -> str:
        if len(self.ids) <= self.WINDOW:
            return self.prefix + self.decode(self.ids)
        tail = self.decode(self.ids[-self.WINDOW:])
        found = result_for(tail)
        # An expression that reaches the window's start may be cut: read the whole text instead.
        return self.prefix + self.decode(self.ids) if found and found.start == 0 else tail

    @property
    def pending(self) -> bool:
        """Whether the next step is the calculator's (a result token, or the guard after one)."""
        return bool(self.queue) or self.guard is not None

    def unwritten(self) -> str:
        """The text of a forced result's tokens that were not generated (the token limit came first), else ''."""
        return self.decode(self.queue) if self.queue else ""

    def push(self, tok: int) -> None:
        self.ids.append(tok)
        if self.queue or self.guard is not None:
            return
        last = self._text(tok)
        near_eq = "=" in last or (last.isspace() and len(self.ids) > 1 and "=" in self._text(self.ids[-2]))
        if near_eq:
            self._fire(self._tail())

    def choose(self, ranked: Callable[[], Iterable[int]]) -> int | None:
        if self.queue:
            tok = self.queue.pop(0)
            if self.agree and next(iter(ranked())) != tok:
                self._disagree()
            self.guard = None if self.queue else ""
            return tok
        if self.guard is None:
            return None
        after, self.guard = self.guard, None
        best = chosen = None
        for cand in ranked():
            best = cand if best is None else best
            if not CONTINUES.match(after + self._text(cand)):
                chosen = cand
                break
        if chosen is not None and after + self._text(chosen) in MAY_CONTINUE:
            self.guard = after + self._text(chosen)  # `36.` may still become 36.5: the next step is guarded too
        if self.agree and best != chosen:
            self._disagree()
        return chosen

    def _disagree(self) -> None:
        self.agree = False
        self.changed += 1


RANKED = 64  # candidates offered at a guarded step; one that extends no number is always among them in practice


def steer(seq: Sequence, scores):
    """One decoding step on a 1-D numpy logits row (llama-cpp-python, onnxruntime-genai): the row itself
    when the model is free, else a row that lets only the calculator's chosen token through."""
    import numpy as np  # not at the top: the rest of this module, copied into edge bundles, is standard library only

    tok = seq.choose(lambda: iter(np.argsort(-scores, kind="stable")[:RANKED].tolist()))
    if tok is None:
        return scores
    out = np.full_like(scores, -np.inf)
    out[tok] = 0.0
    return out
