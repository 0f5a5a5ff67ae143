"""scripts/train_verifier.py's mined "unrelated" pairs: two questions of different groups on a
nearby topic, never two of one group, never above the band where groups may repeat a question."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

from train_verifier import unrelated  # noqa: E402


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
        {"a": "a1", "b": "a2", "group": "a"},
        {"a": "b1", "b": "b1", "group": "b"},
        {"a": "c1", "b": "c1", "group": "c"},
        {"a": "d1", "b": "d1", "group": "d"},
    ]
    mined = unrelated(pairs, vectors)
    assert ("a1", "b1") in mined and ("a2", "b1") in mined
    groups = {"a1": "a", "a2": "a", "b1": "b", "c1": "c", "d1": "d"}
    for x, y in mined:
        assert groups[x] != groups[y]
        assert 0.45 <= float(vectors[x] @ vectors[y]) < 0.85
        assert "d1" not in (x, y)
    assert len(set(mined)) == len(mined)
