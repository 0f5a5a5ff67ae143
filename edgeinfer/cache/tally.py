"""The entries table's figures (rows, semantic rows, bytes, rows per model) as one value.

SQLite triggers keep them in the ``tally`` table (migration ``0003_tally``) inside whichever
transaction inserts or deletes entries, so ``/stats`` (and its live feed, every tick) and the
writer's byte cap read a few rows instead of scanning a table that may hold a gigabyte, and the
figures stay exact when another process (``edgeinfer cache import|clear``) writes the database.
:func:`count_entries` is the scan the triggers must always agree with.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Tally:
    """What the entries table holds: rows, rows with a question (semantic), bytes, per model."""

    entries: int = 0
    semantic: int = 0
    bytes: int = 0
    models: dict[str, int] = field(default_factory=dict)

    @classmethod
    def of(cls, rows: Iterable[tuple[Any, ...]]) -> Tally:
        """Sum ``(model, entries, semantic, bytes)`` rows."""
        tally = cls()
        for model, entries, semantic, size in rows:
            if entries:
                tally.entries += int(entries)
                tally.semantic += int(semantic)
                tally.bytes += int(size)
                tally.models[str(model)] = int(entries)
        tally.models = dict(sorted(tally.models.items()))
        return tally


def read_tally(conn: sqlite3.Connection) -> Tally:
    """The figures the triggers keep (one row per model: no table scan)."""
    return Tally.of(conn.execute("SELECT model, entries, semantic, bytes FROM tally"))


def stored_bytes(conn: sqlite3.Connection) -> int:
    """The entries' counted bytes, for the writer's cap."""
    return int(conn.execute("SELECT total(bytes) FROM tally").fetchone()[0])


def count_entries(conn: sqlite3.Connection) -> Tally:
    """The same figures counted with a table scan (what the triggers must agree with)."""
    return Tally.of(
        conn.execute(
            "SELECT model, count(*), count(question), total(bytes) FROM entries GROUP BY model"
        )
    )
