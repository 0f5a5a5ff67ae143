"""The semantic layer end to end with the real MiniLM ONNX model and real sqlite-vec.

Questions come from the dev set (tests/data/semantic_pairs.jsonl): the first question of a pair is
stored with its answer, the second asks. Threshold 0.80 is used where a paraphrase must hit (the
default 0.95 admits few real rewordings; see scripts/bench_cache.py).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from typing import Any

import pytest

from edgeinfer.cache.key import exact_key
from edgeinfer.cache.store import CacheStore
from edgeinfer.embed.onnx import OnnxEmbedder
from tests.cache_fixtures import (  # noqa: F401
    Clock,
    answer_of,
    chat,
    entry_for,
    load_pairs,
    make_store_fixture,
    minilm_fixture,
)

pytestmark = pytest.mark.real
Make = Callable[..., CacheStore]
THRESHOLD = 0.80


def _fill(store: CacheStore, embedder: OnnxEmbedder, questions: list[str], **kw: Any) -> None:
    store.put_many([entry_for(embedder, chat(q), f"answer to: {q}", **kw) for q in questions])


def _ask(store: CacheStore, embedder: OnnxEmbedder, messages: list[dict[str, Any]],
         threshold: float = THRESHOLD, **kw: Any) -> Any:  # fmt: skip
    probe = entry_for(embedder, messages, "", **kw)
    assert probe.question is not None and probe.embedding is not None
    return store.lookup_semantic(probe.namespace, probe.embedding, probe.question, threshold)


def test_paraphrases_hit_with_their_own_answer(make_store: Make, minilm: OnnxEmbedder) -> None:
    pairs = [p for p in load_pairs() if p["kind"] == "paraphrase"]
    store = make_store(minilm.dim, embedder=minilm.name)
    _fill(store, minilm, [p["a"] for p in pairs])
    hits = 0
    for pair in pairs:
        hit = _ask(store, minilm, chat(pair["b"]))
        if hit is not None:
            hits += 1
            assert answer_of(hit) == f"answer to: {pair['a']}", pair
            assert hit.layer == "semantic" and THRESHOLD <= hit.similarity <= 1.0001
    assert hits / len(pairs) >= 0.7, hits


def test_near_misses_of_every_kind_are_refused(make_store: Make, minilm: OnnxEmbedder) -> None:
    """Stored together (one namespace), so each question competes with all the others."""
    near = [p for p in load_pairs() if p["kind"] not in ("paraphrase", "unrelated")]
    store = make_store(minilm.dim, embedder=minilm.name)
    _fill(store, minilm, sorted({p["a"] for p in near}))
    refused_by_guard: dict[str, int] = defaultdict(int)
    wrong: list[tuple[str, str]] = []
    seen = 0
    for pair in near:
        hit = _ask(store, minilm, chat(pair["b"]))
        if hit is not None and hit.question != pair["b"]:
            wrong.append((pair["b"], str(hit.question)))
        now = sum(store.stats()["guard_rejections"].values())
        refused_by_guard[pair["kind"]] += now > seen
        seen = now
    assert len(wrong) <= len(near) // 100, wrong  # at most 1% served with another's answer
    kinds = {"number", "negation", "entity", "direction", "time", "comparison", "scope", "language"}
    assert {k for k, n in refused_by_guard.items() if n} == kinds, dict(refused_by_guard)


def test_follow_ups_are_answered_only_inside_their_conversation(
    make_store: Make, minilm: OnnxEmbedder
) -> None:
    store = make_store(minilm.dim, embedder=minilm.name)
    eiffel = chat("Tell me about the Eiffel Tower.", "It is a tower in Paris.", "How tall is it?")
    liberty = chat("Tell me about the Statue of Liberty.", "It is a statue in New York.",
                   "How tall is it?")  # fmt: skip
    store.put_many([entry_for(minilm, eiffel, "330 m")])
    assert _ask(store, minilm, liberty, threshold=0.5) is None
    assert _ask(store, minilm, chat("How tall is it?"), threshold=0.5) is None
    assert store.lookup_exact(entry_for(minilm, liberty, "").exact_key) is None
    reworded = eiffel[:-1] + [{"role": "user", "content": "how tall is it"}]
    hit = _ask(store, minilm, reworded)
    assert hit is not None and answer_of(hit) == "330 m"


def test_a_changed_model_digest_invalidates_entries(make_store: Make, minilm: OnnxEmbedder) -> None:
    store = make_store(minilm.dim, embedder=minilm.name)
    question = "What is the boiling point of water at sea level?"
    _fill(store, minilm, [question], digest="1" * 64)
    assert _ask(store, minilm, chat(question), digest="1" * 64) is not None
    assert _ask(store, minilm, chat(question), digest="2" * 64) is None
    assert (
        store.lookup_exact(exact_key("tiny", "2" * 64, chat(question), {"temperature": 0})) is None
    )
    assert store.purge_model("tiny", keep_digest="2" * 64) == 1
    assert _ask(store, minilm, chat(question), digest="1" * 64) is None


def test_ttl_and_eviction_with_real_vectors(make_store: Make, minilm: OnnxEmbedder) -> None:
    clock = Clock()
    store = make_store(minilm.dim, embedder=minilm.name, ttl_s=60, clock=clock, purge_every_s=0.0)
    _fill(store, minilm, ["How do I make a cup of green tea?"])
    assert _ask(store, minilm, chat("What is the proper way to brew green tea?")) is not None
    clock.now += 61
    assert _ask(store, minilm, chat("What is the proper way to brew green tea?")) is None
    one = entry_for(minilm, chat("How do I make a cup of green tea?"), "x")
    capped = make_store(minilm.dim, path=store.path.with_name("capped.sqlite3"), clock=clock,
                        max_bytes=3 * (len(one.exact_key) * 2 + 384 * 5 + 400))  # fmt: skip
    _fill(capped, minilm, [f"How do I cook recipe number {i}?" for i in range(6)])
    stats = capped.stats()
    assert stats["entries"] < 6 and stats["evicted"] >= 3 and stats["bytes"] <= capped.max_bytes
    assert stats["entries"] == stats["semantic_entries"]
