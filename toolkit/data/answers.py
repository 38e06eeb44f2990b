"""Numeric answers: extraction from model output (strict and flexible), normalisation and comparison."""
from __future__ import annotations

import math
import re
from fractions import Fraction

# The marker every prompt asks for ("The answer is 42."), plus the GSM8K gold marker "#### 42".
# Strict extraction reads the number right after the last marker, as lm-evaluation-harness's
# strict-match does; flexible extraction takes the last number anywhere in the text.
_MARKERS = re.compile(
    r"(?:the\s+(?:final\s+)?answer\s+is|final\s+answer\s*[:=]|answer\s*[:=]|####)",
    re.IGNORECASE,
)
# A number as models write it: optional sign and currency, thousands commas, decimals,
# a fraction "3/4" or a mixed number "1 1/2", optional percent sign.
_NUMBER = re.compile(
    r"(?<![\w.])-?\$?"
    r"(?:\d+\s+\d+/\d+|\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?(?:/\d+)?|\.\d+)"
    r"\s?%?"
)
_BOXED = re.compile(r"\\boxed\{([^{}]*)\}")


def normalize_number(text: str) -> str | None:
    """Canonical string for one written number: '$1,080.00' -> '1080', '3/4' -> '0.75', '50%' -> '50'.

    Percent signs are dropped rather than divided (the datasets write "50%" for the answer 50).
    Returns None when `text` holds no number.
    """
    match = _NUMBER.search(text.strip())
    if match is None:
        return None
    raw = match.group(0)
    negative = raw.lstrip().startswith("-")
    raw = raw.replace("$", "").replace("%", "").replace(",", "").replace("-", "").strip()
    try:
        if " " in raw:  # mixed number "1 1/2"
            whole, frac = raw.split()
            value = Fraction(int(whole)) + Fraction(frac)
        elif "/" in raw:
            num, den = raw.split("/")
            if int(den) == 0:
                return None
            value = Fraction(int(num), int(den))
        else:
            value = Fraction(raw)
    except (ValueError, ZeroDivisionError):
        return None
    if negative:
        value = -value
    return _format(value)


def _format(value: Fraction) -> str:
    if value.denominator == 1:
        return str(value.numerator)
    # Six significant decimals are enough for every answer in the suites and drop float noise.
    text = f"{float(value):.6f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def extract_strict(output: str) -> str | None:
    """The number right after the last answer marker (or inside \\boxed{}), else None."""
    boxed = _BOXED.findall(output)
    if boxed:
        return normalize_number(boxed[-1])
    markers = list(_MARKERS.finditer(output))
    if not markers:
        return None
    tail = output[markers[-1].end():]
    # Only the rest of that line counts: "The answer is below.\n 5 apples" is not strict.
    line = tail.strip().splitlines()[0] if tail.strip() else ""
    # "The answer is $5.46 + $4.01 = $9.47." states its result after the last "=" (real teacher replies).
    return normalize_number(line.rsplit("=", 1)[-1])


def extract_flexible(output: str) -> str | None:
    """The last number anywhere in the output, else None."""
    matches = list(_NUMBER.finditer(output))
    for match in reversed(matches):
        value = normalize_number(match.group(0))
        if value is not None:
            return value
    return None


def answers_match(predicted: str | None, gold: str | None, rel_tol: float = 1e-4) -> bool:
    """Tolerant equality of two normalised answers (absolute 1e-6 or relative `rel_tol`)."""
    if predicted is None or gold is None:
        return False
    if predicted == gold:
        return True
    try:
        a, b = float(predicted), float(gold)
    except ValueError:
        return False
    return math.isclose(a, b, rel_tol=rel_tol, abs_tol=1e-6)
