"""Dedup and eval-leakage checks: normalisation, near duplicates, and 13-gram overlap on the real suites."""
from __future__ import annotations

import json
import shutil
import time

import pytest

from toolkit.core.errors import DataError
from toolkit.data.fetch import data_roots
from toolkit.data.hygiene import LeakageIndex, NearDuplicateIndex, dedupe, ngrams, normalize_text
from toolkit.data.problems import Problem, load_suite

# 31 words: changing one number touches 3 of its 29 word 3-grams (Jaccard 26/32 = 0.81).
BAKERY = ("A bakery sells 24 loaves of bread every morning and 18 loaves every afternoon. Each loaf costs "
          "3 dollars. How much money does the bakery make from bread in 5 days?")
BAKERY_ONE_NUMBER = BAKERY.replace("18 loaves", "20 loaves")
GARDEN = ("Maria plants 6 rows of tomatoes with 9 plants in each row. A storm destroys 11 plants. "
          "How many tomato plants does Maria have left?")
INVENTED = ("Quentin arranges 14 chess clubs into tournaments of 7 players each and then adds 3 referees "
            "per tournament. How many referees are needed?")


def p(pid: str, question: str, source: str = "generated") -> Problem:
    return Problem(pid, question, "", source)


@pytest.mark.parametrize("text, expected", [
    ("Janet’s ducks lay 16 eggs!", "janets ducks lay 16 eggs"),
    ("  HOW   many\tApples?\n", "how many apples"),
    ("It costs $1,080.50 (total).", "it costs 1080 50 total"),
    ("Tom's 3-legged stool", "toms 3 legged stool"),
    ("ﬁve items_left", "five items left"),  # NFKC unfolds ligatures; underscore is punctuation
    ("?!...", ""),
])
def test_normalize_text(text, expected):
    assert normalize_text(text) == expected


@pytest.mark.parametrize("text, n, expected", [
    ("A b, C d.", 3, {("a", "b", "c"), ("b", "c", "d")}),
    ("one two", 3, {("one", "two")}),  # shorter than n: the whole text is one gram
    ("one two three", 3, {("one", "two", "three")}),
    ("", 3, set()),
])
def test_ngrams(text, n, expected):
    assert ngrams(text, n) == expected


def test_near_duplicate_index_finds_best_and_first_on_ties():
    index = NearDuplicateIndex(n=3, threshold=0.7)
    index.add("garden", GARDEN)
    index.add("bakery", BAKERY)
    index.add("bakery-copy", BAKERY)
    key, score = index.find(BAKERY_ONE_NUMBER)
    assert key == "bakery" and score == pytest.approx(26 / 32)
    assert index.find(INVENTED) is None
    assert index.find("") is None
    assert len(index) == 3


def test_near_duplicate_threshold_is_inclusive():
    index = NearDuplicateIndex(n=3, threshold=26 / 32)
    index.add("bakery", BAKERY)
    assert index.find(BAKERY_ONE_NUMBER) == ("bakery", pytest.approx(26 / 32))
    assert NearDuplicateIndex(n=3, threshold=0.82).find(BAKERY_ONE_NUMBER) is None


def test_dedupe_exact_near_and_distinct():
    problems = [
        p("a", BAKERY),
        p("b", BAKERY.upper().replace(".", " !! ")),  # exact after normalisation
        p("c", BAKERY_ONE_NUMBER),  # near: one number changed
        p("d", GARDEN),  # a different problem
    ]
    kept, dropped = dedupe(problems)
    assert [x.id for x in kept] == ["a", "d"]
    assert dropped == [{"id": "b", "duplicate_of": "a", "similarity": 1.0},
                       {"id": "c", "duplicate_of": "a", "similarity": 0.8125}]


def test_dedupe_exact_without_near():
    # A threshold above 1 turns near-duplicate removal off; exact duplicates still go.
    kept, dropped = dedupe([p("a", BAKERY), p("b", BAKERY_ONE_NUMBER), p("c", BAKERY.lower())], threshold=1.01)
    assert [x.id for x in kept] == ["a", "b"]
    assert dropped == [{"id": "c", "duplicate_of": "a", "similarity": 1.0}]


def test_dedupe_against_existing():
    existing = [p("seed-1", GARDEN, "gsm8k"), p("seed-2", BAKERY, "gsm8k")]
    kept, dropped = dedupe([p("new-1", GARDEN.lower()), p("new-2", BAKERY_ONE_NUMBER), p("new-3", INVENTED)],
                           existing=existing)
    assert [x.id for x in kept] == ["new-3"]
    assert [(d["id"], d["duplicate_of"]) for d in dropped] == [("new-1", "seed-1"), ("new-2", "seed-2")]
    assert dedupe([], existing=existing) == ([], [])


def test_leakage_short_eval_question_only_exact():
    short = p("toy-1", "How many legs do 3 spiders have?", "toy")  # 7 words < 13
    long_q = p("toy-2", BAKERY, "toy")
    index = LeakageIndex([short, long_q], n=13, suites=["toy"])
    assert index.check("how many legs do 3 spiders have")["kind"] == "exact"
    assert index.check("Tell me: how many legs do 3 spiders have? Count them carefully please.") is None
    # A shared span of 13 words of the long one leaks; 12 words do not.
    words = normalize_text(BAKERY).split()
    assert index.check("Once upon a time " + " ".join(words[5:18]))["suite_id"] == "toy-2"
    assert index.check("Once upon a time " + " ".join(words[5:17])) is None


@pytest.fixture(scope="module")
def leakage(data_root) -> LeakageIndex:
    return LeakageIndex.from_suites(data_root)


@pytest.fixture(scope="module")
def gsm8k_test(data_root) -> list[Problem]:
    return load_suite("gsm8k", data_root)


def test_leakage_real_gsm8k_verbatim(leakage, gsm8k_test):
    original = gsm8k_test[10]
    hit = leakage.check(original.question)
    assert hit["suite_id"] == original.id and hit["suite"] == "gsm8k" and hit["kind"] == "exact"


def test_leakage_real_gsm8k_changed_prefix(leakage, gsm8k_test):
    original = gsm8k_test[0]  # Janet's ducks
    tail = original.question.split(" ", 6)[-1]  # drop the first 6 words, keep the long rest
    hit = leakage.check("In a small village far away, a farmer's " + tail)
    assert hit["suite_id"] == original.id and hit["kind"] == "ngram" and hit["overlap"] >= 10
    assert len(hit["ngram"].split()) == 13 and hit["ngram"] in normalize_text(original.question)


def test_leakage_clean_invented_question(leakage):
    assert leakage.check(INVENTED) is None
    assert leakage.check("") is None


def test_leakage_filter_statistics(leakage, gsm8k_test):
    problems = [p("g-1", gsm8k_test[3].question), p("g-2", INVENTED), p("g-3", GARDEN)]
    clean, leaked, stats = leakage.filter(problems)
    assert [x.id for x in clean] == ["g-2", "g-3"]
    assert [(x["id"], x["suite_id"]) for x in leaked] == [("g-1", gsm8k_test[3].id)]
    assert stats == {"checked": 3, "leaked": 1, "by_suite": {"gsm8k": 1}, "suites": leakage.suites, "missing": []}


def test_from_suites_indexes_eval_suites_only(leakage, data_root):
    assert "gsm8k_train" not in leakage.suites
    assert {"gsm8k", "svamp"} <= set(leakage.suites)
    train = load_suite("gsm8k_train", data_root)
    # A training question that no eval suite shares a 13-gram with is not leakage.
    assert sum(leakage.check(x.question) is None for x in train[:50]) >= 45


def test_from_suites_names_every_missing_suite(tmp_path, data_root, caplog, monkeypatch):
    (tmp_path / "gsm8k").mkdir()
    shutil.copy(data_root / "gsm8k" / "test.jsonl", tmp_path / "gsm8k" / "test.jsonl")
    with caplog.at_level("WARNING"):
        index = LeakageIndex.from_suites(tmp_path)
    assert index.suites == ["gsm8k"] and len(index) == 1319
    others = ["svamp", "asdiv", "multiarith", "addsub", "singleeq"]
    assert index.missing == others and index.filter([])[2]["missing"] == others
    (line,) = [r.getMessage() for r in caplog.records if "leakage check" in r.getMessage()]
    assert line == index.missing_line(data_roots(tmp_path)) and "\n" not in line
    assert ", ".join(others) + f" not found under {tmp_path}" in line and "toolkit data fetch" in line
    nowhere = LeakageIndex.from_suites(tmp_path / "nowhere")
    assert nowhere.suites == [] and nowhere.missing == ["gsm8k", *others]
    # A suite under $TOOLKIT_DATA counts, though the data root lacks it.
    monkeypatch.setenv("TOOLKIT_DATA", str(data_root))
    assert LeakageIndex.from_suites(tmp_path / "nowhere").missing == []
    with pytest.raises(DataError):
        LeakageIndex.from_suites(tmp_path, suites=["no-such-suite"])


def test_from_suites_excludes_training_ids(tmp_path, data_root, gsm8k_test):
    (tmp_path / "gsm8k").mkdir()
    shutil.copy(data_root / "gsm8k" / "test.jsonl", tmp_path / "gsm8k" / "test.jsonl")
    index = LeakageIndex.from_suites(tmp_path, exclude=[gsm8k_test[0].id, "not-an-id"])
    assert len(index) == 1318
    assert index.check(gsm8k_test[0].question) is None
    assert index.check(gsm8k_test[1].question)["suite_id"] == gsm8k_test[1].id


def test_from_suites_reports_corrupt_file(tmp_path):
    (tmp_path / "svamp").mkdir()
    (tmp_path / "svamp" / "SVAMP.json").write_text(json.dumps({"not": "a list"}))
    with pytest.raises(DataError):
        LeakageIndex.from_suites(tmp_path)


def test_leakage_speed(data_root, gsm8k_test):
    start = time.perf_counter()
    index = LeakageIndex.from_suites(data_root)
    built = time.perf_counter() - start
    queries = [x.question[::-1] for x in gsm8k_test[:500]] + [x.question for x in gsm8k_test[:500]]
    start = time.perf_counter()
    hits = sum(index.check(q) is not None for q in queries)
    checked = time.perf_counter() - start
    assert hits == 500
    # Measured about 0.4 s and 0.05 s on a shared 2-core machine; the bounds are loose on purpose.
    assert built < 20 and checked < 10, (built, checked)
