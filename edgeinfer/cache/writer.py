"""The cache's single writer: one thread owns the only writing connection.

SQLite allows one writer at a time; funnelling every write through one thread (as datasette and
sqlite-utils do) means no ``database is locked`` retries and lets writes be batched: the thread
drains whatever is queued into one transaction. The queue is bounded: a put that finds it full is
dropped and counted (a cache write is never worth blocking a request for). Hit bookkeeping
(``touch``) rides the same queue. Calls (clear, import, purge) run in their own transaction and
hand their result back through a future; barriers let tests and shutdown wait for what was queued
before them to be committed.

Eviction runs on this thread after each batch: expired entries (TTL) every ``purge_every_s``,
then least-recently-hit entries until the byte total (tally.py: kept by triggers, so exact
whoever wrote) is under the cap. An idle writer wakes at least every :data:`IDLE_S` seconds for
both, as another process (``edgeinfer cache import``) may have grown the table.

Read-your-writes: until the thread commits a put, :meth:`Writer.queued` hands it to exact lookups,
so a client repeating a request at once still hits. Once committed, only the database answers,
so a clear or the TTL is never bypassed. A clear from any connection (rows.py ``clear_entries``)
bumps a counter in ``meta``; a put queued before the thread saw that counter change is neither
served nor committed (it counts as dropped), as its answer predates the clear.
"""

from __future__ import annotations

import logging
import queue
import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any, TypeVar

from edgeinfer.cache.entry import CacheEntry
from edgeinfer.cache.migrations import get_meta
from edgeinfer.cache.rows import CLEARED, delete_entries, insert_row, insert_vector, serialise
from edgeinfer.cache.tally import stored_bytes
from edgeinfer.errors import CacheError

log = logging.getLogger(__name__)
T = TypeVar("T")
IDLE_S = 5.0
"""Longest an idle writer waits before it checks the TTL and the byte cap."""


@dataclass(frozen=True)
class QueuedPut:
    """A put waiting for the writer thread: what read-your-writes serves until it commits.

    Attributes:
        response: the body serialised by the caller, so a bad one fails there, not on the thread.
        cleared: the clear counter (:data:`CLEARED`) as the thread last saw it when this was
            queued; the put is dropped if a clear committed since.
        at: the store's clock when it was queued (its age against the TTL).
    """

    entry: CacheEntry
    response: str
    cleared: str | None
    at: float


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


_Op = QueuedPut | _Touch | _Call | _Barrier | _Stop


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
        self._last_purge = float("-inf")
        self._lock = threading.Lock()  # counters are bumped from callers' threads too
        # queued, not yet committed puts by exact key (at most the queue's size), and the clear
        # counter as the thread last read it; both under the lock
        self._queued: dict[str, QueuedPut] = {}
        self._cleared: str | None = None
        self.counters = {"written": 0, "dropped": 0, "evicted": 0, "expired": 0, "failed": 0}

    # -- called from any thread ------------------------------------------------------------

    def start(self) -> None:
        conn = self._connect()
        self._see_clears(conn)
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
        with self._lock:
            self._queued.clear()  # never committed now

    def put(self, entry: CacheEntry) -> bool:
        """Queue a write; False (and counted) when the queue is full or the writer stopped."""
        response = serialise(entry)
        key = entry.exact_key
        with self._lock:  # the thread settles a put under the lock: it cannot settle it first
            op = QueuedPut(entry, response, self._cleared, self._clock())
            if self._thread is not None:
                try:
                    self._queue.put_nowait(op)
                except queue.Full:
                    pass
                else:
                    self._queued[key] = op
                    return True
            self.counters["dropped"] += 1
        return False

    def queued(self, key: str) -> QueuedPut | None:
        """The put under exact ``key`` that the thread has not committed (nor dropped) yet."""
        with self._lock:
            return self._queued.get(key)

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

    def _enqueue(self, op: _Op, timeout: float) -> None:
        if self._thread is None:
            raise CacheError("the cache store is not started")
        try:
            self._queue.put(op, timeout=timeout)
        except queue.Full as exc:
            raise CacheError(f"cache writer queue full for {timeout:.1f}s") from exc

    # -- the writer thread -----------------------------------------------------------------

    def _run(self, conn: sqlite3.Connection) -> None:
        # idle wake-ups: the TTL purge, and the cap after another process's import
        idle = IDLE_S if self._ttl_s is None else max(min(self._purge_every_s, IDLE_S), 0.5)
        try:
            while True:
                try:
                    batch = [self._queue.get(timeout=idle)]
                except queue.Empty:
                    self._transaction(conn, [])
                    continue
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
        writes: list[QueuedPut | _Touch] = []
        for op in batch:
            if isinstance(op, QueuedPut | _Touch):
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

    def _transaction(self, conn: sqlite3.Connection, writes: list[QueuedPut | _Touch]) -> None:
        now = self._clock()
        purge_due = self._ttl_s is not None and now - self._last_purge >= self._purge_every_s
        puts = [op for op in writes if isinstance(op, QueuedPut)]
        try:
            if not writes and not purge_due and stored_bytes(conn) <= self._max_bytes:
                return
            conn.execute("BEGIN IMMEDIATE")
            cleared = self._see_clears(conn) if puts else None  # no other writer until COMMIT
            for op in writes:
                if isinstance(op, _Touch):
                    conn.execute(
                        "UPDATE entries SET last_hit = max(last_hit, ?), hits = hits + 1 "
                        "WHERE id = ?",
                        (op.when, op.entry_id),
                    )
                elif op.cleared != cleared:  # the answer predates a clear: keep it out
                    with self._lock:
                        self.counters["dropped"] += 1
                else:
                    self._insert(conn, op.entry, op.response, now)
            self._evict(conn, now)
            conn.execute("COMMIT")
        except Exception as exc:  # the writer must outlive any one bad batch
            log.error("cache write of %d operations failed: %s", len(writes), exc)
            self.counters["failed"] += len(writes)
            self._rollback(conn)
        finally:
            self._settle(puts)

    def _settle(self, puts: list[QueuedPut]) -> None:
        """Committed, dropped or failed: from now on only the database answers for these."""
        with self._lock:
            for op in puts:
                if self._queued.get(op.entry.exact_key) is op:
                    del self._queued[op.entry.exact_key]

    def _see_clears(self, conn: sqlite3.Connection) -> str | None:
        """Read the clear counter; later puts are checked against it."""
        cleared = get_meta(conn, CLEARED)
        with self._lock:
            self._cleared = cleared
        return cleared

    def _run_call(self, conn: sqlite3.Connection, op: _Call) -> None:
        try:
            conn.execute("BEGIN IMMEDIATE")
            result = op.fn(conn)
            self._evict(conn, self._clock())
            self._see_clears(conn)
            conn.execute("COMMIT")
        except BaseException as exc:  # handed to the caller, who re-raises it
            self._rollback(conn)
            op.future.set_exception(exc)
        else:
            op.future.set_result(result)

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
        entry_id = insert_row(conn, entry, response, now)
        if entry_id is None:
            return False  # already cached: the first answer stays, with its hit history
        self.counters["written"] += 1
        insert_vector(conn, entry_id, entry)
        return True

    def _evict(self, conn: sqlite3.Connection, now: float) -> None:
        if self._ttl_s is not None and now - self._last_purge >= self._purge_every_s:
            self._last_purge = now
            ids = [r[0] for r in conn.execute(
                "SELECT id FROM entries WHERE created < ?", (now - self._ttl_s,))]  # fmt: skip
            self.counters["expired"] += delete_entries(conn, ids)
        excess = stored_bytes(conn) - self._max_bytes
        while excess > 0:
            rows = conn.execute(
                "SELECT id, bytes FROM entries ORDER BY last_hit, id LIMIT 256"
            ).fetchall()
            victims = []
            for entry_id, size in rows:
                victims.append(entry_id)
                excess -= size
                if excess <= 0:
                    break
            if not victims:
                break  # nothing left to evict
            self.counters["evicted"] += delete_entries(conn, victims)
