"""The semantic cache's verifier: the labelled pairs, the shipped model, the real embedder's word
vectors, the store asking it, and questions longer than the embedder reads.

The figures the shipped model reaches are measured by scripts/bench_cache.py on the test split;
these tests check the machinery and the decisions that must never go wrong.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from edgeinfer.cache.pair_features import NAMES, pair_features
from edgeinfer.cache.store import CacheStore
from edgeinfer.cache.verifier import MODEL_PATH, PairModel, Verifier
from edgeinfer.embed.fake import FakeEmbedder
from edgeinfer.embed.onnx import OnnxEmbedder
from tests.cache_fixtures import (  # noqa: F401
    chat,
    entry_for,
    make_store_fixture,
    minilm_fixture,
)

PAIRS = Path(__file__).parent / "data" / "cache_pairs"
NEAR_MISS_KINDS = {
    "number", "unit", "negation", "antonym", "direction", "comparison", "role", "entity", "time",
    "scope", "language", "constraint", "attribute", "modality",
}  # fmt: skip


def _split(name: str) -> list[dict[str, str]]:
    lines = (PAIRS / f"{name}.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def test_the_labelled_pairs_are_split_once_by_question() -> None:
    splits = {name: _split(name) for name in ("train", "dev", "test")}
    assert sum(len(rows) for rows in splits.values()) >= 2000
    groups = {name: {r["group"] for r in rows} for name, rows in splits.items()}
    # a question's paraphrases and near-misses never straddle two splits
    assert not groups["train"] & groups["dev"]
    assert not groups["train"] & groups["test"]
    assert not groups["dev"] & groups["test"]
    for rows in splits.values():
        assert {r["label"] for r in rows} == {"same", "different"}
        assert all((r["label"] == "same") == (r["kind"] == "paraphrase") for r in rows)
    kinds = Counter(r["kind"] for rows in splits.values() for r in rows if r["label"] != "same")
    assert len([k for k in NEAR_MISS_KINDS if kinds[k] >= 15]) >= 12, kinds
    langs = {r["lang"] for rows in splits.values() for r in rows}
    assert len(langs) >= 6, langs


def test_the_shipped_model_loads_and_names_its_calibration() -> None:
    model = PairModel.load()
    assert 0.5 <= model.cosine <= 1.0 and 0.0 < model.cutoff < 1.0
    data = json.loads(MODEL_PATH.read_text(encoding="utf-8"))
    assert data["names"] == list(NAMES)
    assert data["pairs"]["test"] > 0  # trained with a test split held back
    x = np.zeros(len(NAMES), dtype=np.float32)
    assert 0.0 <= model.probability(x) <= 1.0


def test_a_model_for_other_features_is_refused(tmp_path: Path) -> None:
    data = json.loads(MODEL_PATH.read_text(encoding="utf-8"))
    data["names"] = data["names"][:-1]
    stale = tmp_path / "model.json"
    stale.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="retrain"):
        PairModel.load(stale)


def test_the_forest_walk_matches_a_plain_per_tree_walk() -> None:
    """The vectorised walk over all trees at once gives each tree's own leaf."""
    model = PairModel.load()
    rng = np.random.default_rng(7)
    for _ in range(20):
        x = rng.uniform(0, 1, len(NAMES)).astype(np.float32)
        leaves = []
        for root in model.roots:
            node = int(root)
            while model.feature[node] >= 0:
                go_left = x[model.feature[node]] <= model.threshold[node]
                node = int(model.left[node] if go_left else model.right[node])
            leaves.append(model.value[node])
        assert model.probability(x) == pytest.approx(float(np.mean(leaves)))


@pytest.mark.real
def test_words_come_from_the_same_pass_as_the_sentence(minilm: OnnxEmbedder) -> None:
    (words,) = minilm.words(["Is a tuple smaller than a list in Python?"])
    assert words.names == ("Is", "a", "tuple", "smaller", "than", "a", "list", "in", "Python", "?")
    assert words.vectors.shape == (len(words.names), minilm.dim)
    assert np.allclose(np.linalg.norm(words.vectors, axis=1), 1.0, atol=1e-5)
    alone = minilm.words(["list"])[0].vectors[0]
    in_batch = minilm.words(["list", "a much longer text that pads the batch"])[0].vectors[0]
    assert np.allclose(alone, in_batch, atol=1e-5)


@pytest.mark.real
def test_features_are_symmetric(minilm: OnnxEmbedder) -> None:
    for a, b in [
        ("Does a list use more memory than a tuple in Python?",
         "Does a tuple use more memory than a list in Python?"),
        ("How do I reset my password?", "I forgot my password, how can I change it?"),
        ("Convert 5 km to miles", "how many miles is 5 kilometres"),
    ]:  # fmt: skip
        wa, wb = minilm.words([a, b])
        va, vb = minilm.embed([a, b])
        cos = float(va @ vb)
        assert np.allclose(pair_features(a, b, wa, wb, cos), pair_features(b, a, wb, wa, cos))


@pytest.mark.real
def test_verifier_serves_a_rewording_and_refuses_a_reversal(minilm: OnnxEmbedder) -> None:
    verifier = Verifier(minilm.words, PairModel.load())

    def decide(a: str, b: str) -> str | None:
        va, vb = minilm.embed([a, b])
        return verifier.check(a, b, float(va @ vb))

    rewordings = [
        ("How do I reset my password?", "How can I reset my password?"),
        ("Explain what a hash table is.", "Can you explain what a hash table is?"),
        ("What is the capital of France?", "What's the capital city of France?"),
        ("How do I reverse a list in Python?", "how to reverse a list in python"),
        ("What time zone is Tokyo in?", "Which time zone is Tokyo in?"),
    ]
    served = [pair for pair in rewordings if decide(*pair) is None]
    assert len(served) >= 3, served
    for a, b in [
        ("Does a list use more memory than a tuple in Python?",
         "Does a tuple use more memory than a list in Python?"),
        ("How do I reset my password?", "How do I delete my account?"),
        ("Convert 100°C to Fahrenheit", "Convert 100°F to Celsius"),
    ]:  # fmt: skip
        assert decide(a, b) is not None, (a, b)


def test_rules_alone_when_asked_and_the_word_cache_is_bounded() -> None:
    rules = Verifier()
    assert rules.model is None and rules.rules
    assert rules.check("convert 5 km to miles", "convert 10 km to miles", 0.99) is not None
    assert rules.check("how do I reset my password", "how can I reset my password", 0.99) is None
    fake = FakeEmbedder()
    calls: list[list[str]] = []

    def words_of(texts: list[str]) -> list:  # type: ignore[type-arg]
        calls.append(texts)
        return fake.words(texts)

    verifier = Verifier(words_of, PairModel.load())
    verifier.words(["a b", "c d"])
    verifier.words(["a b", "e f"])
    assert calls == [["a b", "c d"], ["e f"]]  # a text met again costs no second pass
    long = " ".join(f"w{i}" for i in range(250))
    for i in range(500):
        verifier.words([f"{long} {i}"])  # the longest texts the embedder reads
    assert sum(len(w.names) for w in verifier._words.values()) <= 32_768


@pytest.mark.real
def test_the_store_asks_the_verifier_and_counts_its_refusals(
    make_store: object, minilm: OnnxEmbedder
) -> None:
    seen: list[tuple[str, str]] = []

    def verify(stored: str, incoming: str, similarity: float) -> str | None:
        seen.append((stored, incoming))
        return "verifier: test says no" if incoming.startswith("Does a tuple") else None

    store: CacheStore = make_store(minilm.dim, embedder=minilm.name)  # type: ignore[operator]
    store.verify = verify
    stored = "Does a list use more memory than a tuple in Python?"
    store.put_many([entry_for(minilm, chat(stored), "a list does")])
    for question, served in [
        ("Does a tuple use more memory than a list in Python?", False),
        ("Does a list take more memory than a tuple in Python?", True),
    ]:
        probe = entry_for(minilm, chat(question), "")
        assert probe.embedding is not None and probe.question is not None
        hit = store.lookup_semantic(probe.namespace, probe.embedding, probe.question, 0.5)
        assert (hit is not None) is served, question
    assert seen == [(stored, q) for q in (
        "Does a tuple use more memory than a list in Python?",
        "Does a list take more memory than a tuple in Python?",
    )]  # fmt: skip
    assert store.stats()["guard_rejections"] == {"verifier": 1}


@pytest.mark.real
def test_a_question_longer_than_the_window_is_not_read_in_part(minilm: OnnxEmbedder) -> None:
    preamble = " ".join(["Please follow the house style guide for every reply you write."] * 36)
    assert len(preamble.split()) >= 360
    long_a, long_b = (
        f"{preamble} How do I reset my password?",
        f"{preamble} How do I delete my account?",
    )
    assert minilm.fits([long_a, long_b]) == [False, False]
    assert minilm.fits(["How do I reset my password?"]) == [True]
    # what the embedder would see of the two: the same first 256 tokens
    va, vb = minilm.embed([long_a, long_b])
    assert float(va @ vb) > 0.999
