"""What an unauthenticated TCP peer can hold: a few connections, a few seconds, a few guesses.

Before these limits a TCP peer could open connections and send nothing (no deadline before the
first request), open them without bound (using up the file descriptors the Unix socket needs
too), and guess tokens as fast as it liked.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from edgeinfer.server.auth import FailedLogins
from tests.conftest import Daemon, short_socket_dir, start_daemon

TOKEN = "tcp-limits-token-0123456789abcdef"
HEADER_TIMEOUT = 1.5
MAX_TCP = 4
FAILURES = 3


def test_failed_logins_wait_out_the_oldest_failure() -> None:
    now = [1000.0]
    f = FailedLogins(per_minute=3, clock=lambda: now[0], max_hosts=2)
    for _ in range(3):
        assert f.wait("a") == 0
        f.failed("a")
    assert f.wait("a") == pytest.approx(60.0)
    now[0] += 59.0
    assert f.wait("a") == pytest.approx(1.0)
    now[0] += 1.0
    assert f.wait("a") == 0  # the first failure left the window
    f.failed("b")
    f.failed("c")  # two hosts at most: "a" (least recent) is forgotten
    assert f.wait("a") == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def tcp_daemon(tiny_path: object) -> Iterator[tuple[Daemon, int]]:
    home = short_socket_dir() / "home"
    (home / "config").mkdir(parents=True)
    (home / "config" / "models.toml").write_text(
        f"[server]\nheader_timeout_s = {HEADER_TIMEOUT}\nmax_tcp_connections = {MAX_TCP}\n"
        f"auth_failures_per_minute = {FAILURES}\n"
    )
    port = _free_port()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EDGEINFER_TOKEN", TOKEN)
        d = start_daemon("--models", "tiny", "--tcp", f"127.0.0.1:{port}", home=home)
    yield d, port
    d.stop()


def _closed_by_server(conn: socket.socket, limit: float = 30.0) -> bytes:
    """Read until the server closes; fails if it keeps the connection past ``limit``."""
    conn.settimeout(limit)
    data = b""
    while chunk := conn.recv(4096):
        data += chunk
    return data


@pytest.mark.real
def test_a_silent_tcp_peer_is_closed_after_the_header_timeout(
    tcp_daemon: tuple[Daemon, int],
) -> None:
    d, port = tcp_daemon
    with socket.create_connection(("127.0.0.1", port)) as conn:
        assert _closed_by_server(conn) == b""
    with socket.create_connection(("127.0.0.1", port)) as conn:  # slowloris: a byte at a time
        conn.settimeout(30.0)
        head = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: "
        sent_all = True
        for byte in head + b"a" * 200:
            try:
                conn.send(bytes([byte]))
            except OSError:
                sent_all = False
                break
            time.sleep(0.05)  # 240 bytes over ~12 s, far past the 1.5 s deadline
        if sent_all:
            assert _closed_by_server(conn) == b""
    with d.client() as c:
        assert c.get("/health").status_code == 200


@pytest.mark.real
def test_tcp_connections_past_the_cap_get_503_and_the_socket_still_serves(
    tcp_daemon: tuple[Daemon, int],
) -> None:
    d, port = tcp_daemon
    held = [socket.create_connection(("127.0.0.1", port)) for _ in range(MAX_TCP)]
    try:
        time.sleep(0.2)
        with socket.create_connection(("127.0.0.1", port)) as extra:
            reply = _closed_by_server(extra)
        assert reply.startswith(b"HTTP/1.1 503") and b'"code": "busy"' in reply
        with d.client() as c:  # the owner's socket is not limited
            assert c.get("/health").status_code == 200
    finally:
        for conn in held:
            conn.close()
    time.sleep(0.2)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    assert httpx.get(f"http://127.0.0.1:{port}/health", headers=auth).status_code == 200


@pytest.mark.real
def test_too_many_wrong_tokens_make_that_address_wait(tcp_daemon: tuple[Daemon, int]) -> None:
    d, port = tcp_daemon
    url = f"http://127.0.0.1:{port}/health"
    other = httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.2"))
    with other:
        for _ in range(FAILURES):
            assert other.get(url, headers={"Authorization": "Bearer wrong"}).status_code == 401
        r = other.get(url, headers={"Authorization": f"Bearer {TOKEN}"})
        assert r.status_code == 429, r.text
        assert r.json()["error"]["code"] == "rate_limit_exceeded"
        assert 1 <= int(r.headers["Retry-After"]) <= 60
    auth = {"Authorization": f"Bearer {TOKEN}"}
    assert httpx.get(url, headers=auth).status_code == 200  # another address is not affected
    with d.client() as c:
        assert c.get("/health").status_code == 200


@pytest.mark.real
def test_the_cache_is_partitioned_by_who_asks(tcp_daemon: tuple[Daemon, int]) -> None:
    """A token holder on TCP never gets the socket owner's cached answer, nor its question."""
    d, port = tcp_daemon
    body = {
        "model": "tiny",
        "messages": [{"role": "user", "content": "What colour is a ripe banana?"}],
        "max_tokens": 8,
        "temperature": 0,
    }

    def cache_of(reply: httpx.Response) -> object:
        """The cache layer that answered, None for a generation."""
        assert reply.status_code == 200, reply.text
        return (reply.json()["edgeinfer"].get("cache") or {}).get("layer")

    with d.client() as c:
        assert cache_of(c.post("/v1/chat/completions", json=body)) is None  # generated
        assert cache_of(c.post("/v1/chat/completions", json=body)) == "exact"  # own repeat
    auth = {"Authorization": f"Bearer {TOKEN}"}
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    assert cache_of(httpx.post(url, json=body, headers=auth, timeout=120)) is None
    assert cache_of(httpx.post(url, json=body, headers=auth, timeout=120)) == "exact"
