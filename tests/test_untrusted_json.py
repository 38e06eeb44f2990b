"""The untrusted-JSON reader: size, depth and type errors are one UntrustedJSONError naming the source, never a
RecursionError; properties (hypothesis) over generated values and hostile text."""
from __future__ import annotations

import json
import os
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from toolkit.core.errors import ToolkitError
from toolkit.core.jsonio import atomic_write_jsonl, read_jsonl
from toolkit.core.untrusted_json import MAX_DEPTH, UntrustedJSONError, load, load_jsonl, loads, nesting_depth


def reference_depth(text: str) -> int:
    """nesting_depth, character by character: brackets outside strings, a backslash in a string escapes one."""
    depth = deepest = 0
    in_string = escaped = False
    for c in text:
        if in_string:
            if escaped:
                escaped = False
            elif c == "\\":
                escaped = True
            elif c == '"':
                in_string = False
        elif c == '"':
            in_string = True
        elif c in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif c in "]}":
            depth -= 1
    return deepest


def value_depth(value) -> int:
    if isinstance(value, dict):
        return 1 + max(map(value_depth, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(value_depth, value), default=0)
    return 0


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(alphabet=st.sampled_from('ab[]{}"\\:,\n é\u2028')),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=4),
    max_leaves=30)


@pytest.mark.parametrize("text, reason", [
    ("[" * 60000, "nested deeper than 64 levels"),
    ('{"a": ' * 60000 + "1" + "}" * 60000, "nested deeper than 64 levels"),
    ('{"a": 1', "not JSON"),
    ("[1, 2]", "not a JSON object"),
    ('"x"', "not a JSON object"),
    ("true", "not a JSON object"),
])
def test_hostile_text_is_one_error_naming_the_source(text, reason):
    with pytest.raises(UntrustedJSONError) as caught:
        loads(text, "the result pipe of program 3")
    assert str(caught.value).startswith("the result pipe of program 3: ") and reason in str(caught.value)
    assert isinstance(caught.value, ToolkitError) and "\n" not in str(caught.value)  # the CLI prints one line


def test_size_is_checked_before_anything_is_read(tmp_path):
    big = tmp_path / "manifest.json"
    big.write_text("[" + "1," * 1000 + "1]")
    with pytest.raises(UntrustedJSONError, match=f"{big}: larger than 100 bytes"):
        load(big, expect=list, max_bytes=100)
    assert load(big, expect=list) == [1] * 1001
    with pytest.raises(UntrustedJSONError, match="larger than 10 bytes"):
        loads(b"[1, 2, 3, 4, 5]", "x", expect=list, max_bytes=10)
    with pytest.raises(UntrustedJSONError, match=r"not UTF-8 \(byte 1\)"):
        loads(b'"\xff"', "x", expect=str)


@pytest.mark.parametrize("reader", [load, load_jsonl])
def test_a_fifo_or_device_in_place_of_a_file_is_one_error_not_a_hang(tmp_path, reader):
    """A folder from elsewhere may hold a FIFO (whose open waits for a writer, for ever) or a link to /dev/zero
    (endless bytes of size 0) where a JSON file belongs; both are refused at once, even when swapped in after
    the caller's own is_file() check."""
    fifo = tmp_path / "manifest.json"
    os.mkfifo(fifo)
    zero = tmp_path / "state.json"
    zero.symlink_to("/dev/zero")
    start = time.monotonic()
    for hostile in (fifo, zero):
        with pytest.raises(UntrustedJSONError, match=f"{hostile}: not a regular file"):
            reader(hostile)
    assert time.monotonic() - start < 5


def test_jsonl_errors_name_the_line(tmp_path):
    rows = tmp_path / "votes.jsonl"
    rows.write_text('{"id": 1}\n\n[1]\n')
    with pytest.raises(UntrustedJSONError, match=f"{rows} line 3: not a JSON object"):
        load_jsonl(rows)
    rows.write_text('{"id": 1}\n\n{"id": 2}\n')
    assert load_jsonl(rows) == [{"id": 1}, {"id": 2}]


def test_run_rows_are_read_through_the_reader(tmp_path):
    """Rationales, votes and training rows read back on resume (jsonio.read_jsonl): a hostile row is one error
    naming file and line (json.loads raised RecursionError), and a row holding U+2028, which a teacher may write
    and str.splitlines() took for a line break, comes back whole."""
    votes = tmp_path / "votes.jsonl"
    atomic_write_jsonl(votes, [{"id": "q1", "text": "one\u2028two\x1cthree"}, {"id": "q2"}])
    assert read_jsonl(votes) == [{"id": "q1", "text": "one\u2028two\x1cthree"}, {"id": "q2"}]
    votes.write_text('{"id": "q1"}\n' + "[" * 60000 + "\n")
    with pytest.raises(UntrustedJSONError, match=f"{votes} line 2: nested deeper than {MAX_DEPTH} levels"):
        read_jsonl(votes)


def test_the_depth_scan_is_linear_on_hostile_strings():
    """Escaped quotes in a string that never closes: a backtracking scan would be quadratic (minutes here)."""
    for text in ('"\\"' * 30000 + "\\", '"' + "\\" * 60001, '["' * 30000):
        start = time.monotonic()
        nesting_depth(text)
        assert time.monotonic() - start < 1.0
        with pytest.raises(UntrustedJSONError):
            loads(text, "x", expect=(list, str))


@given(JSON_VALUES)
def test_values_within_the_limits_come_back_unchanged(value):
    text = json.dumps(value)
    assert nesting_depth(text) == value_depth(value)
    if value_depth(value) <= MAX_DEPTH:
        assert loads(text, "x", expect=object) == value


@given(st.text(alphabet=st.sampled_from('[]{}"\\ a:,1'), max_size=300))
def test_the_depth_scan_agrees_with_a_character_by_character_scan(text):
    assert nesting_depth(text) == reference_depth(text)


@given(st.one_of(st.text(max_size=200), st.binary(max_size=200),
                 st.builds(lambda n, tail: "[" * n + tail, st.integers(0, 100_000), st.text(max_size=20)),
                 st.builds(lambda n: '{"a":' * n + "1" + "}" * n, st.integers(0, 5000))),
       st.sampled_from([dict, list, (dict, list), str]))
def test_any_input_is_a_value_of_the_expected_type_or_one_error(data, expect):
    try:
        value = loads(data, "source", expect=expect, max_depth=MAX_DEPTH)
    except UntrustedJSONError as exc:
        assert str(exc).startswith("source: ") and "\n" not in str(exc)
    else:
        assert isinstance(value, expect) and value_depth(value) <= MAX_DEPTH
