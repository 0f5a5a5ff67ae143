"""Checking a stored model file against what it must be: size first, then sha256.

Called by :class:`edgeinfer.models.store.ModelStore` (``verify``/``ensure``/``digest`` and the
rows of ``models list``). Expected values come from the catalogue entry when it pins them, else
from the manifest written at pull time. The sha256 is recomputed only when the manifest's
verified stamp no longer vouches for the file (see ``manifest.py``).
"""

from __future__ import annotations

import time
from contextlib import suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from edgeinfer.config.schema import ModelSpec
from edgeinfer.errors import IntegrityError, ModelStoreError
from edgeinfer.models import manifest as mf
from edgeinfer.models.manifest import MANIFEST_FILE, MODEL_FILE, Manifest, Stamp
from edgeinfer.models.progress import Meter


@dataclass(frozen=True)
class ModelInfo:
    """One row of ``edgeinfer models list``; ``verified`` means the stamp still vouches for it."""

    name: str
    spec: ModelSpec
    pulled: bool
    path: Path | None
    size: int | None
    sha256: str | None
    error: str | None
    verified: bool = False

    @property
    def status(self) -> str:
        """``missing``, ``corrupt``, ``verified`` or ``pulled`` (present, not checked since)."""
        if not self.pulled:
            return "missing"
        if self.error:
            return "corrupt"
        return "verified" if self.verified else "pulled"


def verify_file(name: str, spec: ModelSpec, folder: Path, meter: Meter) -> Manifest:
    """Check ``folder/model.gguf``; return its (refreshed) manifest or raise.

    Raises:
        ModelStoreError: not pulled, or nothing records what the file should be.
        IntegrityError: wrong size (truncated) or wrong sha256 (corrupt); never handed out.
    """
    path = folder / MODEL_FILE
    checked_ns = time.time_ns()
    try:
        st = path.stat()
    except FileNotFoundError:
        raise ModelStoreError(
            f"model {name!r} is not pulled ({path} is missing); run `edgeinfer models pull {name}`"
        ) from None
    manifest, size, sha = expected(name, spec, folder)
    if manifest is not None and source_changed(spec, manifest):
        raise ModelStoreError(
            f"model {name!r}: its source changed since it was pulled (was {manifest.source}); "
            f"run `edgeinfer models pull {name}`"
        )
    if st.st_size != size:
        raise IntegrityError(
            f"{path}: size is {st.st_size:,} bytes, expected {size:,} (truncated or damaged "
            f"file); run `edgeinfer models pull {name} --force`"
        )
    if manifest is not None and manifest.sha256 == sha and manifest.verified.vouches_for(st):
        return manifest
    with meter.task(f"sha256 {name}", total=st.st_size) as bar:
        actual = mf.hash_file(path, bar)
    if actual != sha and manifest is not None and manifest.sha256 == actual:
        raise IntegrityError(  # intact as pulled: the pin is what changed (or is mistyped)
            f"{path}: sha256 is {actual}, as it was pulled, but the catalogue pins {sha}; "
            f"check that sha256, or run `edgeinfer models pull {name} --force` to fetch "
            "the file it names"
        )
    if actual != sha:
        raise IntegrityError(
            f"{path}: sha256 is {actual}, expected {sha} (corrupt file); "
            f"run `edgeinfer models pull {name} --force`"
        )
    fresh = new_manifest(name, spec, size, sha, Stamp.of(st, checked_ns), manifest)
    with suppress(OSError):  # a read-only store still verifies; it just rehashes next time
        mf.write_manifest(folder / MANIFEST_FILE, fresh)
    return fresh


def expected(name: str, spec: ModelSpec, folder: Path) -> tuple[Manifest | None, int, str]:
    """The manifest (if readable) and the size and sha256 the file must have."""
    try:
        manifest = mf.read_manifest(folder / MANIFEST_FILE)
    except ModelStoreError:
        if spec.size is None or spec.sha256 is None:
            raise
        manifest = None  # the catalogue pins both, so a damaged manifest is only a lost stamp
    size = spec.size if spec.size is not None else (manifest.size if manifest else None)
    sha = spec.sha256 or (manifest.sha256 if manifest else None)
    if size is None or sha is None:
        raise ModelStoreError(
            f"{folder / MODEL_FILE}: no record of what this file should be (manifest missing); "
            f"run `edgeinfer models pull {name} --force`"
        )
    return manifest, size, sha


def info(name: str, spec: ModelSpec, folder: Path, meter: Meter, *, verify: bool) -> ModelInfo:
    """A list row. Without ``verify`` only sizes and stamps are looked at, never file contents."""
    path = folder / MODEL_FILE
    if not path.exists():
        return ModelInfo(name, spec, False, None, None, None, None)
    try:
        if verify:
            checked = verify_file(name, spec, folder, meter)
            return ModelInfo(name, spec, True, path, checked.size, checked.sha256, None, True)
        manifest, size, sha = expected(name, spec, folder)
        if source_changed(spec, manifest):
            return ModelInfo(name, spec, True, path, None, None, "its source changed; pull it")
        st = path.stat()
        if st.st_size != size:
            error = f"{path}: size is {st.st_size:,} bytes, expected {size:,}"
            return ModelInfo(name, spec, True, path, st.st_size, None, error)
        vouched = manifest is not None and manifest.sha256 == sha
        vouched = vouched and manifest is not None and manifest.verified.vouches_for(st)
        return ModelInfo(name, spec, True, path, size, sha, None, vouched)
    except ModelStoreError as exc:
        return ModelInfo(name, spec, True, path, None, None, exc.message)


def new_manifest(
    name: str, spec: ModelSpec, size: int, sha: str, stamp: Stamp, previous: Manifest | None
) -> Manifest:
    """The manifest for a file just checked; keeps the creation time of the one it replaces."""
    created = previous.created if previous else datetime.now(UTC).isoformat(timespec="seconds")
    return Manifest(
        name=name,
        file=MODEL_FILE,
        size=size,
        sha256=sha,
        source=source_dict(spec.source),
        verified=stamp,
        created=created,
    )


def source_changed(spec: ModelSpec, manifest: Manifest | None) -> bool:
    """Whether an unpinned model's file came from another source than the catalogue names now
    (a ``path`` pointed at another file): nothing else vouches for it, so it is fetched again.
    A pinned file is judged by its pin, wherever it came from."""
    if spec.sha256 is not None or manifest is None:
        return False
    return manifest.source != source_dict(spec.source)


def source_dict(source: Any) -> dict[str, Any]:
    """A catalogue source as the manifest records it (``from``, not ``from_``)."""
    data: dict[str, Any] = source.model_dump(by_alias=True)
    return data
