"""The entries table's figures (rows, semantic rows, bytes, rows per model) as one value.

The cache writer keeps a :class:`Tally` up to date as it inserts and deletes, so ``/stats`` (and
its live feed, every tick) reads the figures instead of scanning a table that may hold a
gigabyte; :func:`count_entries` is the scan, for when the figures must be established afresh.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Tally:
    """What the entries table holds: rows, rows with a question (semantic), bytes, per model."""

    entries: int = 0
    semantic: int = 0
    bytes: int = 0
    models: dict[str, int] = field(default_factory=dict)

    def add(self, other: Tally, sign: int = 1) -> None:
        self.entries += sign * other.entries
        self.semantic += sign * other.semantic
        self.bytes += sign * other.bytes
        for model, n in other.models.items():
            left = self.models.get(model, 0) + sign * n
            if left > 0:
                self.models[model] = left
            else:
                self.models.pop(model, None)

    def copy(self) -> Tally:
        return Tally(self.entries, self.semantic, self.bytes, dict(sorted(self.models.items())))


def count_entries(conn: sqlite3.Connection, where: str = "", args: Sequence[Any] = ()) -> Tally:
    """Count the entries (those matching ``where``) with a table scan."""
    tally = Tally()
    rows = conn.execute(
        f"SELECT model, count(*), count(question), total(bytes) FROM entries {where}"
        " GROUP BY model",
        args,
    )
    for model, entries, semantic, size in rows:
        tally.add(Tally(entries, semantic, int(size), {model: entries}))
    return tally
