"""Data hygiene for generated problems: exact and near-duplicate removal, eval-suite leakage checks and overlap."""
from __future__ import annotations

import logging
import re
import unicodedata
from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from toolkit.data.fetch import data_roots, find_suite
from toolkit.data.problems import Problem, load_suite
from toolkit.data.suites import EVAL_SUITES, SUITES

log = logging.getLogger(__name__)

_APOSTROPHE = re.compile(r"['’‘`]")  # "Janet’s" -> "janets", one word as in "Janets"
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3})")  # "1,080" -> "1080", as the answers normalise it
_PUNCTUATION = re.compile(r"[^\w\s]|_")


def normalize_text(q: str) -> str:
    """Lowercase, punctuation removed (a word separator, except apostrophes and thousands commas),
    whitespace collapsed; digits are kept, so problems that differ in a number stay different."""
    text = unicodedata.normalize("NFKC", q).casefold()
    text = _THOUSANDS.sub("", _APOSTROPHE.sub("", text))
    return " ".join(_PUNCTUATION.sub(" ", text).split())


def ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    """Word n-grams of normalize_text(text). A text of fewer than n words is one gram of its full
    length, which can only equal the gram of the very same short text."""
    return set(_windows(normalize_text(text).split(), n))


def _windows(words: list[str], n: int) -> list[tuple[str, ...]]:
    """The n-grams of `words` in text order (a shorter text: itself)."""
    if len(words) < n:
        return [tuple(words)] if words else []
    return [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]


class NearDuplicateIndex:
    """Texts by key, found again by word-n-gram Jaccard similarity.

    An inverted index from gram to the texts that hold it means a lookup only touches texts that
    share a gram with the query, not every stored text.
    """

    def __init__(self, n: int = 3, threshold: float = 0.7) -> None:
        self.n = n
        self.threshold = threshold
        self._keys: list[str] = []
        self._grams: list[set[tuple[str, ...]]] = []
        self._postings: dict[tuple[str, ...], list[int]] = {}  # gram -> positions in _keys

    def __len__(self) -> int:
        return len(self._keys)

    def add(self, key: str, text: str) -> None:
        grams = ngrams(text, self.n)
        for gram in grams:
            self._postings.setdefault(gram, []).append(len(self._keys))
        self._keys.append(key)
        self._grams.append(grams)

    def find(self, text: str) -> tuple[str, float] | None:
        """The stored key most similar to `text` with similarity >= threshold, and that similarity.

        Equal similarities go to the text added first.
        """
        grams = ngrams(text, self.n)
        shared: Counter[int] = Counter()
        for gram in grams:
            shared.update(self._postings.get(gram, ()))
        best, best_score = -1, 0.0
        for i, inter in shared.items():
            score = inter / (len(grams) + len(self._grams[i]) - inter)
            if score >= self.threshold and (score > best_score or (score == best_score and i < best)):
                best, best_score = i, score
        return (self._keys[best], best_score) if best >= 0 else None


def dedupe(problems: list[Problem], n: int = 3, threshold: float = 0.7,
           existing: Iterable[Problem] = ()) -> tuple[list[Problem], list[dict[str, Any]]]:
    """Keep the first of every exact or near duplicate, within `problems` and against `existing`.

    Exact means equal after normalize_text; near means word-n-gram Jaccard >= threshold. Returns
    (kept, dropped), each dropped entry {"id", "duplicate_of", "similarity"}.
    """
    exact: dict[str, str] = {}
    index = NearDuplicateIndex(n, threshold)
    for problem in existing:
        exact.setdefault(normalize_text(problem.question), problem.id)
        index.add(problem.id, problem.question)
    kept, dropped = [], []
    for problem in problems:
        norm = normalize_text(problem.question)
        if norm in exact:
            dropped.append({"id": problem.id, "duplicate_of": exact[norm], "similarity": 1.0})
            continue
        near = index.find(problem.question)
        if near is not None:
            dropped.append({"id": problem.id, "duplicate_of": near[0], "similarity": round(near[1], 4)})
            continue
        exact[norm] = problem.id
        index.add(problem.id, problem.question)
        kept.append(problem)
    return kept, dropped


class LeakageIndex:
    """Evaluation questions, to catch generated training problems that copy one.

    A text leaks when it equals an eval question after normalize_text, or shares a word n-gram
    (n=13, the GPT-3 / lm-evaluation-harness contamination convention) with one. An eval question
    of fewer than n words counts only when the text equals it.
    """

    def __init__(self, problems: Iterable[Problem], n: int = 13, suites: Sequence[str] = (),
                 missing: Sequence[str] = ()) -> None:
        self.n = n
        self.suites = list(suites)  # the suites indexed, for the record
        self.missing = list(missing)  # the suites asked for but found nowhere: not checked against
        self._problems: list[Problem] = []
        self._exact: dict[str, int] = {}
        self._postings: dict[tuple[str, ...], list[int]] = {}
        self._shared_grams: dict[str, tuple[np.ndarray, set[str]]] | None = None  # built by overlap()
        for i, problem in enumerate(problems):
            self._problems.append(problem)
            self._exact.setdefault(normalize_text(problem.question), i)
            for gram in ngrams(problem.question, n):
                self._postings.setdefault(gram, []).append(i)

    def __len__(self) -> int:
        return len(self._problems)

    @classmethod
    def from_suites(cls, data_root: str | Path, suites: Sequence[str] | None = None,
                    n: int = 13, exclude: Iterable[str] = ()) -> LeakageIndex:
        """Every evaluation suite (EVAL_SUITES: all but the GSM8K training split, by default) found under
        data_root, $TOOLKIT_DATA or the user cache (fetch.data_roots; nothing is downloaded); a suite found
        nowhere is left out of `.suites`, named in `.missing` and in a warning (`missing_line()`).

        `exclude` names problem ids to leave out: a recipe that trains on part of a suite passes
        its training ids, since a variant that reuses its own seed's wording is not leakage.
        """
        names = list(EVAL_SUITES) if suites is None else list(suites)
        excluded = set(exclude)
        problems: list[Problem] = []
        indexed, missing = [], []
        roots = data_roots(data_root)
        for name in names:
            root = find_suite(name, roots) if name in SUITES else Path(data_root)
            if root is None:
                missing.append(name)
                continue
            # An unknown name or a corrupt file is an error the user must fix, not a skip.
            problems += [x for x in load_suite(name, root) if x.id not in excluded]
            indexed.append(name)
        index = cls(problems, n=n, suites=indexed, missing=missing)
        if missing:
            log.warning("%s", index.missing_line(roots))
        return index

    def missing_line(self, roots: Sequence[Path] = ()) -> str:
        """One line naming every suite the check could not compare against, and the fix; "" when none."""
        if not self.missing:
            return ""
        where = f" under {', '.join(str(r) for r in roots)}" if roots else ""
        return (f"leakage check: {', '.join(self.missing)} not found{where}, so not checked against: run "
                f"`toolkit data fetch SUITE`, or point --data-root, data.root or TOOLKIT_DATA at a copy")

    def check(self, text: str) -> dict[str, Any] | None:
        """None when `text` is clean; else the eval question it copies most (the most shared
        n-grams; ties to the first indexed): {"suite_id", "suite", "kind", "overlap", "ngram"}.

        "overlap" counts the shared n-grams ("exact": all of the question's); "ngram" is one
        shared n-gram as text, for a reader to see the copied span.
        """
        norm = normalize_text(text)
        windows = _windows(norm.split(), self.n)
        grams = set(windows)
        exact = self._exact.get(norm)
        if exact is not None:
            problem = self._problems[exact]
            return {"suite_id": problem.id, "suite": problem.source, "kind": "exact",
                    "overlap": len(grams), "ngram": " ".join(windows[0]) if windows else ""}
        shared: Counter[int] = Counter()
        for gram in grams:
            shared.update(self._postings.get(gram, ()))
        if not shared:
            return None
        best = max(shared, key=lambda i: (shared[i], -i))
        problem = self._problems[best]
        first = next(g for g in windows if best in self._postings.get(g, ()))
        return {"suite_id": problem.id, "suite": problem.source, "kind": "ngram",
                "overlap": shared[best], "ngram": " ".join(first)}

    def filter(self, problems: Iterable[Problem]) -> tuple[list[Problem], list[dict[str, Any]], dict[str, Any]]:
        """(clean problems, leaked entries {"id", **check}, statistics {"checked", "leaked",
        "by_suite", "suites", "missing": the suites not checked against})."""
        clean, leaked = [], []
        by_suite: Counter[str] = Counter()
        for problem in problems:
            hit = self.check(problem.question)
            if hit is None:
                clean.append(problem)
            else:
                leaked.append({"id": problem.id, **hit})
                by_suite[hit["suite"]] += 1
        stats = {"checked": len(clean) + len(leaked), "leaked": len(leaked),
                 "by_suite": dict(sorted(by_suite.items())), "suites": list(self.suites),
                 "missing": list(self.missing)}
        return clean, leaked, stats

    def overlap(self, texts: Sequence[str]) -> dict[str, list[int]]:
        """Per indexed suite, each text's maximum n-gram overlap with it: the length, in words after
        normalize_text, of the longest word sequence the text shares with any one question of the
        suite, capped at n; a text equal to a suite question scores n too.

        A text scores n in some suite exactly when check() finds it leaked (the drop rule), save a
        64-bit hash collision: grams are stored as in-process Python hashes, and against a suite of
        a million grams a lookup matches falsely about once in 10^13.
        """
        suites = self._suite_grams()
        words = [normalize_text(t).split() for t in texts]
        grams, valid = _gram_matrix(words, self.n)  # (positions, n): the k-gram starting at each word
        starts = np.cumsum([0] + [len(w) for w in words])[:-1]
        # Looked up in sorted order: searchsorted on sorted keys is ~6x faster (cache locality).
        order = np.argsort(grams[valid], kind="stable")
        keys = grams[valid][order]
        out: dict[str, list[int]] = {}
        for suite, (stored, exact) in suites.items():
            hit = np.zeros(len(keys), dtype=bool)
            if len(stored):
                at = np.minimum(np.searchsorted(stored, keys), len(stored) - 1)
                hit[order] = stored[at] == keys
            found = np.zeros_like(valid)
            found[valid] = hit
            # A k-gram found implies its shorter prefixes are too: the run of hits is the longest match.
            longest = np.cumprod(found, axis=1).sum(axis=1)
            best = [int(longest[a:a + len(w)].max()) if w else 0 for a, w in zip(starts, words)]
            out[suite] = [self.n if " ".join(w) in exact else b for w, b in zip(words, best)]
        return out

    def _suite_grams(self) -> dict[str, tuple[np.ndarray, set[str]]]:
        """Per suite: the sorted hashes of every word k-gram (k = 1..n) of its questions, and its
        normalised questions; built on first use, as only the overlap analysis needs them."""
        if self._shared_grams is None:
            hashes: dict[str, list[int]] = {name: [] for name in self.suites}
            exact: dict[str, set[str]] = {name: set() for name in self.suites}
            for problem in self._problems:
                words = normalize_text(problem.question).split()
                hashes.setdefault(problem.source, []).extend(
                    h for i in range(len(words)) for h in _chain_hashes(words, i, self.n))
                exact.setdefault(problem.source, set()).add(" ".join(words))
            self._shared_grams = {name: (_sorted_unique(np.array(h, dtype=np.int64)), exact[name])
                                  for name, h in hashes.items()}
        return self._shared_grams


def _sorted_unique(values: np.ndarray) -> np.ndarray:
    """Sorted, each value once (np.unique hashes first, several times slower on millions of ints)."""
    values = np.sort(values)
    return values[np.concatenate(([True], values[1:] != values[:-1]))] if len(values) else values


def _chain_hashes(words: list[str], start: int, n: int) -> list[int]:
    """Hashes of the k-grams of `words` from `start`, k = 1..n while they fit; each hashes the one
    before with its last word, so all n cost n steps rather than n(n+1)/2."""
    out, h = [], 0
    for word in words[start:start + n]:
        h = hash((h, word))
        out.append(h)
    return out


def _gram_matrix(texts: list[list[str]], n: int) -> tuple[np.ndarray, np.ndarray]:
    """For every word position of every text, in order: the _chain_hashes of the k-grams starting
    there (column k-1, k = 1..n) and whether each fits inside its text (one that does not is 0)."""
    rows = [_chain_hashes(words, i, n) for words in texts for i in range(len(words))]
    grams = np.array([r + [0] * (n - len(r)) for r in rows], dtype=np.int64).reshape(-1, n)
    valid = np.array([[True] * len(r) + [False] * (n - len(r)) for r in rows], dtype=bool).reshape(-1, n)
    return grams, valid
