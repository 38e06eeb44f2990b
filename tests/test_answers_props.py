"""Property tests (hypothesis) of answer extraction: how a number is written never changes the value read back,
strict extraction agrees with flexible on a plain answer line, and normalisation is idempotent."""
from __future__ import annotations

from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from toolkit.data.answers import answers_match, extract_flexible, extract_strict, normalize_number

# A fixed budget of examples per property, the same in every run.
BUDGET = settings(max_examples=300, deadline=None, derandomize=True)


@st.composite
def written_numbers(draw) -> tuple[str, str]:
    """(a number as a model or a dataset writes it, its canonical form): commas, `$`, a trailing `.0`/`.00`, `%`,
    a sign; the value is an integer or has at most 2 decimals (money)."""
    cents = draw(st.integers(-10**9, 10**9))
    value = Decimal(cents) / 100 if draw(st.booleans()) else Decimal(cents)
    canonical = format(value.normalize(), "f") if value != value.to_integral() else str(int(value))
    magnitude = abs(value)
    body = f"{magnitude:,}" if draw(st.booleans()) else f"{magnitude}"
    if value == value.to_integral() and draw(st.booleans()):
        body = f"{int(magnitude):,}" + draw(st.sampled_from([".0", ".00", ""]))
    money = draw(st.booleans())
    text = ("-" if value < 0 else "") + ("$" if money else "") + body
    if not money and draw(st.booleans()):
        text += draw(st.sampled_from(["%", " %"]))
    return text, canonical


@BUDGET
@given(written_numbers())
def test_formatting_a_number_never_changes_its_value(number):
    text, canonical = number
    assert normalize_number(text) == canonical, text


@BUDGET
@given(written_numbers(), st.sampled_from(["The answer is {}.", "The final answer is {}", "#### {}", "Answer: {}",
                                           "so the answer is {} dollars.", "\\boxed{{{}}}"]),
       st.sampled_from(["", "Tom has 3 apples and 12.5 pears. 3 + 4 = 7.\n", "It costs $1,234.50 in 2024. "]))
def test_strict_and_flexible_read_the_stated_answer(number, line, before):
    """A reply that ends in an answer line: strict reads that number whatever came before (other numbers,
    other formats), and flexible (the last number) reads the same."""
    text, canonical = number
    reply = before + line.format(text)
    assert extract_strict(reply) == canonical, reply
    assert extract_flexible(reply) == canonical, reply


@BUDGET
@given(st.text(max_size=40))
def test_normalisation_is_idempotent_and_matches_itself(text):
    value = normalize_number(text)
    if value is None:
        return
    assert normalize_number(value) == value, (text, value)
    assert answers_match(value, value)


@BUDGET
@given(st.text(alphabet=st.characters(blacklist_categories=("Nd",)), max_size=60))
def test_text_without_digits_has_no_answer(text):
    assert extract_strict(text) is None and extract_flexible(text) is None
