"""What a ``url`` model source trusts, against real local servers (HTTP and self-signed HTTPS).

Plain http:// needs a pinned sha256, also as a redirect target; a resume is validated with
If-Range and starts over when the file changed; a download stops past the size it may have.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import ssl
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from edgeinfer.config.schema import Catalogue, ModelSpec, UrlSource
from edgeinfer.errors import ModelStoreError
from edgeinfer.models import ModelStore
from edgeinfer.models.progress import Meter
from edgeinfer.models.sources import UrlFetcher

OLD = bytes(range(256)) * 12288 + b"old"  # 3 MiB + a tail: several read chunks
NEW = bytes(range(255, -1, -1)) * 12288 + b"new!"
CUT = 1_500_000
sha = lambda data: hashlib.sha256(data).hexdigest()  # noqa: E731


@pytest.fixture(autouse=True)
def _no_proxies(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(var, raising=False)


@dataclass
class Site:
    """What a server serves now, and every request it saw: (path, Range, If-Range, status)."""

    url: str = ""
    payload: bytes = OLD
    etag: str = '"v1"'
    cut_after: int | None = None  # send this many body bytes, then drop the connection
    redirect_to: str = ""
    seen: list[tuple[str, str | None, str | None, int]] = field(default_factory=list)


class _Handler(BaseHTTPRequestHandler):
    server: Any

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        site: Site = self.server.site
        wanted, if_range = self.headers.get("Range"), self.headers.get("If-Range")
        if self.path == "/redirect.gguf":
            self._head(site, 302, {"Location": site.redirect_to, "Content-Length": "0"})
            return
        if self.path == "/endless.gguf":  # no Content-Length: the body ends when it closes
            self._head(site, 200, {})
            block = b"\0" * 65536
            try:
                for _ in range(256):  # 16 MiB unless the client hangs up first
                    self.wfile.write(block)
            except OSError:
                pass
            return
        if self.path == "/liar.gguf":
            self._head(site, 200, {"Content-Length": str(64 << 20)})
            try:
                self.wfile.write(b"\0" * (4 << 20))
            except OSError:
                pass
            return
        body, status = site.payload, 200
        headers = {"ETag": site.etag}
        match = re.fullmatch(r"bytes=(\d+)-", wanted or "")
        if match and (if_range is None or if_range == site.etag):
            start = int(match[1])
            body, status = site.payload[start:], 206
            headers["Content-Range"] = f"bytes {start}-{len(site.payload) - 1}/{len(site.payload)}"
        headers["Content-Length"] = str(len(body))
        self._head(site, status, headers)
        self.wfile.write(body if site.cut_after is None else body[: site.cut_after])

    def _head(self, site: Site, status: int, headers: dict[str, str]) -> None:
        site.seen.append(
            (self.path, self.headers.get("Range"), self.headers.get("If-Range"), status)
        )
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


def _serve(site: Site, tls: ssl.SSLContext | None = None) -> Iterator[Site]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    if tls is not None:
        httpd.socket = tls.wrap_socket(httpd.socket, server_side=True)
    httpd.site = site  # type: ignore[attr-defined]
    scheme = "https" if tls is not None else "http"
    site.url = f"{scheme}://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield site
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


@pytest.fixture(scope="session")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1, made with the openssl command."""
    openssl = shutil.which("openssl")
    assert openssl is not None, "the https tests need the openssl command (.ci/run installs it)"
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


@pytest.fixture
def plain() -> Iterator[Site]:
    yield from _serve(Site())


@pytest.fixture
def secure(certificate: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> Iterator[Site]:
    cert, key = certificate
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # httpx trusts it like a system CA
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)
    yield from _serve(Site(), tls)


def _store(tmp_path: Path, url: str, **extra: Any) -> ModelStore:
    entry = {"name": "m", "source": {"type": "url", "url": url}, **extra}
    return ModelStore(tmp_path / "models", Catalogue.model_validate({"models": {"m": entry}}))


def _part(store: ModelStore) -> Path:
    return store.path_for("m").with_name("model.gguf.part")


# -- which URLs are trusted ------------------------------------------------------------------


def test_plain_http_without_a_pinned_sha256_is_refused(tmp_path: Path, plain: Site) -> None:
    with pytest.raises(ValidationError, match=r"an http:// source needs sha256"):
        _store(tmp_path, f"{plain.url}/model.gguf")  # the config check (`models check`) says so
    # and the fetcher refuses it too, should an entry reach it unchecked
    source = UrlSource(type="url", url=f"{plain.url}/model.gguf")
    catalogue = Catalogue.model_construct(
        models={"m": ModelSpec.model_construct(name="m", source=source)}
    )
    store = ModelStore(tmp_path / "models", catalogue)
    with pytest.raises(ModelStoreError, match=r"from http://.*: plain http:// without a pinned"):
        store.pull("m")
    assert plain.seen == [] and not store.path_for("m").exists()


def test_plain_http_with_a_pinned_sha256_downloads(tmp_path: Path, plain: Site) -> None:
    store = _store(tmp_path, f"{plain.url}/model.gguf", sha256=sha(OLD))
    assert store.pull("m").read_bytes() == OLD


def test_https_downloads_and_its_first_hash_is_recorded(tmp_path: Path, secure: Site) -> None:
    store = _store(tmp_path, f"{secure.url}/model.gguf")
    assert store.pull("m").read_bytes() == OLD
    assert store.digest("m") == sha(OLD)
    assert sorted(p.name for p in store.path_for("m").parent.iterdir()) == [
        ".lock",
        "manifest.json",
        "model.gguf",
    ]


def test_a_redirect_from_https_to_http_needs_a_pin(
    tmp_path: Path, secure: Site, plain: Site
) -> None:
    secure.redirect_to = f"{plain.url}/model.gguf"
    store = _store(tmp_path, f"{secure.url}/redirect.gguf")
    with pytest.raises(ModelStoreError, match=r"redirect.*http://.*without a pinned sha256"):
        store.pull("m")
    assert plain.seen == []
    pinned = _store(tmp_path / "pinned", f"{secure.url}/redirect.gguf", sha256=sha(OLD))
    assert pinned.pull("m").read_bytes() == OLD
    assert [s[0] for s in plain.seen] == ["/model.gguf"]


# -- resuming --------------------------------------------------------------------------------


def _interrupted(tmp_path: Path, site: Site, **extra: Any) -> tuple[ModelStore, str]:
    """A store whose first pull died ``CUT`` bytes into the download, and its resume Range."""
    store = _store(tmp_path, f"{site.url}/model.gguf", **extra)
    site.cut_after = CUT
    with pytest.raises(ModelStoreError):
        store.pull("m")
    kept = _part(store).stat().st_size
    assert 0 < kept <= CUT
    site.cut_after = None
    site.seen.clear()
    return store, f"bytes={kept}-"


def test_a_resume_is_validated_with_if_range(tmp_path: Path, secure: Site) -> None:
    store, wanted = _interrupted(tmp_path, secure)
    assert store.pull("m").read_bytes() == OLD
    assert secure.seen == [("/model.gguf", wanted, '"v1"', 206)]


def test_a_changed_file_is_downloaded_again_from_zero(tmp_path: Path, secure: Site) -> None:
    store, wanted = _interrupted(tmp_path, secure)
    secure.payload, secure.etag = NEW, '"v2"'  # the file changed between the two pulls
    assert store.pull("m").read_bytes() == NEW  # not the old head glued to the new tail
    assert store.digest("m") == sha(NEW)
    assert secure.seen == [("/model.gguf", wanted, '"v1"', 200)]


def test_an_unvalidated_part_starts_over_unless_pinned(tmp_path: Path, secure: Site) -> None:
    store = _store(tmp_path, f"{secure.url}/model.gguf")
    _part(store).parent.mkdir(parents=True)
    _part(store).write_bytes(NEW[:CUT])  # left by an older edgeinfer: no validator kept
    assert store.pull("m").read_bytes() == OLD
    assert secure.seen == [("/model.gguf", None, None, 200)]


# -- size caps -------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/endless.gguf", "/liar.gguf"])
def test_a_download_past_the_catalogue_size_is_stopped(
    tmp_path: Path, plain: Site, path: str
) -> None:
    store = _store(tmp_path, f"{plain.url}{path}", size=100_000, sha256="0" * 64)
    with pytest.raises(ModelStoreError, match="more than the catalogue's size of 100,000 bytes"):
        store.pull("m")
    assert not _part(store).exists()


def test_without_a_size_the_global_cap_applies(tmp_path: Path, secure: Site) -> None:
    fetcher = UrlFetcher(f"{secure.url}/endless.gguf", meter=Meter(), label="m", max_bytes=200_000)
    dest = tmp_path / "model.gguf.part"
    with pytest.raises(ModelStoreError, match="more than the global cap of 200,000 bytes"):
        fetcher.fetch(dest)
    assert not dest.exists()
