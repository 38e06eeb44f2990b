"""Self-consistency votes, table-driven: groups, ties, missing answers, tolerance and thresholds."""
from __future__ import annotations

import itertools

import pytest

from toolkit.data.voting import Vote, majority_vote

CASES = [
    # name, answers, min_fraction, min_votes, expected Vote
    ("empty", [], 0.5, 1, Vote(None, 0, 0, 0.0, False)),
    ("all-none", [None, None, None], 0.5, 1, Vote(None, 0, 3, 0.0, False)),
    ("unanimous", ["12", "12", "12", "12"], 0.6, 3, Vote("12", 4, 4, 1.0, True)),
    ("clear-majority", ["12", "12", "12", "7"], 0.6, 3, Vote("12", 3, 4, 0.75, True)),
    ("nones-count-in-total", ["5", "5", None, None], 0.6, 2, Vote("5", 2, 4, 0.5, False)),
    ("nones-never-win", [None, None, None, "5"], 0.2, 1, Vote("5", 1, 4, 0.25, True)),
    ("tie-goes-to-smallest", ["9", "3", "9", "3"], 0.5, 2, Vote("3", 2, 4, 0.5, True)),
    ("tie-negative-is-smaller", ["2", "-2"], 0.5, 1, Vote("-2", 1, 2, 0.5, True)),
    ("tie-numeric-not-text-order", ["10", "9", "10", "9"], 0.5, 1, Vote("9", 2, 4, 0.5, True)),
    ("tolerance-groups", ["0.5", "0.50001", "0.7"], 0.6, 2, Vote("0.5", 2, 3, 2 / 3, True)),
    ("tolerant-group-beats-exact-group", ["0.50001", "0.5", "0.50002", "0.7", "0.7"], 0.5, 2,
     Vote("0.5", 3, 5, 0.6, True)),
    ("most-frequent-spelling-named", ["0.50001", "0.50001", "0.5"], 0.5, 2, Vote("0.50001", 3, 3, 1.0, True)),
    ("outside-tolerance-split", ["100", "100.5", "100.5"], 0.5, 1, Vote("100.5", 2, 3, 2 / 3, True)),
    ("fraction-boundary-accepted", ["4"] * 7 + ["1", "2", "3"], 0.7, 7, Vote("4", 7, 10, 0.7, True)),
    ("fraction-just-below", ["4"] * 6 + ["1", "2", "3", "5"], 0.7, 1, Vote("4", 6, 10, 0.6, False)),
    ("float-noise-in-threshold", ["4"] * 7 + ["1", "2", "3"], 0.1 * 7, 1, Vote("4", 7, 10, 0.7, True)),
    ("min-votes-boundary", ["8", "8", "8"], 0.5, 3, Vote("8", 3, 3, 1.0, True)),
    ("min-votes-not-reached", ["8", "8"], 0.5, 3, Vote("8", 2, 2, 1.0, False)),
    ("single-answer", ["42"], 1.0, 1, Vote("42", 1, 1, 1.0, True)),
]


@pytest.mark.parametrize("answers, min_fraction, min_votes, expected", [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_majority_vote(answers, min_fraction, min_votes, expected):
    vote = majority_vote(answers, min_fraction, min_votes)
    assert vote == Vote(expected.answer, expected.votes, expected.total, pytest.approx(expected.agreement),
                        expected.accepted)


def test_order_does_not_matter():
    # A chain within tolerance of its neighbours, a tie and a None: every order gives one result.
    answers = ["1", "1.00009", "1.00018", "7", "7", None]
    results = {majority_vote(list(p), 0.3, 2) for p in itertools.permutations(answers)}
    assert len(results) == 1


def test_vote_is_frozen():
    with pytest.raises(AttributeError):
        majority_vote(["1"], 0.5, 1).answer = "2"  # type: ignore[misc]
