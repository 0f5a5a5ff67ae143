"""What the daemon's cache serves and reports stays true to its database, on real SQLite.

The CLI's ``cache clear|import`` open the same file with their own connections and writer (a
second :class:`CacheStore` here, a real ``edgeinfer`` process in the last test): the daemon must
serve nothing a clear removed, nothing older than the TTL, and report the figures the database
holds, at once. Read-your-writes covers only puts its writer has not committed yet.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from edgeinfer.bootstrap import open_cache_store
from edgeinfer.cache.connection import connect
from edgeinfer.cache.entry import CacheEntry, CacheHit
from edgeinfer.cache.layer import CacheRequest, ResponseCache
from edgeinfer.cache.rows import clear_entries, entry_bytes, serialise
from edgeinfer.cache.store import CacheStore
from edgeinfer.cache.tally import count_entries, read_tally
from edgeinfer.config.schema import CacheSettings
from edgeinfer.core.embedding import MINILM_DIM, MINILM_VECTORS
from edgeinfer.embed.fake import FakeEmbedder
from edgeinfer.paths import resolve
from tests.cache_fixtures import (
    DIGEST,
    Clock,
    chat,
    entry_for,
    make_store_fixture,  # noqa: F401
)

Make = Callable[..., CacheStore]
EMB = FakeEmbedder(64)
ANSWER = {"content": "Lima", "finish_reason": "stop"}


def _request(cache: ResponseCache) -> CacheRequest:
    return cache.request(
        model="tiny",
        digest=DIGEST,
        messages=chat("What is the capital of Peru?"),
        fields={"temperature": 0},
        temperature=0.0,
        seed=None,
        mode="exact",
        threshold=None,
    )


def _lookup(cache: ResponseCache) -> CacheHit | None:
    return asyncio.run(cache.lookup(_request(cache)))


def _bytes(entries: list[CacheEntry]) -> int:
    return sum(entry_bytes(e, serialise(e)) for e in entries)


def test_a_clear_from_another_process_leaves_no_answer_behind(make_store: Make) -> None:
    daemon = make_store(64)
    cache = ResponseCache(daemon, EMB, threshold=0.95)
    cache.put(_request(cache), ANSWER, (10, 2), 0.5)
    assert _lookup(cache) is not None  # read-your-writes, committed or not
    daemon.flush(10)
    cli = make_store(64)  # the same file, as `edgeinfer cache clear` opens it
    assert cli.clear() == 1
    assert _lookup(cache) is None


def test_an_answer_older_than_the_ttl_is_never_served(make_store: Make) -> None:
    clock = Clock()
    store = make_store(64, ttl_s=60, clock=clock, purge_every_s=3600)
    cache = ResponseCache(store, EMB, threshold=0.95)
    cache.put(_request(cache), ANSWER, (10, 2), 0.5)
    store.flush(10)
    assert _lookup(cache) is not None
    clock.now += 61
    assert _lookup(cache) is None


def test_read_your_writes_covers_only_puts_not_yet_committed(make_store: Make) -> None:
    clock = Clock()
    store = make_store(64, ttl_s=60, clock=clock, purge_every_s=3600)
    cache = ResponseCache(store, EMB, threshold=0.95)
    other = connect(store.path)
    other.execute("BEGIN IMMEDIATE")  # another process holds the write lock: the put waits
    try:
        cache.put(_request(cache), ANSWER, (10, 2), 0.5)
        hit = _lookup(cache)
        assert hit is not None and hit.response == ANSWER and hit.completion_tokens == 2
        clock.now += 61
        assert _lookup(cache) is None  # queued, but older than the TTL
        clock.now -= 61
        assert clear_entries(other) == 0  # what `edgeinfer cache clear` commits
    finally:
        other.execute("COMMIT")
        other.close()
    assert _lookup(cache) is None  # queued before the clear: not served after it
    store.flush(10)
    assert _lookup(cache) is None  # nor committed after it
    assert store.stats()["entries"] == 0 and store.stats()["dropped_writes"] == 1
    cache.put(_request(cache), ANSWER, (10, 2), 0.5)  # a put after the clear is kept
    store.flush(10)
    assert _lookup(cache) is not None and store.stats()["entries"] == 1


def test_stats_are_exact_right_after_another_process_writes(make_store: Make) -> None:
    daemon = make_store(64)
    mine = entry_for(EMB, chat("why is the sea salty"), "minerals")
    daemon.put(mine)
    daemon.flush(10)
    cli = make_store(64)  # the same file, as `edgeinfer cache import` opens it
    theirs = [entry_for(EMB, chat(f"question {i}"), f"answer {i}", model="small") for i in range(3)]
    assert cli.put_many(theirs) == 3
    stats = daemon.stats()
    assert (stats["entries"], stats["semantic_entries"]) == (4, 4)
    assert stats["bytes"] == _bytes([mine, *theirs])
    assert stats["models"] == {"small": 3, "tiny": 1}
    assert cli.clear() == 4
    stats = daemon.stats()
    assert (stats["entries"], stats["bytes"], stats["models"]) == (0, 0, {})


def test_the_kept_figures_always_equal_a_scan(make_store: Make) -> None:
    """Every path that adds or removes entries: puts, duplicates, import, the byte cap, TTL,
    a changed model file, clear."""
    clock = Clock()
    store = make_store(64, max_bytes=3000, ttl_s=60, clock=clock, purge_every_s=0)
    conn = connect(store.path)

    def check() -> None:
        store.flush(10)
        assert read_tally(conn) == count_entries(conn)

    for i in range(12):
        store.put(entry_for(EMB, chat(f"question {i}"), f"answer {i}" * (i + 1), model=f"m{i % 3}"))
    store.put(entry_for(EMB, chat("question 0"), "a second answer", model="m0"))
    check()
    assert 0 < read_tally(conn).bytes <= 3000 and store.stats()["evicted"] > 0
    store.put_many([entry_for(EMB, chat("imported"), "yes", digest="e" * 64, model="m0")])
    check()
    assert store.purge_model("m0", DIGEST) == 1
    check()
    clock.now += 61
    store.put(entry_for(EMB, chat("fresh"), "new"))
    check()
    assert read_tally(conn).entries == 1 and store.stats()["expired"] > 0
    store.clear()
    check()
    conn.close()


def test_an_older_database_gets_its_figures_counted(make_store: Make, tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    store = make_store(64, path=path)
    entries = [entry_for(EMB, chat(f"question {i}"), f"answer {i}") for i in range(3)]
    store.put_many(entries)
    store.close()
    conn = connect(path)  # back to the schema of 0002_vectors, rows kept
    for statement in (
        "DROP TRIGGER tally_insert",
        "DROP TRIGGER tally_delete",
        "DROP TRIGGER tally_update",
        "DROP TABLE tally",
        "DELETE FROM schema_migrations WHERE name = '0003_tally'",
    ):
        conn.execute(statement)
    conn.close()
    stats = make_store(64, path=path).stats()
    assert (stats["entries"], stats["bytes"], stats["models"]) == (3, _bytes(entries), {"tiny": 3})


def _cli(*args: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    out = subprocess.run(
        [sys.executable, "-m", "edgeinfer", "cache", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_the_cli_beside_a_running_daemon(tmp_path: Path) -> None:
    """Real ``edgeinfer cache import`` and ``clear`` processes beside the daemon's store."""
    daemon = open_cache_store(resolve(), CacheSettings())  # the daemon's file and settings
    try:
        cache = ResponseCache(daemon, FakeEmbedder(MINILM_DIM), threshold=0.95)
        cache.put(_request(cache), ANSWER, (10, 2), 0.5)
        daemon.flush(10)
        source = CacheStore(tmp_path / "other.sqlite3", dim=MINILM_DIM, max_bytes=1 << 30,
                            ttl_s=None, embedder=MINILM_VECTORS)  # fmt: skip
        source.start()
        emb = FakeEmbedder(MINILM_DIM)
        entries = [entry_for(emb, chat(f"question {i}"), f"answer {i}") for i in range(3)]
        source.put_many(entries)
        source.export(tmp_path / "export.jsonl")
        source.close()
        assert "imported 3 entries" in _cli("import", str(tmp_path / "export.jsonl"))
        stats = daemon.stats()
        assert stats["entries"] == 4 and stats["models"] == {"tiny": 4}
        scan = connect(daemon.path)
        assert stats["bytes"] == count_entries(scan).bytes > _bytes(entries)
        scan.close()
        assert _lookup(cache) is not None
        assert "removed 4 entries" in _cli("clear")
        assert _lookup(cache) is None
        assert daemon.stats()["entries"] == 0 and daemon.stats()["bytes"] == 0
    finally:
        daemon.close()
