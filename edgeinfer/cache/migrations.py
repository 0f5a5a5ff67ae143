"""The cache database's schema, as numbered migrations recorded in the database itself.

Each migration runs in its own ``BEGIN IMMEDIATE`` transaction together with the row that records
it, so a crash leaves the schema at a migration boundary and two processes opening the same file
apply each migration once. Never edit a shipped migration; append a new one.

Vectors live in a sqlite-vec ``vec0`` table next to the entries: the sign bits of each embedding
(``coarse bit[dim]``) for a fast Hamming KNN, the namespace as an integer metadata column so the
KNN only visits the request's own namespace, and the float32 embedding as an auxiliary column
to rank the candidates by exact cosine.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from typing import Any

Migration = tuple[str, Callable[[sqlite3.Connection, int], None]]


def _entries(conn: sqlite3.Connection, dim: int) -> None:
    for statement in (
        """CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)""",
        """CREATE TABLE entries (
            id INTEGER PRIMARY KEY,
            exact_key TEXT NOT NULL UNIQUE,
            namespace TEXT NOT NULL,
            model TEXT NOT NULL,
            model_digest TEXT NOT NULL,
            question TEXT,
            response TEXT NOT NULL,
            prompt_tokens INTEGER NOT NULL DEFAULT 0,
            completion_tokens INTEGER NOT NULL DEFAULT 0,
            generation_s REAL NOT NULL DEFAULT 0,
            created REAL NOT NULL,
            last_hit REAL NOT NULL,
            hits INTEGER NOT NULL DEFAULT 0,
            bytes INTEGER NOT NULL
        )""",
        "CREATE INDEX entries_lru ON entries (last_hit)",
        "CREATE INDEX entries_created ON entries (created)",
        "CREATE INDEX entries_model ON entries (model, model_digest)",
    ):
        conn.execute(statement)


def _vectors(conn: sqlite3.Connection, dim: int) -> None:
    create_vectors(conn, dim)


def create_vectors(conn: sqlite3.Connection, dim: int) -> None:
    """(Re)create the vector table for ``dim``-dimensional embeddings."""
    if dim <= 0 or dim % 8:
        raise ValueError(f"embedding dim must be a positive multiple of 8, got {dim}")
    conn.execute(
        "CREATE VIRTUAL TABLE entry_vectors USING vec0("
        f"entry_id INTEGER PRIMARY KEY, coarse bit[{dim}], ns INTEGER, +embedding BLOB)"
    )
    set_meta(conn, "dim", str(dim))


_TALLY_ADD = """
    INSERT INTO tally (model, entries, semantic, bytes)
        VALUES (new.model, 1, new.question IS NOT NULL, new.bytes)
        ON CONFLICT (model) DO UPDATE SET entries = entries + 1,
            semantic = semantic + excluded.semantic, bytes = bytes + excluded.bytes;"""
_TALLY_REMOVE = """
    UPDATE tally SET entries = entries - 1, semantic = semantic - (old.question IS NOT NULL),
        bytes = bytes - old.bytes WHERE model = old.model;
    DELETE FROM tally WHERE model = old.model AND entries <= 0;"""


def _tally(conn: sqlite3.Connection, dim: int) -> None:
    """The entries' figures per model, kept by triggers in every writer's own transaction.

    ``/stats`` reads them instead of scanning the table, and they stay exact whoever writes:
    the daemon's writer, or ``edgeinfer cache import|clear`` from another process.
    """
    for statement in (
        """CREATE TABLE tally (
            model TEXT PRIMARY KEY,
            entries INTEGER NOT NULL,
            semantic INTEGER NOT NULL,
            bytes INTEGER NOT NULL
        )""",
        """INSERT INTO tally (model, entries, semantic, bytes)
            SELECT model, count(*), count(question), total(bytes) FROM entries GROUP BY model""",
        f"""CREATE TRIGGER tally_insert AFTER INSERT ON entries BEGIN {_TALLY_ADD} END""",
        f"""CREATE TRIGGER tally_delete AFTER DELETE ON entries BEGIN {_TALLY_REMOVE} END""",
        f"""CREATE TRIGGER tally_update AFTER UPDATE OF model, question, bytes ON entries
            BEGIN {_TALLY_REMOVE} {_TALLY_ADD} END""",
    ):
        conn.execute(statement)


MIGRATIONS: tuple[Migration, ...] = (
    ("0001_entries", _entries),
    ("0002_vectors", _vectors),
    ("0003_tally", _tally),
)


def migrate(
    conn: sqlite3.Connection, dim: int, clock: Callable[[], float] = time.time
) -> list[str]:
    """Apply the migrations this database lacks; returns the names applied."""
    conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations "
        "(version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied REAL NOT NULL)"
    )
    applied: list[str] = []
    for version, (name, step) in enumerate(MIGRATIONS, start=1):
        conn.execute("BEGIN IMMEDIATE")
        try:
            done = conn.execute(
                "SELECT 1 FROM schema_migrations WHERE version = ?", (version,)
            ).fetchone()
            if done is None:
                step(conn, dim)
                conn.execute(
                    "INSERT INTO schema_migrations (version, name, applied) VALUES (?, ?, ?)",
                    (version, name, clock()),
                )
                applied.append(name)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    return applied


def get_meta(conn: sqlite3.Connection, key: str) -> str | None:
    row: Any = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return None if row is None else str(row[0])


def set_meta(conn: sqlite3.Connection, key: str, value: str) -> None:
    conn.execute(
        "INSERT INTO meta (key, value) VALUES (?, ?) "
        "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        (key, value),
    )
