"""What the store records next to each model file, and the file primitives it relies on.

``manifest.json`` says which file this is (size, sha256, where it came from) and carries a
*verified stamp*: the file's (size, mtime_ns, inode) when its sha256 was last checked. Hashing a
1 GB file costs about 1.5 s, so :class:`edgeinfer.models.store.ModelStore` rehashes only when the
stamp no longer matches. Coarse file-system clocks can give a rewrite the same mtime as the write
before it, so a stamp only vouches for files whose mtime was already :data:`RACY_NS` old when it
was taken (git's "racy clean" rule); the store backdates the files it writes so they qualify.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edgeinfer.errors import ModelStoreError
from edgeinfer.models.progress import Bar

MODEL_FILE = "model.gguf"
MANIFEST_FILE = "manifest.json"
CHUNK = 1 << 20
RACY_NS = 2_000_000_000
"""A stamp does not vouch for a file modified this close to when the stamp was taken."""


@dataclass(frozen=True)
class Stamp:
    """The identity of a file's content as the file system sees it, when it was last hashed."""

    size: int
    mtime_ns: int
    inode: int
    checked_ns: int = 0

    @classmethod
    def of(cls, st: os.stat_result, checked_ns: int) -> Stamp:
        return cls(size=st.st_size, mtime_ns=st.st_mtime_ns, inode=st.st_ino, checked_ns=checked_ns)

    def vouches_for(self, st: os.stat_result) -> bool:
        """Whether ``st`` is the file that was hashed, so the hash need not be recomputed."""
        same = (st.st_size, st.st_mtime_ns, st.st_ino) == (self.size, self.mtime_ns, self.inode)
        return same and self.mtime_ns + RACY_NS <= self.checked_ns


@dataclass(frozen=True)
class Manifest:
    """The JSON record of one stored model (see the module docstring)."""

    name: str
    file: str
    size: int
    sha256: str
    source: dict[str, Any]
    verified: Stamp
    created: str
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("extra")
        return {**self.extra, **data}

    @classmethod
    def from_json(cls, data: Any) -> Manifest:
        """Parse a manifest; ``ValueError``/``TypeError``/``KeyError`` on a malformed one."""
        known = {"name", "file", "size", "sha256", "source", "verified", "created"}
        if not isinstance(data, dict) or not isinstance(data.get("source"), dict):
            raise ValueError("not a manifest object")
        stamp = Stamp(**{k: int(v) for k, v in data["verified"].items()})
        return cls(
            name=str(data["name"]),
            file=str(data["file"]),
            size=int(data["size"]),
            sha256=str(data["sha256"]),
            source=dict(data["source"]),
            verified=stamp,
            created=str(data["created"]),
            extra={k: v for k, v in data.items() if k not in known},
        )


def read_manifest(path: Path) -> Manifest | None:
    """The manifest at ``path``; None when there is none, ModelStoreError when it is unreadable."""
    try:
        raw = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ModelStoreError(f"{path}: cannot read the manifest: {exc.strerror}") from exc
    try:
        return Manifest.from_json(json.loads(raw))
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise ModelStoreError(f"{path}: damaged manifest ({exc})") from exc


def write_manifest(path: Path, manifest: Manifest) -> None:
    """Replace the manifest atomically: readers see the old one or the new one, never half."""
    text = json.dumps(manifest.to_json(), indent=2, sort_keys=True) + "\n"
    atomic_write_bytes(path, text.encode())


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write a small file via a temporary sibling, fsync and rename."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), 0o644)  # mkstemp makes it 0600; the store is not secret
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def fsync_file(path: Path) -> None:
    """Flush a finished download to disk before it is renamed into place."""
    with path.open("rb+") as fh:
        os.fsync(fh.fileno())


def fsync_dir(path: Path) -> None:
    """Make a rename in ``path`` durable (a crash must not resurrect the old name)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def backdate(path: Path, now_ns: int) -> None:
    """Set the mtime of a file the store just wrote ``RACY_NS`` into the past.

    Any later rewrite then gets a different mtime even on a coarse clock, so a stamp taken now
    can vouch for the file at once instead of costing a second hash on first use.
    """
    past = now_ns - RACY_NS - 1_000_000_000
    os.utime(path, ns=(past, past))


def hash_file(path: Path, bar: Bar | None = None) -> str:
    """The sha256 of ``path``, read in 1 MiB chunks (memory stays flat for 1 GB files)."""
    digest = hashlib.sha256()
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    with path.open("rb", buffering=0) as fh:
        while n := fh.readinto(view):
            digest.update(view[:n])
            if bar is not None:
                bar.advance(n)
    return digest.hexdigest()
