"""Saved sequence states beyond the slots: a byte-bounded RAM tier over a disk tier.

A state is the KV of one sequence holding exactly ``tokens``. It can be restored for a new
prompt only at one of its *boundaries* (the end of the prompt it served, and its full length),
and only when the prompt starts with exactly those tokens: keys are sha256 of the token prefix,
and the tokens themselves are compared before a restore. So an unrelated conversation is never
restored, and the restored KV is what evaluating that prefix would give. States evicted from RAM
spill to disk; the disk tier survives a daemon restart. Owned by one runner thread: no locks.

Disk file ``<sha256 of all tokens>.kv``: magic, token count, boundary count, boundaries,
tokens (int32), then the state bytes.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import struct
from array import array
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("edgeinfer.prefix")

_MAGIC = b"EIKV2\0\0\0"


def token_key(tokens: Sequence[int]) -> str:
    return hashlib.sha256(array("i", tokens).tobytes()).hexdigest()


@dataclass(frozen=True)
class Hit:
    tokens: list[int]  # the matched prefix: restore the state, then keep only these
    state: bytes
    tier: str  # "ram" | "disk"


@dataclass
class _Entry:
    keys: dict[int, str]  # boundary length -> key of tokens[:length]
    tokens: list[int] | None = None  # RAM tier
    state: bytes | None = None  # RAM tier
    path: Path | None = None  # disk tier


@dataclass
class PrefixStoreStats:
    saved: int = 0
    ram_hits: int = 0
    disk_hits: int = 0
    misses: int = 0
    spilled: int = 0
    restored_tokens: int = 0


class PrefixStore:
    """See module docstring. ``disk_dir=None`` keeps the RAM tier only."""

    def __init__(
        self, *, ram_bytes: int, disk_dir: Path | None, disk_bytes: int, min_tokens: int
    ) -> None:
        self.min_tokens = min_tokens
        self._ram_cap = ram_bytes
        self._disk_cap = disk_bytes
        self._dir = disk_dir
        self._entries: dict[str, _Entry] = {}
        self._ram: OrderedDict[str, int] = OrderedDict()  # entry id -> state bytes, LRU order
        self.stats = PrefixStoreStats()
        if disk_dir is not None:
            disk_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            for path in disk_dir.glob("*.kv"):
                self._index_file(path)

    @property
    def config(self) -> dict[str, Any]:
        """The keyword arguments this store was made with (a runner process makes its own)."""
        return {
            "ram_bytes": self._ram_cap,
            "disk_dir": self._dir,
            "disk_bytes": self._disk_cap,
            "min_tokens": self.min_tokens,
        }

    @property
    def ram_bytes(self) -> int:
        return sum(self._ram.values())

    def put(self, tokens: Sequence[int], state: bytes, bounds: Sequence[int] = ()) -> None:
        """Keep ``state`` (the KV of exactly ``tokens``) in RAM, spilling the oldest to disk."""
        if len(tokens) < self.min_tokens or len(state) > self._ram_cap:
            return
        entry_id = token_key(tokens)
        entry = self._entries.setdefault(entry_id, _Entry(_keys(tokens, bounds)))
        entry.tokens, entry.state = list(tokens), state
        self._ram[entry_id] = len(state)
        self._ram.move_to_end(entry_id)
        self.stats.saved += 1
        while sum(self._ram.values()) > self._ram_cap:
            old_id, _ = self._ram.popitem(last=False)
            old = self._entries[old_id]
            if old.tokens is not None and old.state is not None:
                self._write(old_id, old, old.tokens, old.state)
                self.stats.spilled += 1
            old.tokens = old.state = None
            if old.path is None:
                del self._entries[old_id]

    def lookup(self, prompt: Sequence[int], *, better_than: int) -> Hit | None:
        """The longest saved exact prefix of ``prompt`` longer than ``better_than`` tokens."""
        prompt_keys: dict[int, str] = {}
        options = [
            (n, entry_id)
            for entry_id, entry in self._entries.items()
            for n in entry.keys
            if better_than < n <= len(prompt)
        ]
        for n, entry_id in sorted(options, reverse=True):
            key = prompt_keys.setdefault(n, token_key(prompt[:n]))
            if self._entries[entry_id].keys[n] == key:
                hit = self._load(entry_id, list(prompt[:n]))
                if hit is not None:
                    self.stats.restored_tokens += n
                    return hit
        self.stats.misses += 1
        return None

    def _load(self, entry_id: str, prefix: list[int]) -> Hit | None:
        entry = self._entries[entry_id]
        if entry.tokens is not None and entry.state is not None:
            if entry.tokens[: len(prefix)] != prefix:
                return None
            self._ram.move_to_end(entry_id)
            self.stats.ram_hits += 1
            return Hit(prefix, entry.state, "ram")
        assert entry.path is not None
        try:
            tokens, _, state = _read(entry.path, with_state=True)
        except (OSError, ValueError) as exc:
            log.warning("dropping unreadable prompt-cache file %s: %s", entry.path, exc)
            self._drop(entry_id)
            return None
        if tokens[: len(prefix)] != prefix:
            return None
        os.utime(entry.path)  # LRU by mtime on disk
        self.stats.disk_hits += 1
        return Hit(prefix, state, "disk")

    def save_to_disk(self, tokens: Sequence[int], state: bytes, bounds: Sequence[int] = ()) -> None:
        """Write a state straight to the disk tier (every slot, at shutdown)."""
        if len(tokens) >= self.min_tokens:
            entry_id = token_key(tokens)
            entry = self._entries.setdefault(entry_id, _Entry(_keys(tokens, bounds)))
            self._write(entry_id, entry, tokens, state)

    def flush(self) -> None:
        """Copy every RAM state to disk (daemon shutdown)."""
        for entry_id in list(self._ram):
            entry = self._entries[entry_id]
            if entry.tokens is not None and entry.state is not None:
                self._write(entry_id, entry, entry.tokens, entry.state)

    def _write(self, entry_id: str, entry: _Entry, tokens: Sequence[int], state: bytes) -> None:
        if self._dir is None or entry.path is not None or len(state) > self._disk_cap:
            return
        bounds = sorted(entry.keys)
        path = self._dir / f"{entry_id}.kv"
        tmp = path.with_suffix(".part")
        header = _MAGIC + struct.pack("<II", len(tokens), len(bounds))
        with tmp.open("wb") as fh:
            fh.write(header + array("I", bounds).tobytes() + array("i", tokens).tobytes())
            fh.write(state)
        tmp.replace(path)
        entry.path = path
        self._evict_disk()

    def _index_file(self, path: Path) -> None:
        try:
            tokens, bounds, _ = _read(path, with_state=False)
        except (OSError, ValueError):
            log.warning("ignoring unreadable prompt-cache file %s", path)
            return
        self._entries[path.stem] = _Entry(_keys(tokens, bounds), path=path)

    def _evict_disk(self) -> None:
        on_disk = [(e.path.stat().st_mtime, i, e.path) for i, e in self._entries.items() if e.path]
        total = sum(p.stat().st_size for _, _, p in on_disk)
        for _, entry_id, path in sorted(on_disk):
            if total <= self._disk_cap:
                break
            total -= path.stat().st_size
            self._drop(entry_id)

    def _drop(self, entry_id: str) -> None:
        entry = self._entries[entry_id]
        if entry.path is not None:
            with contextlib.suppress(FileNotFoundError):
                entry.path.unlink()
            entry.path = None
        if entry.state is None:
            del self._entries[entry_id]


def _keys(tokens: Sequence[int], bounds: Sequence[int]) -> dict[int, str]:
    lengths = {b for b in bounds if 0 < b <= len(tokens)} | {len(tokens)}
    return {n: token_key(tokens[:n]) for n in lengths}


def _read(path: Path, *, with_state: bool) -> tuple[list[int], list[int], bytes]:
    with path.open("rb") as fh:
        head = fh.read(len(_MAGIC) + 8)
        if not head.startswith(_MAGIC) or len(head) < len(_MAGIC) + 8:
            raise ValueError("not an edgeinfer prompt-cache file")
        n, nb = struct.unpack_from("<II", head, len(_MAGIC))
        bounds, tokens = array("I"), array("i")
        bounds.frombytes(fh.read(4 * nb))
        tokens.frombytes(fh.read(4 * n))
        if len(tokens) != n or len(bounds) != nb:
            raise ValueError("truncated header")
        return tokens.tolist(), bounds.tolist(), fh.read() if with_state else b""
