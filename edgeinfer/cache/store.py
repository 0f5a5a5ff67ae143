"""The response cache on disk: SQLite in WAL mode plus sqlite-vec, one writer thread.

The service asks :meth:`CacheStore.lookup_exact` and then :meth:`CacheStore.lookup_semantic`
before generating, and :meth:`CacheStore.put` after. Lookups are blocking reads on a connection
per calling thread (connection.py), so the service runs them in a worker thread
(``asyncio.to_thread``), never on the event loop; WAL lets them run while the writer commits.
Writes go to the single writer thread (writer.py) through a bounded queue and never block the
caller.

Durability: every write is a committed transaction in WAL mode (``synchronous=NORMAL``), so a
process killed at any point, SIGKILL included, leaves a valid database holding every transaction
that committed before it; only a power loss can take back the last commits. The file lives under
the platformdirs cache dir (:func:`default_path`).

A semantic lookup runs a Hamming KNN over the sign bits of the stored vectors inside the request's
namespace, ranks the candidates by exact cosine, and serves the best one above the threshold that
the verifier (verifier.py: the rule guard, then a learned pair model) lets through.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from edgeinfer.cache import migrations, transfer
from edgeinfer.cache.connection import Readers, connect, damaged, sqlite_driver
from edgeinfer.cache.entry import CacheEntry, CacheHit, GuardRejection
from edgeinfer.cache.guard import guard, reason_kind
from edgeinfer.cache.rows import CLEARED, clear_entries, delete_entries, namespace_id
from edgeinfer.cache.tally import read_tally
from edgeinfer.cache.writer import QueuedPut, Writer
from edgeinfer.errors import CacheError
from edgeinfer.paths import Paths, ensure_private_sqlite

log = logging.getLogger(__name__)
Verify = Callable[[str, str, float], str | None]
"""(stored question, incoming question, cosine) -> why not to serve, or None (verifier.py)."""
CANDIDATES = 16
"""Vectors the Hamming KNN hands to the exact-cosine ranking."""
GUARDED = 8
"""Candidates above the threshold the guard is asked about before the lookup gives up."""


def default_path(paths: Paths) -> Path:
    """Where the daemon keeps its cache: ``<cache dir>/cache.sqlite3``."""
    return paths.cache_dir / "cache.sqlite3"


class CacheStore:
    """Exact and semantic response cache (see the module docstring).

    Args:
        path: the SQLite file (created with its folder, owner-only).
        dim: embedding length; a database made for another length drops its vectors on open.
        max_bytes: cap on the entries' counted bytes; least-recently-hit entries go first.
        ttl_s: entries older than this are never served and are purged; None keeps them.
        clock: seconds since the epoch (tests inject a fake one).
        embedder: what made the vectors (the daemon: MINILM_VECTORS, model and build); vectors
            another embedder made are dropped on open.
        queue_size: bound of the writer queue; puts beyond it are dropped and counted.
    """

    def __init__(
        self,
        path: Path,
        *,
        dim: int,
        max_bytes: int,
        ttl_s: float | None,
        clock: Callable[[], float] = time.time,
        embedder: str = "",
        queue_size: int = 1024,
        purge_every_s: float = 60.0,
        verify: Verify | None = None,
    ) -> None:
        self.path = Path(path)
        self.verify: Verify = verify or _rules_only
        self.dim = dim
        self.max_bytes = max_bytes
        self.ttl_s = ttl_s
        self.embedder = embedder
        self._clock = clock
        self._driver = sqlite_driver()
        self._errors: tuple[type[BaseException], ...] = (self._driver.Error, sqlite3.Error)
        self._writer = Writer(
            lambda: connect(self.path, self._driver),
            max_bytes=max_bytes,
            ttl_s=ttl_s,
            clock=clock,
            errors=self._errors,
            queue_size=queue_size,
            purge_every_s=purge_every_s,
        )
        self._readers = Readers(lambda: connect(self.path, self._driver))
        self._lock = threading.Lock()
        self._rejections: Counter[str] = Counter()
        self._started = False

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Open (or create, or migrate) the database and start the writer thread."""
        ensure_private_sqlite(self.path)  # answers and questions: owner-only, WAL included
        try:
            try:
                self._open()
            except self._driver.DatabaseError as exc:
                if not damaged(exc):
                    raise
                aside = self._set_aside()
                log.warning("cache database %s is damaged (%s); moved to %s", self.path, exc, aside)
                self._open()
            self._writer.start()
        except self._errors as exc:
            raise CacheError(f"cannot open the cache database {self.path}: {exc}") from exc
        self._started = True

    def _open(self) -> None:
        conn = connect(self.path, self._driver)
        try:
            migrations.migrate(conn, self.dim, self._clock)
            self._check_vectors(conn)
        finally:
            conn.close()

    def _set_aside(self) -> Path:
        """Move a damaged database out of the way: a cache can start empty, a daemon must start."""
        aside = self.path.with_name(f"{self.path.name}.damaged-{int(self._clock())}")
        for suffix in ("", "-wal", "-shm"):
            source = Path(f"{self.path}{suffix}")
            if source.exists():
                source.replace(Path(f"{aside}{suffix}"))
        return aside

    def close(self, timeout: float = 10.0) -> None:
        """Commit what is queued, stop the writer, close every connection."""
        self._writer.stop(timeout)
        self._started = False
        self._readers.close()

    def _check_vectors(self, conn: sqlite3.Connection) -> None:
        """Drop the vectors when the embedder changed: they would never match a new query."""
        dim = migrations.get_meta(conn, "dim")
        embedder = migrations.get_meta(conn, "embedder")
        if dim == str(self.dim) and embedder in (None, self.embedder):
            if embedder is None:
                migrations.set_meta(conn, "embedder", self.embedder)
            return
        log.warning("cache vectors were made by %s/%s; dropping them", embedder, dim)
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("DROP TABLE entry_vectors")
        migrations.create_vectors(conn, self.dim)
        migrations.set_meta(conn, "embedder", self.embedder)
        conn.execute("COMMIT")

    # -- reads (any thread but the event loop) ---------------------------------------------

    def lookup_exact(self, key: str) -> CacheHit | None:
        """The entry stored under ``key`` if it is still fresh.

        A put the writer has not committed yet counts too (read-your-writes), unless a clear
        committed since it was queued; once committed, only the database answers.
        """
        queued = self._writer.queued(key)
        if queued is not None and self._servable(queued):
            entry = queued.entry
            return CacheHit(
                "exact", entry.response, 1.0, entry.prompt_tokens, entry.completion_tokens,
                entry.generation_s, -1, entry.question,
            )  # fmt: skip
        row = (
            self._reader()
            .execute(
                "SELECT id, response, prompt_tokens, completion_tokens, generation_s, created,"
                " question FROM entries WHERE exact_key = ?",
                (key,),
            )
            .fetchone()
        )
        if row is None or not self._fresh(row[5]):
            return None
        self._writer.touch(row[0], self._clock())
        return CacheHit("exact", _json(row[1]), 1.0, row[2], row[3], row[4], row[0], row[6])

    def lookup_semantic(
        self, namespace: str, vector: NDArray[np.float32], question: str, threshold: float
    ) -> CacheHit | None:
        """The closest fresh answer in ``namespace`` at cosine >= ``threshold`` the guard allows.

        Candidates the guard refuses are reported on the hit (and counted in :meth:`stats`).
        """
        query = np.ascontiguousarray(vector, dtype=np.float32).reshape(-1)
        if query.shape != (self.dim,):
            raise CacheError(f"query vector has {query.size} values, the cache holds {self.dim}")
        rows = (
            self._reader()
            .execute(
                "SELECT entry_id, embedding FROM entry_vectors"
                " WHERE coarse MATCH vec_bit(?) AND k = ? AND ns = ?",
                (np.packbits(query > 0).tobytes(), CANDIDATES, namespace_id(namespace)),
            )
            .fetchall()
        )
        scored = sorted(
            ((float(np.frombuffer(blob, dtype=np.float32) @ query), eid) for eid, blob in rows),
            reverse=True,
        )
        rejected: list[GuardRejection] = []
        for similarity, entry_id in [s for s in scored if s[0] >= threshold][:GUARDED]:
            hit = self._guarded(entry_id, namespace, question, similarity, rejected)
            if hit is not None:
                return hit
        return None

    def _guarded(
        self, entry_id: int, namespace: str, question: str, similarity: float,
        rejected: list[GuardRejection],
    ) -> CacheHit | None:  # fmt: skip
        row = (
            self._reader()
            .execute(
                "SELECT namespace, question, response, prompt_tokens, completion_tokens,"
                " generation_s, created FROM entries WHERE id = ?",
                (entry_id,),
            )
            .fetchone()
        )
        if row is None or row[0] != namespace or row[1] is None or not self._fresh(row[6]):
            return None
        reason = self.verify(row[1], question, similarity)
        if reason is not None:
            rejected.append(GuardRejection(row[1], similarity, reason))
            with self._lock:
                self._rejections[reason_kind(reason)] += 1
            return None
        self._writer.touch(entry_id, self._clock())
        return CacheHit(
            "semantic", _json(row[2]), similarity, row[3], row[4], row[5], entry_id, row[1],
            tuple(rejected),
        )  # fmt: skip

    def _fresh(self, created: float) -> bool:
        return self.ttl_s is None or created >= self._clock() - self.ttl_s

    def _servable(self, queued: QueuedPut) -> bool:
        """A queued put may be served while it is fresh and no clear committed since."""
        if not self._fresh(queued.at):
            return False
        return queued.cleared == migrations.get_meta(self._reader(), CLEARED)

    def _reader(self) -> sqlite3.Connection:
        """This thread's read connection (SQLite connections must not be shared)."""
        conn = self._readers.mine()
        if conn is None:
            if not self._started:
                raise CacheError("the cache store is not started")
            conn = self._readers.open()
        return conn

    # -- writes ----------------------------------------------------------------------------

    def put(self, entry: CacheEntry) -> None:
        """Queue ``entry`` for the writer; dropped and counted when the queue is full."""
        self._check_shape(entry)
        self._writer.put(entry)

    def _check_shape(self, entry: CacheEntry) -> None:
        if entry.embedding is not None and entry.embedding.shape != (self.dim,):
            raise CacheError(
                f"entry vector has shape {entry.embedding.shape}, expected ({self.dim},)"
            )

    def flush(self, timeout: float) -> None:
        """Wait until every write queued before this call is committed (tests, shutdown)."""
        self._writer.barrier(timeout)

    def clear(self, timeout: float = 60.0) -> int:
        """Delete every entry; how many there were. Puts queued before it, in this process or
        in a daemon beside it, are neither served nor committed after it."""
        return self._writer.call(clear_entries, timeout)

    def purge_model(self, model: str, keep_digest: str, timeout: float = 60.0) -> int:
        """Delete ``model``'s entries made by any other file than ``keep_digest``.

        Keys already include the digest, so such entries can never be served; this frees their
        space when the service loads a changed model file.
        """

        def run(conn: sqlite3.Connection) -> int:
            sql = "SELECT id FROM entries WHERE model = ? AND model_digest != ?"
            return delete_entries(conn, [r[0] for r in conn.execute(sql, (model, keep_digest))])

        return self._writer.call(run, timeout)

    # -- stats, export, import -------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Counts and sizes for ``/stats`` and ``edgeinfer cache stats``: the figures the
        database's triggers keep (tally.py), so the live feed's ticks cost no table scan and
        they are exact after any process's commit."""
        tally = read_tally(self._reader())
        with self._lock:
            rejections = dict(self._rejections)
        return {
            "entries": tally.entries,
            "semantic_entries": tally.semantic,
            "bytes": tally.bytes,
            "max_bytes": self.max_bytes,
            "ttl_s": self.ttl_s,
            "file_bytes": sum(p.stat().st_size for p in self._files()),
            "pending_writes": self._writer.pending(),
            "models": tally.models,
            "guard_rejections": rejections,
            **{f"{k}_writes" if k in ("dropped", "failed") else k: v
               for k, v in self._writer.counters.items()},
        }  # fmt: skip

    def _files(self) -> list[Path]:
        names = (self.path, Path(f"{self.path}-wal"), Path(f"{self.path}-shm"))
        return [p for p in names if p.exists()]

    def export(self, path: Path) -> int:
        """Write every fresh entry to ``path`` as JSON Lines; the number written."""
        records = transfer.records(self._reader(), self._fresh)
        return transfer.write_jsonl(Path(path), transfer.header(self.dim, self.embedder), records)

    def import_(self, path: Path, timeout: float = 600.0) -> int:
        """Add the valid entries of an export file not already cached; the number added."""
        return self.import_report(path, timeout).added

    def import_report(self, path: Path, timeout: float = 600.0) -> transfer.ImportReport:
        """Import, saying what was added and which lines were skipped why (transfer.py checks
        and normalises every line; a bad one is never inserted)."""
        limits = transfer.Limits(self.dim, self.embedder, self._clock(), self.ttl_s, self.max_bytes)
        report = transfer.load(Path(path), limits, lambda batch: self.put_many(batch, timeout))
        log.info("%s from %s", report.summary(), path)  # the CLI prints it
        return report

    def put_many(self, entries: list[CacheEntry], timeout: float = 600.0) -> int:
        """Insert ``entries`` in one transaction and wait for it; the number not already cached.

        For bulk loads (import, benchmarks); the request path uses :meth:`put`.
        """
        if not entries:
            return 0
        for entry in entries:
            self._check_shape(entry)
        return self._writer.call(lambda conn: self._writer.insert_many(conn, entries), timeout)


def _rules_only(stored: str, incoming: str, similarity: float) -> str | None:
    return guard(stored, incoming)


def _json(text: str) -> dict[str, Any]:
    value = json.loads(text)
    if not isinstance(value, dict):
        raise CacheError("a cached response is not a JSON object")
    return value
