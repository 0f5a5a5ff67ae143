"""Distillation capture: answers of the larger tiers, kept to fine-tune the small one.

Off by default (``[router] distill = true``). The router records (conversation, answer, tier,
confidence) when a routed answer came from a tier above the cheapest; ``edgeinfer distill
export`` writes them as chat-format JSONL, the input most fine-tuning tools take. Writes go
through one worker thread so the event loop never waits on SQLite.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TextIO

from edgeinfer.paths import ensure_private_sqlite

_SCHEMA = """
CREATE TABLE IF NOT EXISTS examples (
    id INTEGER PRIMARY KEY,
    created REAL NOT NULL,
    tier TEXT NOT NULL,
    messages TEXT NOT NULL,
    answer TEXT NOT NULL,
    route TEXT NOT NULL
)
"""


class DistillLog:
    """An append-only SQLite file of examples (owner-only); safe to share between threads."""

    def __init__(self, path: Path) -> None:
        ensure_private_sqlite(path)  # whole conversations: owner-only, whatever the umask
        self.path = path
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(_SCHEMA)
        self._lock = threading.Lock()
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="distill")

    def record(
        self,
        tier: str,
        messages: Sequence[Mapping[str, Any]],
        answer: str,
        route: Mapping[str, Any],
    ) -> None:
        """Queue one example (returns at once)."""
        row = (
            time.time(),
            tier,
            json.dumps([dict(m) for m in messages]),
            answer,
            json.dumps(route),
        )
        self._writer.submit(self._insert, row)

    def _insert(self, row: tuple[float, str, str, str, str]) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO examples (created, tier, messages, answer, route) VALUES (?,?,?,?,?)",
                row,
            )

    def flush(self) -> None:
        """Wait for queued writes (tests, shutdown)."""
        self._writer.submit(lambda: None).result()

    def count(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT count(*) FROM examples").fetchone()[0])

    def examples(self, *, tier: str | None = None) -> Iterator[dict[str, Any]]:
        """Chat-format examples, oldest first: {"messages": [..., assistant answer], ...}."""
        sql = "SELECT tier, messages, answer, route, created FROM examples"
        args: tuple[str, ...] = ()
        if tier is not None:
            sql, args = sql + " WHERE tier = ?", (tier,)
        with self._lock:
            rows = self._db.execute(sql + " ORDER BY id", args).fetchall()
        for tier_name, messages, answer, route, created in rows:
            convo = [*json.loads(messages), {"role": "assistant", "content": answer}]
            meta = {"tier": tier_name, "created": created, "route": json.loads(route)}
            yield {"messages": convo, "metadata": meta}

    def export(self, out: TextIO, *, tier: str | None = None) -> int:
        n = 0
        for example in self.examples(tier=tier):
            out.write(json.dumps(example, ensure_ascii=False) + "\n")
            n += 1
        return n

    def close(self) -> None:
        self._writer.shutdown(wait=True)
        with self._lock:
            self._db.close()
