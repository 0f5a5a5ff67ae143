"""An entry as rows of the cache database: what it stores, what it counts, how it goes away.

The writer thread (writer.py) inserts and evicts with these; the store (store.py) runs
:func:`delete_entries` and :func:`clear_entries` on that thread through ``Writer.call`` and
reads :data:`CLEARED` for read-your-writes; the export/import (transfer.py) sizes and serialises
entries the same way. Every function here runs inside its caller's transaction.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3

import numpy as np

from edgeinfer.cache.entry import CacheEntry
from edgeinfer.cache.migrations import get_meta, set_meta
from edgeinfer.errors import CacheError

ENTRY_OVERHEAD = 96
"""Bytes counted per entry on top of its text and vector (row and index overhead, roughly)."""
CLEARED = "cleared"
"""The ``meta`` key :func:`clear_entries` bumps: how many clears the database has seen."""


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


def insert_row(
    conn: sqlite3.Connection, entry: CacheEntry, response: str, now: float
) -> int | None:
    """Insert the entry's row; its id, or None when its exact key is already cached (the first
    answer stays, with its hit history)."""
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
    return cur.lastrowid if cur.rowcount == 1 else None


def insert_vector(conn: sqlite3.Connection, entry_id: int, entry: CacheEntry) -> None:
    """Index a new row's vector for semantic lookups, if it has one and a question."""
    if entry.embedding is not None and entry.question is not None:
        vector = np.ascontiguousarray(entry.embedding, dtype=np.float32)
        conn.execute(
            "INSERT INTO entry_vectors (entry_id, coarse, ns, embedding)"
            " VALUES (?, vec_bit(?), ?, ?)",
            (entry_id, np.packbits(vector > 0).tobytes(), namespace_id(entry.namespace),
             vector.tobytes()),
        )  # fmt: skip


def delete_entries(conn: sqlite3.Connection, ids: list[int]) -> int:
    """Delete entries and their vectors (inside the caller's transaction); how many."""
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        conn.execute(f"DELETE FROM entries WHERE id IN ({','.join('?' * len(chunk))})", chunk)
    # vec0 deletes by its primary key one row at a time (an IN list would scan the table)
    conn.executemany("DELETE FROM entry_vectors WHERE entry_id = ?", [(i,) for i in ids])
    return len(ids)


def clear_entries(conn: sqlite3.Connection) -> int:
    """Delete every entry (inside the caller's transaction) and bump the clear counter, so no
    writer commits, nor serves, a put queued before it (see writer.py's docstring); how many."""
    count = int(conn.execute("SELECT count(*) FROM entries").fetchone()[0])
    conn.execute("DELETE FROM entries")
    conn.execute("DELETE FROM entry_vectors")
    set_meta(conn, CLEARED, str(int(get_meta(conn, CLEARED) or 0) + 1))
    return count
