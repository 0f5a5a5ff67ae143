"""CacheStore on real SQLite + sqlite-vec with the fake embedder: layers, policy, durability.

The fake embedder makes vectors from words, so these tests control which questions are neighbours;
tests/test_cache_semantic_real.py repeats the important ones with the real model.
"""

from __future__ import annotations

import json
import os
import stat
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgeinfer.cache.connection import connect, sqlite_driver
from edgeinfer.cache.entry import CacheEntry
from edgeinfer.cache.key import exact_key
from edgeinfer.cache.rows import entry_bytes
from edgeinfer.cache.store import CacheStore, default_path
from edgeinfer.embed.fake import FakeEmbedder
from edgeinfer.errors import CacheError
from edgeinfer.paths import resolve
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


def _store_answer(
    store: CacheStore, messages: list[dict[str, Any]], answer: str, **kw: Any
) -> None:
    store.put(entry_for(EMB, messages, answer, **kw))
    store.flush(10)


def _ask(
    store: CacheStore, messages: list[dict[str, Any]], threshold: float = 0.8, **kw: Any
) -> Any:
    probe = entry_for(EMB, messages, "", **kw)
    assert probe.question is not None and probe.embedding is not None
    return store.lookup_semantic(probe.namespace, probe.embedding, probe.question, threshold)


def test_exact_hit_carries_what_the_generation_cost(make_store: Make) -> None:
    store = make_store(64)
    messages = chat("What is the capital of France?")
    _store_answer(store, messages, "Paris", generation_s=2.5)
    hit = store.lookup_exact(exact_key("tiny", DIGEST, messages, {"temperature": 0}))
    assert hit is not None and hit.layer == "exact" and hit.similarity == 1.0
    assert answer_of(hit) == "Paris"
    assert (hit.prompt_tokens, hit.completion_tokens, hit.generation_s) == (20, 30, 2.5)
    assert store.lookup_exact(exact_key("tiny", DIGEST, messages, {"temperature": 0.5})) is None


def test_semantic_hit_and_guard_rejection(make_store: Make) -> None:
    store = make_store(64)
    _store_answer(store, chat("How do I reset my password on Gmail?"), "Go to settings")
    hit = _ask(store, chat("how do I reset my password on gmail"))
    assert hit is not None and hit.layer == "semantic" and hit.similarity > 0.99
    assert answer_of(hit) == "Go to settings"
    assert _ask(store, chat("How do I reset my password on Outlook?"), threshold=0.5) is None
    assert store.stats()["guard_rejections"] == {"entity": 1}


def test_rejections_are_reported_on_a_later_hit(make_store: Make) -> None:
    store = make_store(64)
    _store_answer(store, chat("Is 7 a prime number"), "yes")
    _store_answer(store, chat("Is 8 a prime number ?"), "no")
    hit = _ask(store, chat("is 8 a prime number"), threshold=0.5)
    assert hit is not None and answer_of(hit) == "no"
    assert all(r.reason.startswith("number") for r in hit.guard_rejections)


def test_follow_ups_never_cross_conversations(make_store: Make) -> None:
    store = make_store(64)
    _store_answer(store, chat("Tell me about Python.", "Python is a language.", "Show an example"),
                  "print('hi')")  # fmt: skip
    other = chat("Tell me about Rust.", "Rust is a language.", "Show an example")
    assert _ask(store, other) is None
    assert _ask(store, chat("Show an example")) is None  # no earlier turns: another namespace
    same = chat("Tell me about Python.", "Python is a language.", "show an example")
    assert answer_of(_ask(store, same)) == "print('hi')"


def test_namespace_separates_system_prompt_sampling_and_model(make_store: Make) -> None:
    store = make_store(64)
    _store_answer(store, chat("Explain TCP", system="Be brief."), "short")
    assert _ask(store, chat("explain TCP", system="Be detailed.")) is None
    assert (
        _ask(store, chat("explain TCP", system="Be brief."), sampling={"temperature": 0.3}) is None
    )
    assert _ask(store, chat("explain TCP", system="Be brief."), model="small") is None
    assert _ask(store, chat("explain TCP", system="Be brief.")) is not None


def test_a_changed_model_file_invalidates_its_entries(make_store: Make) -> None:
    store = make_store(64)
    messages = chat("What is a monad?")
    _store_answer(store, messages, "old answer", digest="1" * 64)
    _store_answer(store, chat("What is a functor?"), "kept", model="small", digest="1" * 64)
    assert store.lookup_exact(exact_key("tiny", "2" * 64, messages, {"temperature": 0})) is None
    assert _ask(store, messages, digest="2" * 64) is None
    assert store.purge_model("tiny", keep_digest="2" * 64) == 1
    assert store.stats()["models"] == {"small": 1}


def test_ttl_hides_then_purges_old_entries(make_store: Make) -> None:
    clock = Clock()
    store = make_store(64, ttl_s=100, clock=clock, purge_every_s=0.0)
    messages = chat("What is entropy?")
    _store_answer(store, messages, "disorder")
    key = exact_key("tiny", DIGEST, messages, {"temperature": 0})
    clock.now += 99
    assert store.lookup_exact(key) is not None and _ask(store, messages) is not None
    clock.now += 2
    assert store.lookup_exact(key) is None and _ask(store, messages) is None
    _store_answer(store, chat("What is enthalpy?"), "heat")  # a write runs the purge
    assert store.stats()["entries"] == 1 and store.stats()["expired"] == 1


def test_byte_cap_evicts_least_recently_hit_first(make_store: Make) -> None:
    clock = Clock()
    one = entry_for(EMB, chat("question 0"), "x" * 1000)
    size = entry_bytes(one, json.dumps(one.response, separators=(",", ":")))
    store = make_store(64, clock=clock, max_bytes=4 * size + size // 2)
    for i in range(4):
        clock.now += 1
        _store_answer(store, chat(f"question {i}"), "x" * 1000)
    assert store.stats()["entries"] == 4 and store.stats()["bytes"] == 4 * size
    clock.now += 1
    assert store.lookup_exact(one.exact_key) is not None  # question 0 is now the most recent
    store.flush(10)
    clock.now += 1
    _store_answer(store, chat("question 4"), "x" * 1000)
    stats = store.stats()
    assert stats["entries"] == 4 and stats["evicted"] == 1
    assert store.lookup_exact(one.exact_key) is not None
    assert store.lookup_exact(entry_for(EMB, chat("question 1"), "").exact_key) is None


def test_a_full_queue_drops_and_counts(make_store: Make) -> None:
    store = make_store(64, queue_size=1)
    gate = threading.Event()
    store._writer.call(lambda conn: None, 10)  # the writer is idle
    blocked = threading.Thread(target=lambda: store._writer.call(lambda c: gate.wait(10), 10))
    blocked.start()
    try:
        for i in range(20):
            store.put(entry_for(EMB, chat(f"q{i}"), "a"))
        assert store.stats()["dropped_writes"] >= 18
    finally:
        gate.set()
        blocked.join()
    store.flush(10)


def test_export_import_round_trip(make_store: Make, tmp_path: Path) -> None:
    store = make_store(64)
    for i in range(5):
        _store_answer(store, chat(f"How do I bake bread number {i}?"), f"recipe {i}")
    out = tmp_path / "cache.jsonl"
    assert store.export(out) == 5
    head = json.loads(out.read_text().splitlines()[0])
    assert head == {"format": "edgeinfer-cache", "version": 1, "dim": 64, "embedder": ""}
    assert store.clear() == 5 and store.stats()["entries"] == 0
    assert store.import_(out) == 5 and store.import_(out) == 0
    assert answer_of(_ask(store, chat("how do I bake bread number 3"))) == "recipe 3"


def test_export_writes_only_over_a_regular_file_or_a_new_name(
    make_store: Make, tmp_path: Path
) -> None:
    """The atomic rename replaced a symlink, a FIFO or a device (/dev/full, as root) with a
    plain file; a missing folder or a folder as the target was a traceback."""
    store = make_store(64)
    _store_answer(store, chat("a question"), "an answer")
    target = tmp_path / "target.jsonl"
    target.write_text("kept")
    link = tmp_path / "link.jsonl"
    link.symlink_to(target)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for path in (link, fifo, tmp_path):
        with pytest.raises(CacheError, match="exists and is not a regular file"):
            store.export(path)
    assert (
        link.is_symlink() and stat.S_ISFIFO(fifo.lstat().st_mode) and target.read_text() == "kept"
    )
    with pytest.raises(CacheError, match="is not a folder"):
        store.export(tmp_path / "missing" / "out.jsonl")
    assert store.export(target) == 1  # a regular file is replaced, as before


def test_a_damaged_line_is_skipped_and_the_rest_imported(make_store: Make, tmp_path: Path) -> None:
    store = make_store(64)
    _store_answer(store, chat("a question"), "an answer")
    out = tmp_path / "cache.jsonl"
    store.export(out)
    store.clear()
    out.write_text(out.read_text() + "{not json\n")
    report = store.import_report(out)
    assert report.added == 1 and report.skipped.total() == 1
    assert "skipped 1" in report.summary()
    assert store.stats()["entries"] == 1


def test_migrations_are_recorded_and_reopening_keeps_entries(
    make_store: Make, tmp_path: Path
) -> None:
    path = tmp_path / "c.sqlite3"
    store = make_store(64, path=path)
    _store_answer(store, chat("Why is the sea salty?"), "minerals")
    store.close()
    again = make_store(64, path=path)
    assert answer_of(_ask(again, chat("why is the sea salty"))) == "minerals"
    conn = connect(path)
    names = [r[0] for r in conn.execute("SELECT name FROM schema_migrations ORDER BY version")]
    assert names == ["0001_entries", "0002_vectors", "0003_tally"]
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


def test_another_embedder_drops_vectors_but_keeps_exact_entries(
    make_store: Make, tmp_path: Path
) -> None:
    path = tmp_path / "c.sqlite3"
    store = make_store(64, path=path, embedder="a")
    messages = chat("What is a qubit?")
    _store_answer(store, messages, "quantum bit")
    store.close()
    other = make_store(32, path=path, embedder="b")
    vector = FakeEmbedder(32).embed(["What is a qubit?"])[0]
    ns = entry_for(EMB, messages, "").namespace
    assert other.lookup_semantic(ns, vector, "What is a qubit?", 0.5) is None
    assert other.lookup_exact(entry_for(EMB, messages, "").exact_key) is not None


def test_wrong_vector_shapes_are_refused(make_store: Make) -> None:
    store = make_store(64)
    with pytest.raises(CacheError):
        store.lookup_semantic("ns", np.zeros(32, dtype=np.float32), "q", 0.9)
    with pytest.raises(CacheError):
        store.put(entry_for(FakeEmbedder(32), chat("q"), "a"))


def test_reads_run_while_the_writer_commits(make_store: Make) -> None:
    store = make_store(64)
    _store_answer(store, chat("seed question"), "seed")
    key = entry_for(EMB, chat("seed question"), "").exact_key
    errors: list[BaseException] = []

    def read() -> None:
        try:
            for _ in range(200):
                assert store.lookup_exact(key) is not None
        except BaseException as exc:  # reported below
            errors.append(exc)

    readers = [threading.Thread(target=read) for _ in range(3)]
    for t in readers:
        t.start()
    for i in range(300):
        store.put(entry_for(EMB, chat(f"write {i}"), "a"))
    for t in readers:
        t.join()
    store.flush(30)
    assert not errors
    assert store.stats()["entries"] == 301


def test_driver_and_default_path() -> None:
    assert hasattr(sqlite_driver().connect(":memory:"), "enable_load_extension")
    assert default_path(resolve()).name == "cache.sqlite3"
    assert default_path(resolve()).parent == resolve().cache_dir


def test_lookups_need_a_started_store(tmp_path: Path) -> None:
    store = CacheStore(tmp_path / "c.db", dim=64, max_bytes=1000, ttl_s=None)
    with pytest.raises(CacheError, match="not started"):
        store.lookup_exact("k")


def test_a_damaged_file_is_set_aside_and_the_cache_starts_empty(
    make_store: Make, tmp_path: Path
) -> None:
    path = tmp_path / "c.sqlite3"
    path.write_bytes(b"this is not a database " * 200)
    store = make_store(64, path=path, clock=Clock(1234.0))
    assert store.stats()["entries"] == 0
    assert (tmp_path / "c.sqlite3.damaged-1234").read_bytes().startswith(b"this is not")
    _store_answer(store, chat("still works?"), "yes")
    assert store.stats()["entries"] == 1


def test_a_response_that_is_not_json_fails_in_the_caller(make_store: Make) -> None:
    store = make_store(64)
    bad = entry_for(EMB, chat("q"), "a")
    with pytest.raises(CacheError, match="not JSON"):
        store.put(CacheEntry(**{**bad.__dict__, "response": {"x": object()}}))
    _store_answer(store, chat("the writer is still alive"), "yes")
    assert store.stats()["entries"] == 1
