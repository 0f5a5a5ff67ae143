"""``cache import`` distrusts its file: real SQLite + sqlite-vec, the fake embedder.

An export file can come from anywhere; what it says about vectors, keys, times and sizes is
checked and normalised, and a bad line is skipped and counted instead of poisoning the cache.
"""

from __future__ import annotations

import base64
import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgeinfer.cache import transfer
from edgeinfer.cache.connection import connect
from edgeinfer.cache.key import exact_key
from edgeinfer.cache.store import CacheStore
from edgeinfer.embed.fake import FakeEmbedder
from edgeinfer.errors import CacheError
from tests.cache_fixtures import (
    DIGEST,
    Clock,
    answer_of,
    chat,
    entry_for,
    make_store_fixture,  # noqa: F401
)

Make = Callable[..., CacheStore]
EMB = FakeEmbedder(64)
BREAD = "How do I bake sourdough bread at home?"
ROGUE = "How do I bake sourdough bread well?"


def _records(store: CacheStore, tmp_path: Path, *questions: str) -> list[dict[str, Any]]:
    """Export lines for ``questions`` as the store writes them; the store is left empty."""
    for question in questions:
        store.put(entry_for(EMB, chat(question), f"answer to {question}"))
    store.flush(10)
    out = tmp_path / "export.jsonl"
    store.export(out)
    store.clear()
    return [json.loads(line) for line in out.read_text().splitlines()[1:]]


def _write(path: Path, lines: list[dict[str, Any] | str]) -> Path:
    head = json.dumps(transfer.header(64, ""))
    body = [line if isinstance(line, str) else json.dumps(line) for line in lines]
    path.write_text("\n".join([head, *body]) + "\n")
    return path


def _vector(values: np.ndarray[Any, Any]) -> str:
    return base64.b64encode(np.asarray(values, dtype=np.float32).tobytes()).decode()


def _stored_norms(store: CacheStore) -> list[float]:
    conn = connect(store.path)
    try:
        blobs = [r[0] for r in conn.execute("SELECT embedding FROM entry_vectors")]
    finally:
        conn.close()
    return [float(np.linalg.norm(np.frombuffer(b, dtype=np.float32))) for b in blobs]


def test_a_scaled_vector_is_normalised_and_cannot_outrank_a_true_match(
    make_store: Make, tmp_path: Path
) -> None:
    store = make_store(64)
    legit, rogue = _records(store, tmp_path, BREAD, ROGUE)
    scaled = np.frombuffer(base64.b64decode(rogue["embedding"]), dtype=np.float32) * 1000
    rogue["embedding"] = _vector(scaled)
    rogue["response"] = {"content": "poisoned"}
    assert store.import_(_write(tmp_path / "in.jsonl", [legit, rogue])) == 2
    assert _stored_norms(store) == pytest.approx([1.0, 1.0], abs=1e-5)
    probe = entry_for(EMB, chat(BREAD), "")
    assert probe.embedding is not None and probe.question is not None
    hit = store.lookup_semantic(probe.namespace, probe.embedding, probe.question, 0.5)
    assert hit is not None and answer_of(hit) == f"answer to {BREAD}"
    assert hit.similarity <= 1.0 + 1e-5


def test_vectors_of_another_embedder_are_dropped_and_the_report_says_so(
    make_store: Make, tmp_path: Path
) -> None:
    """An export made before the embedder changed: its entries still answer exact repeats, its
    vectors would be compared with another network's, so they are dropped, and said to be."""
    store = make_store(64)
    [record] = _records(store, tmp_path, BREAD)
    path = tmp_path / "old.jsonl"
    head = json.dumps(transfer.header(64, "all-MiniLM-L6-v2-int8"))
    path.write_text(f"{head}\n{json.dumps(record)}\n")
    report = store.import_report(path)
    assert report.added == 1 and report.foreign_vectors == "all-MiniLM-L6-v2-int8/64"
    assert "vectors were made by all-MiniLM-L6-v2-int8/64" in report.summary()
    assert _stored_norms(store) == []
    key = exact_key("tiny", DIGEST, chat(BREAD), {"temperature": 0})
    assert store.lookup_exact(key) is not None
    same = _write(tmp_path / "same.jsonl", [record])
    assert store.import_report(same).foreign_vectors is None


def test_future_timestamps_are_clamped_to_now(make_store: Make, tmp_path: Path) -> None:
    clock = Clock()
    store = make_store(64, clock=clock, ttl_s=3600)
    [record] = _records(store, tmp_path, BREAD)
    ten_years = 10 * 365 * 86400
    record.update(created=clock.now + ten_years, last_hit=clock.now + ten_years)
    assert store.import_(_write(tmp_path / "in.jsonl", [record])) == 1
    key = exact_key("tiny", DIGEST, chat(BREAD), {"temperature": 0})
    assert store.lookup_exact(key) is not None
    clock.now += 2 * 3600  # past the TTL of an entry made at import time
    assert store.lookup_exact(key) is None


def test_bad_lines_are_skipped_and_counted(
    make_store: Make, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(transfer, "MAX_LINE_BYTES", 64 << 10)
    clock = Clock()
    store = make_store(64, clock=clock, ttl_s=3600)
    good = _records(store, tmp_path, BREAD, ROGUE, "Why is the sky blue?")
    base = good[2]

    def bad(**changes: Any) -> dict[str, Any]:
        record = {**base, **changes}
        return {k: v for k, v in record.items() if v is not ...}

    lines: list[dict[str, Any] | str] = [
        good[0],
        "{not json",
        "[1, 2]",
        bad(exact_key="short"),
        bad(namespace="Z" * 64),
        bad(model_digest="x" * 5000),
        bad(embedding=_vector(np.ones(32))),  # 32 values, the cache holds 64
        bad(embedding=_vector(np.full(64, np.nan))),
        bad(embedding=_vector(np.zeros(64))),
        bad(embedding="%%% not base64"),
        bad(response=...),
        bad(response="a string"),
        bad(prompt_tokens=-5),
        bad(completion_tokens=True),
        bad(generation_s=float("inf")),
        bad(created="yesterday"),
        bad(created=clock.now - 7200),  # older than the TTL
        bad(question="q" * (70 << 10)),  # a line over the bound
        good[1],
    ]
    report = store.import_report(_write(tmp_path / "in.jsonl", lines))
    assert report.added == 2
    assert report.skipped == Counter(
        {
            "invalid JSON": 1,
            "not a JSON object": 1,
            "bad key": 2,
            "bad field": 6,
            "wrong vector length": 1,
            "vector not finite": 1,
            "zero vector": 1,
            "bad vector": 1,
            "bad timestamp": 1,
            "expired": 1,
            "line too long": 1,
        }
    )
    assert report.summary().startswith("imported 2 entries, skipped 17: ")
    assert "2 bad key" in report.summary() and "1 zero vector" in report.summary()
    assert store.stats()["entries"] == 2
    again = store.import_report(tmp_path / "in.jsonl")
    assert again.added == 0 and again.duplicates == 2 and sum(again.skipped.values()) == 17


def test_a_file_that_is_not_an_export_is_refused(make_store: Make, tmp_path: Path) -> None:
    store = make_store(64)
    path = tmp_path / "in.jsonl"
    path.write_text('{"format": "something else"}\n')
    with pytest.raises(CacheError, match="not an edgeinfer cache export"):
        store.import_(path)
