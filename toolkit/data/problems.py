"""Problems: the Problem record, dataset and plain-file loaders, splits, dedupe and JSONL I/O."""
from __future__ import annotations

import csv
import io
import json
import logging
import random
import re
import xml.etree.ElementTree as ET
from dataclasses import MISSING, asdict, dataclass, fields
from decimal import Decimal
from functools import partial
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

from toolkit.core.errors import DataError
from toolkit.core.jsonio import atomic_write_jsonl
from toolkit.data.answers import normalize_number
from toolkit.data.fetch import locate_suite
from toolkit.data.suites import SUITES

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Problem:
    """One math word problem with its normalised gold answer.

    `origin` is "seed" for dataset problems; generated ones say where they came from
    (e.g. "harder-of:gsm8k-12@round-1"). `rationale` is the dataset's own worked solution, if any.
    """

    id: str
    question: str
    answer: str
    source: str
    origin: str = "seed"
    rationale: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Problem:
        """Inverse of `to_dict`; unknown keys are ignored, a missing required key is a ValueError."""
        missing = [f.name for f in fields(cls) if f.default is MISSING and f.name not in d]
        if missing:
            raise ValueError(f"missing field(s): {', '.join(missing)}")
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


# GSM8K rationales carry calculator annotations "<<48/2=24>>" that are tooling, not prose.
_CALCULATOR_NOTE = re.compile(r"<<[^<>]*>>")
# An ASDiv answer that is one number with an optional unit: "9 (apples)", "0.46 (dollars)", "48".
# Ratios "3:2", fractions "1/3", lists "5 (dollars); 7 (dollars)" and names are not single numbers.
_ASDIV_SINGLE = re.compile(r"\s*-?\d+(?:\.\d+)?\s*(?:\([^()]*\))?\s*")


def _gold(value: Any, where: str, hint: str = "") -> str:
    """Normalised gold answer from a dataset value (number or text); DataError (ending in `hint`) when there is
    none."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise DataError(f"{where}: answer {value!r} is not a number{hint}")
    if isinstance(value, float):
        # str(1e16) is "1e+16", which normalize_number would read as 1; spell the float out in full.
        value = format(Decimal(repr(value)), "f")
    answer = normalize_number(str(value))
    if answer is None:
        raise DataError(f"{where}: answer {value!r} has no number{hint}")
    return answer


def _split_rationale(text: str) -> tuple[str | None, str]:
    """GSM8K answer text -> (rationale without calculator notes, text after the last '####')."""
    rationale, _, final = text.rpartition("####")
    return _CALCULATOR_NOTE.sub("", rationale).strip() or None, final


def _read_text(path: Path, allow_empty: bool = False) -> str:
    try:
        # utf-8-sig also reads files saved with a byte-order mark (spreadsheet CSV exports).
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror})") from exc
    if not text.strip() and not allow_empty:
        raise DataError(f"{path}: file is empty")
    return text


def _read_json(path: Path) -> Any:
    try:
        return json.loads(_read_text(path))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{exc.lineno}: invalid JSON ({exc.msg})") from exc


def _json_items(path: Path) -> Iterator[tuple[int, dict[str, Any], str]]:
    """(0-based index, object, "path: item N") for each item of a file holding a JSON list of objects."""
    data = _read_json(path)
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of problems, found {type(data).__name__}")
    for i, item in enumerate(data):
        where = f"{path}: item {i + 1}"
        yield i, _object(item, where), where


def _object(record: Any, where: str) -> dict[str, Any]:
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected an object, found {type(record).__name__}")
    return record


def _field(record: dict[str, Any], key: str, where: str) -> Any:
    value = record.get(key)
    if value is None or (isinstance(value, str) and not value.strip()):
        raise DataError(f"{where}: missing or empty field {key!r}")
    return value


def _text(record: dict[str, Any], key: str, where: str) -> str:
    value = _field(record, key, where)
    if not isinstance(value, str):
        raise DataError(f"{where}: field {key!r} is not text")
    return value.strip()


def _record_problem(
    record: dict[str, Any], where: str, index: int, prefix: str, source: str,
    question_field: str, answer_field: str, require_marker: bool = False,
) -> Problem:
    """A problem from one question/answer record (JSONL line, CSV row, JSON item, HF row); a missing field or an
    answer without a number is one line that says how to fix it."""
    for key, role in ((question_field, "question"), (answer_field, "answer")):
        value = record.get(key)
        if value is None or (isinstance(value, str) and not value.strip()):
            present = ", ".join(str(k) for k in record if k is not None) or "none"  # a CSV row's extras: key None
            raise DataError(f"{where}: missing or empty field {key!r} (fields here: {present}); add it, or name "
                            f"the {role} field (toolkit init --{role}-field, recipe data.train.{role}_field)")
    question = _text(record, question_field, where)
    answer = record[answer_field]
    rationale = None
    if isinstance(answer, str) and "####" in answer:
        rationale, answer = _split_rationale(answer)
    elif require_marker:
        raise DataError(f"{where}: GSM8K answer has no final '#### N' line")
    native = record.get("id")
    native = index if native in (None, "") else native
    gold = _gold(answer, where, hint="; write the final answer as a number, such as 42, 3.5 or 1/2")
    return Problem(f"{prefix}-{native}", question, gold, source, rationale=rationale)


def _unique(problems: list[Problem], where: str, seen: dict[str, str]) -> None:
    """The last problem's id is new, else one line naming both places (`seen`: id -> where it came first)."""
    pid = problems[-1].id
    if pid in seen:
        raise DataError(f"{where}: duplicate problem id {pid!r} (first at {seen[pid]}); give each problem its own "
                        f"id, or leave the id field out and the problems are numbered")
    seen[pid] = where


def _load_jsonl(
    path: Path, prefix: str, source: str, question_field: str, answer_field: str,
    require_marker: bool = False,
) -> list[Problem]:
    problems: list[Problem] = []
    seen: dict[str, str] = {}
    for lineno, line in enumerate(_read_text(path).split("\n"), start=1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{where}: invalid JSON ({exc.msg})") from exc
        # Ids count records, not lines, so a blank line does not shift every later id.
        problems.append(_record_problem(_object(record, where), where, len(problems), prefix, source,
                                        question_field, answer_field, require_marker))
        _unique(problems, where, seen)
    return problems


_load_gsm8k = partial(_load_jsonl, question_field="question", answer_field="answer", require_marker=True)


def _load_csv(path: Path, prefix: str, source: str, question_field: str, answer_field: str) -> list[Problem]:
    reader = csv.DictReader(io.StringIO(_read_text(path), newline=""))
    columns = reader.fieldnames or []
    for name in (question_field, answer_field):
        if name not in columns:
            raise DataError(f"{path}:1: no column {name!r} (columns: {', '.join(columns)})")
    # reader.line_num is the line a row ends on, which is the row's line unless a quoted field spans lines.
    problems: list[Problem] = []
    seen: dict[str, str] = {}
    for i, row in enumerate(reader):
        where = f"{path}:{reader.line_num}"
        problems.append(_record_problem(row, where, i, prefix, source, question_field, answer_field))
        _unique(problems, where, seen)
    return problems


def _load_json(path: Path, prefix: str, source: str, question_field: str, answer_field: str) -> list[Problem]:
    return [_record_problem(item, where, i, prefix, source, question_field, answer_field)
            for i, item, where in _json_items(path)]


def _load_svamp(path: Path, prefix: str, source: str) -> list[Problem]:
    return [Problem(f"{prefix}-{item.get('ID', i)}",
                    f"{_text(item, 'Body', where)} {_text(item, 'Question', where)}",
                    _gold(_field(item, "Answer", where), where), source)
            for i, item, where in _json_items(path)]


def _load_multiarith(path: Path, prefix: str, source: str) -> list[Problem]:
    """MultiArith, AddSub and SingleEq share this shape: sQuestion, lSolutions, iIndex."""
    problems = []
    for i, item, where in _json_items(path):
        solutions = _field(item, "lSolutions", where)
        if not isinstance(solutions, list) or not solutions:
            raise DataError(f"{where}: 'lSolutions' is not a non-empty list")
        problems.append(Problem(f"{prefix}-{item.get('iIndex', i)}", _text(item, "sQuestion", where),
                                _gold(solutions[0], where), source))
    return problems


def _load_asdiv(path: Path, prefix: str, source: str) -> list[Problem]:
    """ASDiv keeps only problems whose answer is one number; the others are skipped and counted."""
    try:
        root = ET.fromstring(_read_text(path))
    except ET.ParseError as exc:
        raise DataError(f"{path}:{exc.position[0]}: invalid XML ({exc.msg})") from exc
    problems, skipped = [], 0
    for i, element in enumerate(root.iter("Problem")):
        native = element.get("ID") or i
        texts = {tag: (element.findtext(tag) or "").strip() for tag in ("Body", "Question", "Answer")}
        for tag, text in texts.items():
            if not text:
                raise DataError(f"{path}: problem {native}: missing or empty <{tag}>")
        if not _ASDIV_SINGLE.fullmatch(texts["Answer"]):
            skipped += 1
            continue
        where = f"{path}: problem {native}"
        problems.append(Problem(f"{prefix}-{native}", f"{texts['Body']} {texts['Question']}",
                                _gold(texts["Answer"], where), source))
    log.info("%s: kept %d problems, skipped %d whose answer is not a single number",
             path, len(problems), skipped)
    return problems


# Formats whose shape names one dataset; the others ("multiarith" covers three datasets) take
# their source from the file name.
_DATASET_FORMATS = {"gsm8k": _load_gsm8k, "svamp": _load_svamp, "asdiv": _load_asdiv}
_PLAIN_FORMATS = {"jsonl": _load_jsonl, "csv": _load_csv, "json": _load_json}
FORMATS = (*_DATASET_FORMATS, "multiarith", *_PLAIN_FORMATS)
# The loader of a built-in suite's format (suites.py), given the suite name as id prefix and its dataset as source.
_SUITE_LOADERS = {**_DATASET_FORMATS, "multiarith": _load_multiarith}


def _checked(problems: list[Problem], where: str) -> list[Problem]:
    """Every load yields at least one problem and unique ids (splits and caches key on them)."""
    if not problems:
        raise DataError(f"{where}: no problems found")
    seen: set[str] = set()
    for problem in problems:
        if problem.id in seen:
            raise DataError(f"{where}: duplicate problem id {problem.id!r}")
        seen.add(problem.id)
    return problems


def load_suite(name: str, data_root: str | Path) -> list[Problem]:
    """Load a named benchmark suite from its original file under `data_root`, else $TOOLKIT_DATA, else the
    user cache, else downloaded into the cache (fetch.locate_suite)."""
    if name not in SUITES:
        raise DataError(f"unknown suite {name!r}; known suites: {', '.join(SUITES)}")
    suite = SUITES[name]
    path = locate_suite(name, data_root) / suite.file
    return _checked(_SUITE_LOADERS[suite.format](path, name, suite.source), str(path))


def _detect_format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in (".xml", ".csv"):
        return "asdiv" if suffix == ".xml" else "csv"
    if suffix == ".jsonl":
        first = next(line for line in _read_text(path).split("\n") if line.strip())
        try:
            record = json.loads(first)
        except json.JSONDecodeError:
            return "jsonl"  # the loader reports the bad line with its number
        answer = record.get("answer") if isinstance(record, dict) else None
        return "gsm8k" if isinstance(answer, str) and "####" in answer else "jsonl"
    if suffix == ".json":
        data = _read_json(path)
        first = data[0] if isinstance(data, list) and data else None
        if isinstance(first, dict) and "sQuestion" in first:
            return "multiarith"
        if isinstance(first, dict) and "Body" in first:
            return "svamp"
        return "json"
    raise DataError(f"{path}: cannot tell the format from the extension; "
                    f"pass a format, one of {', '.join(FORMATS)}")


def load_file(
    path: str | Path, fmt: str | None = None,
    question_field: str = "question", answer_field: str = "answer",
) -> list[Problem]:
    """Load problems from one file in a dataset format or plain JSONL/CSV/JSON.

    `fmt=None` detects the format from the extension and content. The field names apply to the
    plain formats; an `id` field is used when present. Ids are "<source>-<id or 0-based index>".
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    fmt = fmt or _detect_format(path)
    if fmt in _DATASET_FORMATS:
        problems = _DATASET_FORMATS[fmt](path, fmt, fmt)
    elif fmt == "multiarith":
        problems = _load_multiarith(path, path.stem.lower(), path.stem.lower())
    elif fmt in _PLAIN_FORMATS:
        problems = _PLAIN_FORMATS[fmt](path, path.stem, path.stem, question_field, answer_field)
    else:
        raise DataError(f"{path}: unknown format {fmt!r}; known formats: {', '.join(FORMATS)}")
    return _checked(problems, str(path))


def load_hf(
    dataset: str, config: str | None, split: str,
    question_field: str = "question", answer_field: str = "answer",
) -> list[Problem]:
    """Load a split from the Hugging Face hub (needs the optional `datasets` package and network)."""
    try:
        import datasets  # optional and heavy: only users who load from the hub need it
    except ImportError as exc:
        raise DataError("loading from the Hugging Face hub needs the datasets package: "
                        "pip install datasets") from exc
    where = f"{dataset}{'/' + config if config else ''}[{split}]"
    try:
        rows = datasets.load_dataset(dataset, config, split=split)
    except Exception as exc:  # unreachable hub, unknown dataset/config/split: all fixable by the user
        raise DataError(f"{where}: cannot load from the Hugging Face hub ({exc})") from exc
    source = dataset.rsplit("/", 1)[-1].lower()
    # Same ids as the local suites (openai/gsm8k test -> gsm8k-N, train -> gsm8k_train-N).
    prefix = source if split == "test" else f"{source}_{split}"
    return _checked([
        _record_problem(row, f"{where} row {i}", i, prefix, source, question_field, answer_field)
        for i, row in enumerate(rows)
    ], where)


def split_problems(problems: Iterable[Problem], sizes: dict[str, int], seed: int) -> dict[str, list[Problem]]:
    """Seeded disjoint splits, e.g. {"train": 40, "heldout": 30}, the same whatever the input order."""
    ordered = sorted(problems, key=lambda p: p.id)
    for a, b in zip(ordered, ordered[1:]):
        if a.id == b.id:  # ties would make the order, and so the split, depend on the input order
            raise DataError(f"cannot split: duplicate problem id {a.id!r}")
    wanted = sum(sizes.values())
    if any(n < 0 for n in sizes.values()) or wanted > len(ordered):
        asked = ", ".join(f"{name}={n}" for name, n in sizes.items())
        raise DataError(f"cannot split {len(ordered)} problems into {asked} (needs {wanted})")
    random.Random(seed).shuffle(ordered)
    splits, start = {}, 0
    for name, n in sizes.items():
        splits[name] = ordered[start:start + n]
        start += n
    return splits


def write_jsonl(path: str | Path, problems: Iterable[Problem]) -> None:
    """Write one problem per line atomically: a killed run leaves the old file or the new one, never half."""
    atomic_write_jsonl(Path(path), (p.to_dict() for p in problems))


def read_jsonl(path: str | Path) -> list[Problem]:
    """Read a file written by `write_jsonl`; an empty file is zero problems (a round may generate none)."""
    path = Path(path)
    text = _read_text(path, allow_empty=True)
    problems = []
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            problems.append(Problem.from_dict(json.loads(line)))
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{lineno}: invalid JSON ({exc.msg})") from exc
        except (ValueError, TypeError) as exc:
            raise DataError(f"{path}:{lineno}: not a problem record ({exc})") from exc
    return problems
