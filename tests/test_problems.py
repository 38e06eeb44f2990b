"""Tests for toolkit.data.problems: loaders on the real datasets and plain files, errors, splits, JSONL I/O."""
from __future__ import annotations

import json
import logging
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.conftest import DATA, missing
from toolkit.core.errors import DataError
from toolkit.data.problems import (
    Problem,
    load_file,
    load_suite,
    read_jsonl,
    split_problems,
    write_jsonl,
)
from toolkit.data.suites import SUITES

DATA_ROOT = DATA

EXPECTED_COUNTS = {
    "gsm8k": 1319,
    "gsm8k_train": 7473,
    "svamp": 1000,
    "asdiv": 2084,  # numeric single-answer problems out of 2305
    "multiarith": 600,
    "addsub": 395,
    "singleeq": 508,
}

# suite -> (first problem's id, start of its question, gold answer)
FIRST_PROBLEMS = {
    "gsm8k": ("gsm8k-0", "Janet’s ducks lay 16 eggs per day.", "18"),
    "gsm8k_train": ("gsm8k_train-0", "Natalia sold clips to 48 of her friends in April", "72"),
    "svamp": ("svamp-chal-1", "Each pack of dvds costs 76 dollars. If there is a discount of 25 dollars "
              "on each pack How much do you have to pay", "51"),
    "asdiv": ("asdiv-nluds-0001",
              "Seven red apples and two green apples are in the basket. How many apples", "9"),
    "multiarith": ("multiarith-0", "For Halloween Debby and her sister combined the candy", "39"),
    "addsub": ("addsub-1", "Joan found 70 seashells on the beach .", "43"),
    "singleeq": ("singleeq-0", "Joan found 70 seashells on the beach. she gave Sam", "43"),
}


@pytest.fixture(scope="module")
def suites() -> dict[str, list[Problem]]:
    if not DATA_ROOT.is_dir():
        missing(f"real datasets not found at {DATA_ROOT}")
    return {name: load_suite(name, DATA_ROOT) for name in SUITES}


# --- the real datasets ---------------------------------------------------------------------

def test_every_suite_is_tested() -> None:
    assert set(SUITES) == set(EXPECTED_COUNTS) == set(FIRST_PROBLEMS)


@pytest.mark.parametrize("name", sorted(EXPECTED_COUNTS))
def test_suite_counts_ids_and_sources(suites: dict[str, list[Problem]], name: str) -> None:
    problems = suites[name]
    assert len(problems) == EXPECTED_COUNTS[name]
    assert len({p.id for p in problems}) == len(problems)
    assert all(p.id.startswith(f"{name}-") for p in problems)
    assert {p.source for p in problems} == {"gsm8k" if name.startswith("gsm8k") else name}
    assert all(p.origin == "seed" and p.question.strip() == p.question != "" for p in problems)


@pytest.mark.parametrize("name", sorted(FIRST_PROBLEMS))
def test_suite_first_problem(suites: dict[str, list[Problem]], name: str) -> None:
    first = suites[name][0]
    problem_id, question_start, answer = FIRST_PROBLEMS[name]
    assert (first.id, first.answer) == (problem_id, answer)
    assert first.question.startswith(question_start)


def test_gsm8k_rationale_drops_calculator_notes(suites: dict[str, list[Problem]]) -> None:
    assert suites["gsm8k"][0].rationale == (
        "Janet sells 16 - 3 - 4 = 9 duck eggs a day.\n"
        "She makes 9 * 2 = $18 every day at the farmer’s market."
    )
    assert all(p.rationale and "<<" not in p.rationale and "####" not in p.rationale
               for p in suites["gsm8k_train"])
    assert all(p.rationale is None for p in suites["svamp"])


def test_gsm8k_thousands_comma_answer(suites: dict[str, list[Problem]]) -> None:
    # train.jsonl line 346 ends "#### 1,080".
    adam = suites["gsm8k_train"][345]
    assert adam.question.startswith("Adam earns $40 daily in his job.")
    assert adam.answer == "1080"
    raw = (DATA_ROOT / "gsm8k" / "train.jsonl").read_text(encoding="utf-8").split("\n")[345]
    assert json.loads(raw)["answer"].endswith("#### 1,080")


def test_float_golds_normalise(suites: dict[str, list[Problem]]) -> None:
    singleeq = {p.id: p.answer for p in suites["singleeq"]}
    addsub = {p.id: p.answer for p in suites["addsub"]}
    assert singleeq["singleeq-288"] == "0.666667"  # lSolutions [0.6666666666666666]
    assert addsub["addsub-176"] == "0.666667"  # lSolutions ["0.6666666666666666"] (a string)
    assert all("." not in p.answer for p in suites["multiarith"])  # 39.0 -> "39"


def test_asdiv_keeps_single_numbers_and_counts_skipped(caplog: pytest.LogCaptureFixture) -> None:
    if not DATA_ROOT.is_dir():
        missing(f"real datasets not found at {DATA_ROOT}")
    total = sum(1 for _ in ET.parse(DATA_ROOT / "asdiv" / "ASDiv.xml").getroot().iter("Problem"))
    with caplog.at_level(logging.INFO, logger="toolkit.data.problems"):
        kept = load_suite("asdiv", DATA_ROOT)
    assert total == 2305
    assert len(kept) == 2084
    assert "kept 2084 problems, skipped 221" in caplog.text
    answers = {p.id: p.answer for p in kept}
    # "9 (apples)" and "0.46 (dollars)"
    assert (answers["asdiv-nluds-0001"], answers["asdiv-nluds-0176"]) == ("9", "0.46")
    # A time, an ordinal, words, two answers and a fraction are not single numbers.
    for skipped in ("0175", "0189", "1053", "1296", "1312"):
        assert f"asdiv-nluds-{skipped}" not in answers


@pytest.mark.parametrize(("relative", "source", "first_id"), [
    ("gsm8k/test.jsonl", "gsm8k", "gsm8k-0"),
    ("svamp/SVAMP.json", "svamp", "svamp-chal-1"),
    ("asdiv/ASDiv.xml", "asdiv", "asdiv-nluds-0001"),
    ("addsub/AddSub.json", "addsub", "addsub-1"),
    ("singleeq/questions.json", "questions", "questions-0"),
])
def test_load_file_detects_dataset_formats(relative: str, source: str, first_id: str) -> None:
    if not DATA_ROOT.is_dir():
        missing(f"real datasets not found at {DATA_ROOT}")
    problems = load_file(DATA_ROOT / relative)
    assert (problems[0].source, problems[0].id) == (source, first_id)


# --- suite errors --------------------------------------------------------------------------

def test_unknown_suite_lists_known_ones(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"unknown suite 'gsm9k'.*gsm8k, gsm8k_train, svamp, asdiv"):
        load_suite("gsm9k", tmp_path)


def test_missing_suite_names_where_it_looked_and_both_fixes(tmp_path: Path) -> None:
    with pytest.raises(DataError) as excinfo:
        load_suite("svamp", tmp_path)
    message = str(excinfo.value)
    assert f"suite 'svamp' is not under {tmp_path}, " in message and "svamp/SVAMP.json" in message
    assert "toolkit data fetch svamp" in message and "--data-root, data.root or TOOLKIT_DATA" in message
    assert "cannot download http://127.0.0.1:9/" in message and "\n" not in message


# --- plain files ---------------------------------------------------------------------------

def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_load_jsonl_plain(tmp_path: Path) -> None:
    path = write(tmp_path / "mine.jsonl", "\n".join([
        json.dumps({"question": " How many? ", "answer": "1,080"}),
        "",
        json.dumps({"question": "Half?", "answer": "0.50", "id": "q7"}),
        json.dumps({"question": "Three?", "answer": 3.0}),
    ]) + "\n")
    problems = load_file(path)
    assert [(p.id, p.question, p.answer, p.source) for p in problems] == [
        ("mine-0", "How many?", "1080", "mine"),
        ("mine-q7", "Half?", "0.5", "mine"),
        ("mine-2", "Three?", "3", "mine"),
    ]


def test_load_jsonl_with_gsm8k_answers_is_detected(tmp_path: Path) -> None:
    record = {"question": "Q?", "answer": "2*3=<<2*3=6>>6\n#### 6"}
    [problem] = load_file(write(tmp_path / "extra.jsonl", json.dumps(record) + "\n"))
    assert (problem.id, problem.source, problem.answer) == ("gsm8k-0", "gsm8k", "6")
    assert problem.rationale == "2*3=6"


def test_load_csv_with_custom_fields(tmp_path: Path) -> None:
    path = write(tmp_path / "sheet.csv", 'id,q,a\n1,"Apples, then pears?",$12\n2,How far?,2.5 miles\n')
    problems = load_file(path, question_field="q", answer_field="a")
    assert [(p.id, p.question, p.answer) for p in problems] == [
        ("sheet-1", "Apples, then pears?", "12"),
        ("sheet-2", "How far?", "2.5"),
    ]


def test_load_json_list(tmp_path: Path) -> None:
    items = [{"question": "A?", "answer": 1}, {"question": "B?", "answer": "-4"}]
    path = write(tmp_path / "list.json", json.dumps(items))
    assert [(p.id, p.answer) for p in load_file(path)] == [("list-0", "1"), ("list-1", "-4")]


def test_large_float_answer_is_spelled_out(tmp_path: Path) -> None:
    # str(1e16) is "1e+16"; reading that text would give the gold answer 1.
    path = write(tmp_path / "big.json", json.dumps([{"question": "Big?", "answer": 1e16}]))
    assert load_file(path)[0].answer == "10000000000000000"


def test_malformed_json_line_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path / "bad.jsonl", '{"question": "A?", "answer": "1"}\n{"question": "B?", "answer": \n')
    with pytest.raises(DataError, match=r"bad\.jsonl:2: invalid JSON"):
        load_file(path)


def test_missing_field_names_file_line_and_field(tmp_path: Path) -> None:
    path = write(tmp_path / "gap.jsonl", '{"question": "A?", "answer": "1"}\n\n{"question": "C?"}\n')
    with pytest.raises(DataError, match=r"gap\.jsonl:3: missing or empty field 'answer'"):
        load_file(path)


def test_answer_without_number_names_line(tmp_path: Path) -> None:
    path = write(tmp_path / "words.csv", "question,answer\nA?,1\nB?,seven\n")
    with pytest.raises(DataError, match=r"words\.csv:3: answer 'seven' has no number"):
        load_file(path)


def test_csv_missing_column(tmp_path: Path) -> None:
    path = write(tmp_path / "cols.csv", "question,solution\nA?,1\n")
    with pytest.raises(DataError, match=r"cols\.csv:1: no column 'answer'"):
        load_file(path)


@pytest.mark.parametrize("suffix", ["jsonl", "csv", "json", "xml"])
def test_empty_file_is_an_error(tmp_path: Path, suffix: str) -> None:
    path = write(tmp_path / f"blank.{suffix}", "\n")
    with pytest.raises(DataError, match=rf"blank\.{suffix}: file is empty"):
        load_file(path)


def test_malformed_xml_names_line(tmp_path: Path) -> None:
    path = write(tmp_path / "broken.xml", '<?xml version="1.0"?>\n<ProblemSet>\n<Problem></ProblemSet>\n')
    with pytest.raises(DataError, match=r"broken\.xml:3: invalid XML"):
        load_file(path)


def test_empty_list_has_no_problems(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"none\.json: no problems found"):
        load_file(write(tmp_path / "none.json", "[]"))


def test_duplicate_ids_rejected(tmp_path: Path) -> None:
    path = write(tmp_path / "dup.csv", "id,question,answer\n1,A?,1\n1,B?,2\n")
    with pytest.raises(DataError, match=r"duplicate problem id 'dup-1'"):
        load_file(path)


def test_unknown_format_and_extension(tmp_path: Path) -> None:
    path = write(tmp_path / "data.txt", "A? 1\n")
    with pytest.raises(DataError, match=r"cannot tell the format"):
        load_file(path)
    with pytest.raises(DataError, match=r"unknown format 'yaml'"):
        load_file(path, fmt="yaml")
    with pytest.raises(DataError, match=r"no such file"):
        load_file(tmp_path / "absent.jsonl")


# --- splits and dedupe ---------------------------------------------------------------------

def make_problems(n: int) -> list[Problem]:
    return [Problem(id=f"p-{i:03d}", question=f"What is {i} + 1?", answer=str(i + 1), source="t")
            for i in range(n)]


def test_split_is_deterministic_disjoint_and_order_independent() -> None:
    problems = make_problems(100)
    sizes = {"train": 40, "heldout": 30}
    first = split_problems(problems, sizes, seed=7)
    again = split_problems(list(reversed(problems)), sizes, seed=7)
    assert first == again
    assert list(first) == ["train", "heldout"]
    assert [len(first["train"]), len(first["heldout"])] == [40, 30]
    assert not {p.id for p in first["train"]} & {p.id for p in first["heldout"]}
    assert [p.id for p in first["train"]] != [p.id for p in problems[:40]]  # shuffled
    other = split_problems(problems, sizes, seed=8)
    assert [p.id for p in other["train"]] != [p.id for p in first["train"]]


def test_split_asking_too_many_names_counts() -> None:
    with pytest.raises(DataError, match=r"cannot split 10 problems into train=8, heldout=5 \(needs 13\)"):
        split_problems(make_problems(10), {"train": 8, "heldout": 5}, seed=0)


def test_exact_duplicates_keep_the_first() -> None:
    from toolkit.data.hygiene import dedupe

    a = Problem(id="a", question="What is 2 + 2?", answer="4", source="t")
    b = Problem(id="b", question="  what IS 2 +\n2?  ", answer="4", source="t")
    c = Problem(id="c", question="What is 2 + 3?", answer="5", source="t")
    assert dedupe([a, b, c])[0] == [a, c]


# --- records and JSONL ---------------------------------------------------------------------

def test_to_dict_from_dict_round_trip() -> None:
    problem = Problem(id="x-1", question="Q?", answer="2", source="gsm8k",
                      origin="harder-of:gsm8k-3@round-1", rationale="1+1=2")
    data = problem.to_dict()
    assert data == {"id": "x-1", "question": "Q?", "answer": "2", "source": "gsm8k",
                    "origin": "harder-of:gsm8k-3@round-1", "rationale": "1+1=2"}
    assert Problem.from_dict({**data, "unknown": 1}) == problem
    assert Problem.from_dict({"id": "y", "question": "Q", "answer": "1", "source": "s"}).origin == "seed"
    with pytest.raises(ValueError, match="answer"):
        Problem.from_dict({"id": "y", "question": "Q", "source": "s"})


def test_write_read_jsonl_round_trip(tmp_path: Path) -> None:
    unicode = Problem(id="u", question="Café – “quoted”?\u2028", answer="1", source="t", rationale="r")
    problems = make_problems(3) + [unicode]
    path = tmp_path / "round-1" / "problems.jsonl"
    write_jsonl(path, problems)
    assert read_jsonl(path) == problems
    write_jsonl(path, problems[:1])  # replaces, never appends
    assert read_jsonl(path) == problems[:1]
    assert [p.name for p in path.parent.iterdir()] == ["problems.jsonl"]  # no temp file left
    write_jsonl(path, [])
    assert read_jsonl(path) == []


def test_read_jsonl_bad_line_names_line(tmp_path: Path) -> None:
    path = write(tmp_path / "p.jsonl", json.dumps(make_problems(1)[0].to_dict()) + '\n{"id": "z"}\n')
    missing = r"p\.jsonl:2: not a problem record \(missing field\(s\): question, answer, source\)"
    with pytest.raises(DataError, match=missing):
        read_jsonl(path)
