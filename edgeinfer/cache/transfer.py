"""``edgeinfer cache export`` / ``import``: the cache as JSON Lines.

The first line is a header (format, version, embedding dim and embedder); each further line is
one entry with its embedding as base64 float32. Importing checks every line before inserting
anything, so a damaged file adds nothing; entries already cached (same exact key) are skipped.
Vectors of another dimension or embedder are dropped on import (those entries stay usable by the
exact layer).
"""

from __future__ import annotations

import base64
import json
import os
import sqlite3
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from edgeinfer.cache.entry import CacheEntry
from edgeinfer.errors import CacheError

FORMAT = "edgeinfer-cache"
VERSION = 1
COLUMNS = (
    "exact_key, namespace, model, model_digest, question, response, prompt_tokens,"
    " completion_tokens, generation_s, created, last_hit, hits"
)
"""The ``entries`` columns an export row is built from, in :func:`row_to_json`'s order."""


def header(dim: int, embedder: str) -> dict[str, Any]:
    return {"format": FORMAT, "version": VERSION, "dim": dim, "embedder": embedder}


def row_to_json(row: tuple[Any, ...], embedding: bytes | None) -> dict[str, Any]:
    """One export line from an ``entries`` row (``COLUMNS`` order) and its vector blob."""
    keys = [c.strip() for c in COLUMNS.split(",")]
    record = dict(zip(keys, row, strict=True))
    record["response"] = json.loads(record["response"])
    record["embedding"] = base64.b64encode(embedding).decode() if embedding else None
    return record


def records(conn: sqlite3.Connection, fresh: Callable[[float], bool]) -> Iterator[dict[str, Any]]:
    """Export lines of every entry ``fresh(created)`` accepts, read in one snapshot."""
    conn.execute("BEGIN")
    try:
        for row in conn.execute(f"SELECT id, {COLUMNS} FROM entries ORDER BY id"):
            if fresh(row[10]):
                vec = conn.execute(
                    "SELECT embedding FROM entry_vectors WHERE entry_id = ?", (row[0],)
                ).fetchone()
                yield row_to_json(tuple(row[1:]), vec[0] if vec else None)
    finally:
        conn.execute("COMMIT")


def write_jsonl(path: Path, head: dict[str, Any], records: Iterable[dict[str, Any]]) -> int:
    """Write atomically (temporary sibling, then rename); the number of entries written."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    count = 0
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(json.dumps(head) + "\n")
            for record in records:
                out.write(json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n")
                count += 1
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return count


def read_jsonl(path: Path, dim: int, embedder: str) -> Iterator[CacheEntry]:
    """Entries of an export file; raises :class:`CacheError` naming the first bad line."""
    try:
        with Path(path).open(encoding="utf-8") as lines:
            head = _parse(next(lines, ""), path, 1)
            if head.get("format") != FORMAT or head.get("version") != VERSION:
                raise CacheError(
                    f"{path}: not an edgeinfer cache export (format {FORMAT} v{VERSION})"
                )
            keep_vectors = head.get("dim") == dim and head.get("embedder") == embedder
            for number, line in enumerate(lines, start=2):
                if line.strip():
                    yield _entry(_parse(line, path, number), dim, keep_vectors, f"{path}:{number}")
    except OSError as exc:
        raise CacheError(f"cannot read {path}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise CacheError(f"{path}: not UTF-8 text: {exc}") from exc


def _parse(line: str, path: Path, number: int) -> dict[str, Any]:
    try:
        value = json.loads(line)
    except json.JSONDecodeError as exc:
        raise CacheError(f"{path}:{number}: invalid JSON: {exc.msg}") from exc
    if not isinstance(value, dict):
        raise CacheError(f"{path}:{number}: expected a JSON object")
    return value


def _entry(record: dict[str, Any], dim: int, keep_vectors: bool, where: str) -> CacheEntry:
    try:
        vector = None
        if keep_vectors and record.get("embedding"):
            vector = np.frombuffer(base64.b64decode(record["embedding"]), dtype=np.float32)
            if vector.shape != (dim,):
                raise ValueError(f"embedding has {vector.size} values, expected {dim}")
        if not isinstance(record["response"], dict):
            raise ValueError("response must be a JSON object")
        return CacheEntry(
            exact_key=_text(record, "exact_key"),
            namespace=_text(record, "namespace"),
            model=_text(record, "model"),
            model_digest=_text(record, "model_digest"),
            question=record.get("question") if isinstance(record.get("question"), str) else None,
            embedding=vector,
            response=record["response"],
            prompt_tokens=int(record.get("prompt_tokens", 0)),
            completion_tokens=int(record.get("completion_tokens", 0)),
            generation_s=float(record.get("generation_s", 0.0)),
            created=float(record["created"]),
            last_hit=float(record.get("last_hit", record["created"])),
            hits=int(record.get("hits", 0)),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise CacheError(f"{where}: bad entry: {exc}") from exc


def _text(record: dict[str, Any], key: str) -> str:
    value = record[key]
    if not isinstance(value, str) or not value:
        raise ValueError(f"{key} must be a non-empty string")
    return value
