"""scripts/train_verifier.py's choice of threshold and cutoff, and its mined "unrelated" pairs:
two questions of different groups of one batch on a nearby topic, never two of one group, never
above the band where groups may repeat a question, never a near-miss, another batch's question
or the old guard set's."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

from train_verifier import MIN_COSINE, choose, unrelated  # noqa: E402


def _unit(*xs: float) -> np.ndarray:
    v = np.array(xs, dtype=np.float32)
    return v / np.linalg.norm(v)


def test_each_question_meets_its_nearest_neighbour_of_another_group_inside_the_band() -> None:
    vectors = {
        "a1": _unit(1, 0, 0),
        "a2": _unit(1, 0.05, 0),  # group a's paraphrase: same group, never paired
        "b1": _unit(1, 0.9, 0),  # cosine ~0.74 with a1: inside the band
        "c1": _unit(1, 0.1, 0),  # cosine ~0.99 with a1: above it (may be the same question)
        "d1": _unit(0, 0, 1),  # orthogonal: below it
    }
    pairs = [
        {"a": "a1", "b": "a2", "group": "p1-a", "label": "same"},
        {"a": "b1", "b": "b1", "group": "p1-b", "label": "same"},
        {"a": "c1", "b": "c1", "group": "p1-c", "label": "same"},
        {"a": "d1", "b": "d1", "group": "p1-d", "label": "same"},
    ]
    mined = unrelated(pairs, vectors)
    assert ("a1", "b1") in mined and ("a2", "b1") in mined
    groups = {"a1": "a", "a2": "a", "b1": "b", "c1": "c", "d1": "d"}
    for x, y in mined:
        assert groups[x] != groups[y]
        assert 0.45 <= float(vectors[x] @ vectors[y]) < 0.85
        assert "d1" not in (x, y)
    assert len(set(mined)) == len(mined)


def test_only_questions_of_one_batch_that_no_two_groups_share_are_mined() -> None:
    """A near-miss may be another group's question, another batch (or the old guard set) may
    repeat a question, and a text in two groups is one question asked twice."""
    vectors = {
        "a1": _unit(1, 0, 0),
        "a-near": _unit(1, 0.9, 0.1),  # a1's near-miss: inside the band, never mined
        "b1": _unit(1, 0.9, 0),  # batch p1: mined with a1
        "x1": _unit(1, 0.85, 0),  # batch p2: closer to a1 than b1, but another batch
        "g1": _unit(1, 0.8, 0),  # the old guard set: never mined
        "s1": _unit(1, 0.95, 0),  # in two groups of p1
    }
    pairs = [
        {"a": "a1", "b": "a-near", "group": "p1-a", "label": "different"},
        {"a": "b1", "b": "b1", "group": "p1-b", "label": "same"},
        {"a": "x1", "b": "x1", "group": "p2-x", "label": "same"},
        {"a": "g1", "b": "g1", "group": "guard-dev", "label": "same"},
        {"a": "s1", "b": "s1", "group": "p1-s", "label": "same"},
        {"a": "s1", "b": "s1", "group": "p1-t", "label": "same"},
    ]
    mined = unrelated(pairs, vectors)
    assert mined == [("a1", "b1")]


def test_the_dev_choice_keeps_the_threshold_at_or_above_the_latency_floor() -> None:
    """Paraphrases down to cosine 0.5 and a model that is right on all of them: the most recall
    is at 0.5, but below MIN_COSINE each lookup asks the cross-encoder about more candidates,
    so the choice stops at the floor unless told otherwise."""
    cosine = np.array([0.52, 0.58, 0.72, 0.9, 0.55, 0.8])
    split = SimpleNamespace(
        cosine=cosine,
        y=np.array([True, True, True, True, False, False]),
        vetoed=np.zeros(6, dtype=bool),
    )
    probs = np.array([0.99, 0.98, 0.97, 0.99, 0.1, 0.2])
    threshold, cutoff, rules, recall = choose(split, probs, 0.99)  # type: ignore[arg-type]
    assert MIN_COSINE == 0.70 and threshold == 0.70 and recall == 0.5 and not rules
    assert cutoff > 0.2  # the two different pairs are refused
    threshold, _, _, recall = choose(split, probs, 0.99, min_cosine=0.5)  # type: ignore[arg-type]
    assert threshold == 0.5 and recall == 1.0
