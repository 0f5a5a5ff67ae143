"""``edgeinfer cache export`` / ``import``: the cache as JSON Lines.

The first line is a header (format, version, embedding dim and embedder); each further line is
one entry with its embedding as base64 float32. Entries already cached (same exact key) are
skipped. Vectors of another dimension or embedder are dropped on import (those entries stay
usable by the exact layer).

An export file may come from anyone, so nothing in it is trusted: keys must be sha256 digests,
vectors finite and are L2-normalised (a scaled one would outrank every true match), timestamps
are clamped to now (a future one would never expire), counts and sizes are bounded. A line that
fails is skipped and counted by reason (:class:`ImportReport`), and the rest is imported.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import math
import os
import re
import sqlite3
import stat
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TypeGuard

import numpy as np
from numpy.typing import NDArray

from edgeinfer.cache.entry import CacheEntry
from edgeinfer.cache.rows import entry_bytes, serialise
from edgeinfer.errors import CacheError

FORMAT = "edgeinfer-cache"
VERSION = 1
COLUMNS = (
    "exact_key, namespace, model, model_digest, question, response, prompt_tokens,"
    " completion_tokens, generation_s, created, last_hit, hits"
)
"""The ``entries`` columns an export row is built from, in :func:`row_to_json`'s order."""
KEY_SHAPE = re.compile(r"[0-9a-f]{64}")
"""Exact and namespace keys are sha256 hex digests (cache/key.py)."""
MAX_LINE_BYTES = 32 << 20
"""A line's bound: a question from an 8 MiB request body, its answer and its vector fit."""
MAX_MODEL_CHARS = 256
MAX_DIGEST_CHARS = 1024  # a file's sha256, or "router:<tiers>" / "remote:<url>:<model>"
MAX_TOKENS = 1 << 30
MAX_HITS = 1 << 40
MAX_GENERATION_S = 7 * 86400
IMPORT_BATCH = 500


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
    """Write atomically (temporary sibling, then rename); the number of entries written.

    Only over a regular file or a new name: the rename would replace a symlink, a FIFO or a
    device (``/dev/full`` as root) with a plain file instead of writing through it."""
    path = Path(path)
    with contextlib.suppress(FileNotFoundError):
        if not stat.S_ISREG(path.lstat().st_mode):
            raise CacheError(f"{path} exists and is not a regular file; export to a new name")
    if not path.parent.is_dir():
        raise CacheError(f"{path.parent} is not a folder; create it first")
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


@dataclass
class ImportReport:
    """What an import did: entries added, valid ones already cached, bad lines by reason."""

    added: int = 0
    duplicates: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    foreign_vectors: str | None = None
    """The maker the file's vectors came from, when they were dropped (not this cache's)."""

    def summary(self) -> str:
        """``imported N entries, skipped M: reasons`` (and how many were cached already, and
        whether their vectors were dropped)."""
        text = f"imported {self.added} entries"
        if self.duplicates:
            text += f" ({self.duplicates} already cached)"
        if self.skipped:
            reasons = ", ".join(f"{n} {why}" for why, n in sorted(self.skipped.items()))
            text += f", skipped {self.skipped.total()}: {reasons}"
        if self.foreign_vectors is not None:
            text += (
                f"; their vectors were made by {self.foreign_vectors}, not this cache's"
                " embedder, so they answer exact repeats only"
            )
        return text


@dataclass(frozen=True)
class Limits:
    """What the importing store accepts: its vectors, its clock and TTL, its byte cap."""

    dim: int
    embedder: str
    now: float
    ttl_s: float | None
    max_bytes: int


class _Bad(ValueError):
    """A line to skip; ``reason`` is what the import report counts."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def load(path: Path, limits: Limits, insert: Callable[[list[CacheEntry]], int]) -> ImportReport:
    """Read ``path`` and hand its valid entries to ``insert`` in batches (it returns how many
    were new); what happened, line by line, is in the report."""
    report = ImportReport()
    valid = 0
    batch: list[CacheEntry] = []
    for entry in read_jsonl(path, limits, report):
        valid += 1
        batch.append(entry)
        if len(batch) == IMPORT_BATCH:
            report.added, batch = report.added + insert(batch), []
    report.added += insert(batch) if batch else 0
    report.duplicates = valid - report.added
    return report


def read_jsonl(path: Path, limits: Limits, report: ImportReport) -> Iterator[CacheEntry]:
    """The valid entries of an export file, normalised; each bad line is counted in ``report``.

    Only a file that is not an export at all (unreadable, or without the header) raises
    :class:`CacheError`: one bad line must not cost the rest of a large file.
    """
    try:
        with Path(path).open("rb") as lines:
            try:
                head = _parse(next(_lines(lines), b""))
            except _Bad:
                head = {}
            if head.get("format") != FORMAT or head.get("version") != VERSION:
                raise CacheError(
                    f"{path}: not an edgeinfer cache export (format {FORMAT} v{VERSION})"
                )
            keep_vectors = head.get("dim") == limits.dim and head.get("embedder") == limits.embedder
            if not keep_vectors:
                report.foreign_vectors = f"{head.get('embedder')}/{head.get('dim')}"
            for raw in _lines(lines):
                if raw is not None and not raw.strip():
                    continue
                try:
                    yield _entry(_parse(raw), limits, keep_vectors)
                except _Bad as bad:
                    report.skipped[bad.reason] += 1
    except OSError as exc:
        raise CacheError(f"cannot read {path}: {exc.strerror}") from exc


def _lines(lines: IO[bytes]) -> Iterator[bytes | None]:
    """Each line, or None for one over ``MAX_LINE_BYTES`` (read past, never held in memory)."""
    while raw := lines.readline(MAX_LINE_BYTES + 1):
        if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
            while (rest := lines.readline(1 << 20)) and not rest.endswith(b"\n"):
                pass
            yield None
        else:
            yield raw


def _parse(raw: bytes | None) -> dict[str, Any]:
    if raw is None:
        raise _Bad("line too long")
    try:
        value = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise _Bad("not UTF-8") from exc
    except ValueError as exc:  # JSONDecodeError, or a number too long to convert
        raise _Bad("invalid JSON") from exc
    if not isinstance(value, dict):
        raise _Bad("not a JSON object")
    return value


def _entry(record: dict[str, Any], limits: Limits, keep_vectors: bool) -> CacheEntry:
    """One line as a :class:`CacheEntry` the store can trust, or :class:`_Bad` saying why not."""
    exact, namespace = _key(record, "exact_key"), _key(record, "namespace")
    question, response = record.get("question"), record.get("response")
    if (question is not None and not isinstance(question, str)) or not _response(response):
        raise _Bad("bad field")
    created, last_hit = _times(record, limits)
    vector = None
    if keep_vectors and question and record.get("embedding") is not None:
        vector = _unit_vector(record["embedding"], limits.dim)
    entry = CacheEntry(
        exact_key=exact,
        namespace=namespace,
        model=_name(record, "model", MAX_MODEL_CHARS),
        model_digest=_name(record, "model_digest", MAX_DIGEST_CHARS),
        question=question,
        embedding=vector,  # a vector without its question can never be served: dropped
        response=response,
        prompt_tokens=_number(record, "prompt_tokens", int, MAX_TOKENS),
        completion_tokens=_number(record, "completion_tokens", int, MAX_TOKENS),
        generation_s=float(_number(record, "generation_s", float, MAX_GENERATION_S)),
        created=created,
        last_hit=last_hit,
        hits=_number(record, "hits", int, MAX_HITS),
    )
    if entry_bytes(entry, serialise(entry)) > limits.max_bytes:
        raise _Bad("larger than the cache")
    return entry


def _key(record: dict[str, Any], key: str) -> str:
    value = record.get(key)
    if not isinstance(value, str) or not KEY_SHAPE.fullmatch(value):
        raise _Bad("bad key")
    return value


def _response(value: Any) -> TypeGuard[dict[str, Any]]:
    """A JSON object whose fields the service serves (``content``, ``finish_reason``) are text."""
    return (
        isinstance(value, dict)
        and isinstance(value.get("content", ""), str)
        and isinstance(value.get("finish_reason", ""), str)
        and len(value.get("finish_reason", "")) <= 32
    )


def _name(record: dict[str, Any], key: str, limit: int) -> str:
    value = record.get(key)
    if not isinstance(value, str) or not value or len(value) > limit or not value.isprintable():
        raise _Bad("bad field")
    return value


def _number(record: dict[str, Any], key: str, kind: type[int] | type[float], limit: int) -> Any:
    """A count or a duration: a finite JSON number (an int for counts) in [0, limit]."""
    value = record.get(key, 0)
    kinds = (int,) if kind is int else (int, float)
    # the comparison also refuses NaN and infinities, and never converts a huge int to float
    if isinstance(value, bool) or not isinstance(value, kinds) or not 0 <= value <= limit:
        raise _Bad("bad field")
    return value


def _times(record: dict[str, Any], limits: Limits) -> tuple[float, float]:
    """(created, last_hit) clamped to now, so an entry from "the future" still expires; an
    entry already past the store's TTL is not imported."""
    created = _time(record.get("created"), limits.now)
    last_hit = _time(record.get("last_hit", created), limits.now)
    if limits.ttl_s is not None and created < limits.now - limits.ttl_s:
        raise _Bad("expired")
    return created, max(last_hit, created)


def _time(value: Any, now: float) -> float:
    """A positive time, at most ``now`` (compared before any conversion: ints may be huge)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < math.inf:
        raise _Bad("bad timestamp")
    return now if value >= now else float(value)


def _unit_vector(blob: Any, dim: int) -> NDArray[np.float32]:
    """The base64 float32 vector, checked and L2-normalised: cosine is a dot product of unit
    vectors, so a scaled vector would outrank every true match."""
    try:
        raw = base64.b64decode(blob, validate=True) if isinstance(blob, str) else b""
    except binascii.Error as exc:
        raise _Bad("bad vector") from exc
    if not raw:
        raise _Bad("bad vector")
    if len(raw) != dim * 4:
        raise _Bad("wrong vector length")
    vector = np.frombuffer(raw, dtype=np.float32).astype(np.float64)
    if not np.isfinite(vector).all():
        raise _Bad("vector not finite")
    norm = float(np.linalg.norm(vector))
    if norm < 1e-12:
        raise _Bad("zero vector")
    return (vector / norm).astype(np.float32)
