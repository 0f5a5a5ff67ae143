"""Conversations of ``edgeinfer chat``, kept in SQLite under the data dir.

One small database (``chat.sqlite3``) with numbered migrations recorded in ``PRAGMA
user_version``, each in its own transaction. Calls are synchronous: the TUI's writes are a row
at a time into a local WAL database (well under a millisecond), and the daemon never touches it.
An answer's ``meta`` is the response's ``model``, ``usage`` and ``edgeinfer`` report as JSON, so
a reopened conversation shows the same badges. The file and its folder are owner-only.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeinfer.paths import Paths, ensure_private_sqlite

FILENAME = "chat.sqlite3"

_MIGRATIONS: list[str] = [
    """
    CREATE TABLE conversations (
        id INTEGER PRIMARY KEY,
        title TEXT NOT NULL,
        model TEXT NOT NULL DEFAULT 'auto',
        created REAL NOT NULL,
        updated REAL NOT NULL
    );
    CREATE TABLE messages (
        id INTEGER PRIMARY KEY,
        conversation_id INTEGER NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
        role TEXT NOT NULL,
        content TEXT NOT NULL,
        meta TEXT,
        created REAL NOT NULL
    );
    CREATE INDEX messages_conversation ON messages (conversation_id, id);
    """,
]


@dataclass(frozen=True)
class Conversation:
    id: int
    title: str
    model: str


@dataclass(frozen=True)
class Message:
    id: int
    role: str
    content: str
    meta: dict[str, Any] | None


def default_path(paths: Paths) -> Path:
    return paths.data_dir / FILENAME


class ConversationStore:
    """Conversations and their messages; ``clock`` is injected so tests order rows exactly."""

    def __init__(self, path: Path, *, clock: Callable[[], float] = time.time) -> None:
        ensure_private_sqlite(path)  # conversations are nobody else's business
        self.path = path
        self._clock = clock
        self._db = sqlite3.connect(path, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._migrate()

    def _migrate(self) -> None:
        version = int(self._db.execute("PRAGMA user_version").fetchone()[0])
        for number, script in enumerate(_MIGRATIONS[version:], start=version + 1):
            # executescript commits first; BEGIN inside it keeps schema and version together.
            self._db.executescript(
                f"BEGIN IMMEDIATE; {script}; PRAGMA user_version={number}; COMMIT;"
            )

    def close(self) -> None:
        self._db.close()

    def create(self, title: str, model: str) -> Conversation:
        now = self._clock()
        cur = self._db.execute(
            "INSERT INTO conversations (title, model, created, updated) VALUES (?, ?, ?, ?)",
            (title, model, now, now),
        )
        assert cur.lastrowid is not None
        return Conversation(cur.lastrowid, title, model)

    def conversations(self) -> list[Conversation]:
        """Most recently used first."""
        rows = self._db.execute(
            "SELECT id, title, model FROM conversations ORDER BY updated DESC, id DESC"
        ).fetchall()
        return [Conversation(*row) for row in rows]

    def get(self, conversation_id: int) -> Conversation | None:
        row = self._db.execute(
            "SELECT id, title, model FROM conversations WHERE id = ?", (conversation_id,)
        ).fetchone()
        return Conversation(*row) if row else None

    def set_model(self, conversation_id: int, model: str) -> None:
        self._db.execute(
            "UPDATE conversations SET model = ? WHERE id = ?", (model, conversation_id)
        )

    def delete(self, conversation_id: int) -> None:
        self._db.execute("DELETE FROM conversations WHERE id = ?", (conversation_id,))

    def add(
        self, conversation_id: int, role: str, content: str, meta: dict[str, Any] | None = None
    ) -> Message:
        now = self._clock()
        with self._db:
            self._db.execute("BEGIN")
            cur = self._db.execute(
                "INSERT INTO messages (conversation_id, role, content, meta, created)"
                " VALUES (?, ?, ?, ?, ?)",
                (conversation_id, role, content, json.dumps(meta) if meta else None, now),
            )
            self._db.execute(
                "UPDATE conversations SET updated = ? WHERE id = ?", (now, conversation_id)
            )
        assert cur.lastrowid is not None
        return Message(cur.lastrowid, role, content, meta)

    def remove_message(self, message_id: int) -> None:
        self._db.execute("DELETE FROM messages WHERE id = ?", (message_id,))

    def messages(self, conversation_id: int) -> list[Message]:
        rows = self._db.execute(
            "SELECT id, role, content, meta FROM messages WHERE conversation_id = ? ORDER BY id",
            (conversation_id,),
        ).fetchall()
        return [
            Message(i, role, text, json.loads(meta) if meta else None)
            for i, role, text, meta in rows
        ]
