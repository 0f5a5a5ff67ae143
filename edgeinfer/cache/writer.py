"""The cache's single writer: one thread owns the only writing connection.

SQLite allows one writer at a time; funnelling every write through one thread (as datasette and
sqlite-utils do) means no ``database is locked`` retries and lets writes be batched: the thread
drains whatever is queued into one transaction. The queue is bounded: a put that finds it full is
dropped and counted (a cache write is never worth blocking a request for). Hit bookkeeping
(``touch``) rides the same queue. Calls (clear, import, purge) run in their own transaction and
hand their result back through a future; barriers let tests and shutdown wait for what was queued
before them to be committed.

Eviction runs on this thread after each batch: expired entries (TTL) every ``purge_every_s``,
then least-recently-hit entries until the byte total is under the cap.

The thread also keeps the table's figures (entries, bytes, entries per model: a :class:`Tally`)
as it inserts and deletes, so ``/stats`` and its live feed read them without scanning the table.
It counts afresh only on opening, after a call or a failed batch, and when another connection
(``edgeinfer cache clear`` beside the daemon) committed, which it checks at least every
:data:`RESYNC_S` seconds with SQLite's ``data_version`` (it needs no table read).
"""

from __future__ import annotations

import hashlib
import json
import logging
import queue
import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from edgeinfer.cache.entry import CacheEntry
from edgeinfer.cache.tally import Tally, count_entries
from edgeinfer.errors import CacheError

log = logging.getLogger(__name__)
T = TypeVar("T")
ENTRY_OVERHEAD = 96
"""Bytes counted per entry on top of its text and vector (row and index overhead, roughly)."""
RESYNC_S = 5.0
"""Longest an idle writer waits before it looks for commits by another connection."""


@dataclass(frozen=True)
class _Put:
    entry: CacheEntry
    response: str  # serialised by the caller, so a bad body fails there, not on this thread


@dataclass(frozen=True)
class _Touch:
    entry_id: int
    when: float


@dataclass(frozen=True)
class _Call:
    fn: Callable[[sqlite3.Connection], Any]
    future: Future[Any]


@dataclass(frozen=True)
class _Barrier:
    done: threading.Event


class _Stop:
    pass


_Op = _Put | _Touch | _Call | _Barrier | _Stop


def namespace_id(namespace: str) -> int:
    """The namespace as a signed 64-bit integer for the vec0 metadata column.

    A collision would only put two namespaces' vectors in one KNN pass; lookups still check the
    namespace text of every candidate.
    """
    return int.from_bytes(hashlib.sha256(namespace.encode()).digest()[:8], "big", signed=True)


def serialise(entry: CacheEntry) -> str:
    """The response body as stored; :class:`CacheError` when it is not JSON."""
    try:
        return json.dumps(entry.response, separators=(",", ":"), ensure_ascii=False)
    except (TypeError, ValueError) as exc:
        raise CacheError(f"a cache entry's response is not JSON: {exc}") from exc


def entry_bytes(entry: CacheEntry, response: str) -> int:
    """What an entry counts against the byte cap."""
    size = len(response.encode()) + len(entry.exact_key) + len(entry.namespace) + ENTRY_OVERHEAD
    size += len((entry.question or "").encode())
    if entry.embedding is not None:
        size += entry.embedding.size * 4 + entry.embedding.size // 8
    return size


class Writer:
    """Owns the writing connection and its thread (see the module docstring)."""

    def __init__(
        self,
        connect: Callable[[], sqlite3.Connection],
        *,
        max_bytes: int,
        ttl_s: float | None,
        clock: Callable[[], float],
        errors: tuple[type[BaseException], ...],
        queue_size: int = 1024,
        purge_every_s: float = 60.0,
    ) -> None:
        self._connect = connect
        self._max_bytes = max_bytes
        self._ttl_s = ttl_s
        self._clock = clock
        self._errors = errors
        self._purge_every_s = purge_every_s
        self._queue: queue.Queue[_Op] = queue.Queue(maxsize=queue_size)
        self._thread: threading.Thread | None = None
        self._tally = Tally()  # written on the writer thread, read by stats (under the lock)
        self._data_version = 0
        self._last_purge = float("-inf")
        self._lock = threading.Lock()  # counters are bumped from callers' threads too
        self.counters = {"written": 0, "dropped": 0, "evicted": 0, "expired": 0, "failed": 0}

    # -- called from any thread ------------------------------------------------------------

    def start(self) -> None:
        conn = self._connect()
        self._recount(conn)
        self._thread = threading.Thread(
            target=self._run, args=(conn,), name="edgeinfer-cache-writer", daemon=True
        )
        self._thread.start()

    def stop(self, timeout: float) -> None:
        if self._thread is None:
            return
        try:
            self._queue.put(_Stop(), timeout=timeout)
        except queue.Full:
            log.warning("cache writer queue still full at shutdown; pending writes are lost")
        self._thread.join(timeout)
        self._thread = None

    def put(self, entry: CacheEntry) -> bool:
        """Queue a write; False (and counted) when the queue is full or the writer stopped."""
        response = serialise(entry)
        try:
            if self._thread is not None:
                self._queue.put_nowait(_Put(entry, response))
                return True
        except queue.Full:
            pass
        with self._lock:
            self.counters["dropped"] += 1
        return False

    def touch(self, entry_id: int, when: float) -> None:
        if self._thread is not None:
            try:
                self._queue.put_nowait(_Touch(entry_id, when))
            except queue.Full:
                pass  # losing one LRU update is harmless

    def barrier(self, timeout: float) -> None:
        """Return once everything queued before this call is committed."""
        done = threading.Event()
        self._enqueue(_Barrier(done), timeout)
        if not done.wait(timeout):
            raise CacheError(f"cache writes not committed within {timeout:.1f}s")

    def call(self, fn: Callable[[sqlite3.Connection], T], timeout: float) -> T:
        """Run ``fn(conn)`` on the writer thread in its own transaction; its result."""
        future: Future[T] = Future()
        self._enqueue(_Call(fn, future), timeout)
        try:
            return future.result(timeout)
        except FutureTimeout as exc:
            raise CacheError(f"cache operation not done within {timeout:.1f}s") from exc
        except self._errors as exc:
            raise CacheError(f"cache operation failed: {exc}") from exc

    def pending(self) -> int:
        return self._queue.qsize()

    def tally(self) -> Tally:
        """The table's figures as of the last commit (no table scan)."""
        with self._lock:
            return self._tally.copy()

    def _enqueue(self, op: _Op, timeout: float) -> None:
        if self._thread is None:
            raise CacheError("the cache store is not started")
        try:
            self._queue.put(op, timeout=timeout)
        except queue.Full as exc:
            raise CacheError(f"cache writer queue full for {timeout:.1f}s") from exc

    # -- the writer thread -----------------------------------------------------------------

    def _run(self, conn: sqlite3.Connection) -> None:
        # idle wake-ups: the TTL purge, and noticing another connection's commits
        idle = RESYNC_S if self._ttl_s is None else max(min(self._purge_every_s, RESYNC_S), 0.5)
        try:
            while True:
                try:
                    batch = [self._queue.get(timeout=idle)]
                except queue.Empty:
                    self._resync(conn)
                    self._transaction(conn, [])
                    continue
                self._resync(conn)
                while len(batch) < 512:
                    try:
                        batch.append(self._queue.get_nowait())
                    except queue.Empty:
                        break
                if self._process(conn, batch):
                    return
        finally:
            conn.close()

    def _process(self, conn: sqlite3.Connection, batch: list[_Op]) -> bool:
        """Apply a batch in order; True when it held a stop request."""
        writes: list[_Put | _Touch] = []
        for op in batch:
            if isinstance(op, _Put | _Touch):
                writes.append(op)
                continue
            self._transaction(conn, writes)
            writes = []
            if isinstance(op, _Barrier):
                op.done.set()
            elif isinstance(op, _Call):
                self._run_call(conn, op)
            else:
                return True
        self._transaction(conn, writes)
        return False

    def _transaction(self, conn: sqlite3.Connection, writes: list[_Put | _Touch]) -> None:
        now = self._clock()
        purge_due = self._ttl_s is not None and now - self._last_purge >= self._purge_every_s
        if not writes and not purge_due and self._tally.bytes <= self._max_bytes:
            return
        try:
            conn.execute("BEGIN IMMEDIATE")
            for op in writes:
                if isinstance(op, _Put):
                    self._insert(conn, op.entry, op.response, now)
                else:
                    conn.execute(
                        "UPDATE entries SET last_hit = max(last_hit, ?), hits = hits + 1 "
                        "WHERE id = ?",
                        (op.when, op.entry_id),
                    )
            self._evict(conn, now)
            conn.execute("COMMIT")
        except Exception as exc:  # the writer must outlive any one bad batch
            log.error("cache write of %d operations failed: %s", len(writes), exc)
            self.counters["failed"] += len(writes)
            self._rollback(conn)
            self._recount(conn)

    def _run_call(self, conn: sqlite3.Connection, op: _Call) -> None:
        try:
            conn.execute("BEGIN IMMEDIATE")
            result = op.fn(conn)
            self._recount(conn)
            self._evict(conn, self._clock())
            conn.execute("COMMIT")
        except BaseException as exc:  # handed to the caller, who re-raises it
            self._rollback(conn)
            self._recount(conn)
            op.future.set_exception(exc)
        else:
            op.future.set_result(result)

    def _recount(self, conn: sqlite3.Connection) -> None:
        tally = count_entries(conn)
        with self._lock:
            self._tally = tally
        self._data_version = int(conn.execute("PRAGMA data_version").fetchone()[0])

    def _resync(self, conn: sqlite3.Connection) -> None:
        """Count afresh if another connection committed since we last looked."""
        try:
            if int(conn.execute("PRAGMA data_version").fetchone()[0]) != self._data_version:
                self._recount(conn)
        except self._errors as exc:  # figures a little stale beat a dead writer
            log.warning("cache figures not recounted: %s", exc)

    def _rollback(self, conn: sqlite3.Connection) -> None:
        try:
            conn.execute("ROLLBACK")
        except self._errors:
            pass  # no transaction was open

    def insert_many(self, conn: sqlite3.Connection, entries: list[CacheEntry]) -> int:
        """Insert inside a :meth:`call`; the number of entries that were new."""
        now = self._clock()
        return sum(self._insert(conn, entry, serialise(entry), now) for entry in entries)

    def _insert(
        self, conn: sqlite3.Connection, entry: CacheEntry, response: str, now: float
    ) -> bool:
        size = entry_bytes(entry, response)
        created = entry.created if entry.created is not None else now
        cur = conn.execute(
            "INSERT INTO entries (exact_key, namespace, model, model_digest, question, response,"
            " prompt_tokens, completion_tokens, generation_s, created, last_hit, hits, bytes)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(exact_key) DO NOTHING",
            (entry.exact_key, entry.namespace, entry.model, entry.model_digest, entry.question,
             response, entry.prompt_tokens, entry.completion_tokens, entry.generation_s, created,
             entry.last_hit if entry.last_hit is not None else created, entry.hits, size),
        )  # fmt: skip
        if cur.rowcount != 1:
            return False  # already cached: the first answer stays, with its hit history
        semantic = int(entry.question is not None)
        with self._lock:
            self._tally.add(Tally(1, semantic, size, {entry.model: 1}))
        self.counters["written"] += 1
        if entry.embedding is not None and entry.question is not None:
            vector = np.ascontiguousarray(entry.embedding, dtype=np.float32)
            conn.execute(
                "INSERT INTO entry_vectors (entry_id, coarse, ns, embedding)"
                " VALUES (?, vec_bit(?), ?, ?)",
                (cur.lastrowid, np.packbits(vector > 0).tobytes(), namespace_id(entry.namespace),
                 vector.tobytes()),
            )  # fmt: skip
        return True

    def _evict(self, conn: sqlite3.Connection, now: float) -> None:
        if self._ttl_s is not None and now - self._last_purge >= self._purge_every_s:
            self._last_purge = now
            ids = [r[0] for r in conn.execute(
                "SELECT id FROM entries WHERE created < ?", (now - self._ttl_s,))]  # fmt: skip
            self.counters["expired"] += self._delete(conn, ids)
        while self._tally.bytes > self._max_bytes:
            rows = conn.execute(
                "SELECT id, bytes FROM entries ORDER BY last_hit, id LIMIT 256"
            ).fetchall()
            if not rows:
                self._recount(conn)  # the byte total was off: trust the table
                break
            excess, victims = self._tally.bytes - self._max_bytes, []
            for entry_id, size in rows:
                victims.append(entry_id)
                excess -= size
                if excess <= 0:
                    break
            self.counters["evicted"] += self._delete(conn, victims)

    def _delete(self, conn: sqlite3.Connection, ids: list[int]) -> int:
        removed = delete_entries(conn, ids)
        with self._lock:
            self._tally.add(removed, -1)
        return len(ids)


def delete_entries(conn: sqlite3.Connection, ids: list[int]) -> Tally:
    """Delete entries and their vectors (inside the caller's transaction); what they held."""
    removed = Tally()
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        marks = ",".join("?" * len(chunk))
        removed.add(count_entries(conn, f"WHERE id IN ({marks})", chunk))
        conn.execute(f"DELETE FROM entries WHERE id IN ({marks})", chunk)
    # vec0 deletes by its primary key one row at a time (an IN list would scan the table)
    conn.executemany("DELETE FROM entry_vectors WHERE entry_id = ?", [(i,) for i in ids])
    return removed
