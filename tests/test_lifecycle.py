"""Lifecycle: SIGTERM/SIGINT drain in-flight requests up to a deadline, then end the rest with a
clear error; systemd socket activation hands the daemon its socket on fd 3."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edgeinfer.server.daemon import accepts, systemd_sockets
from edgeinfer.server.drain import Drain
from tests.conftest import MODELS_DIR, Daemon, short_socket_dir, start_daemon, wait_healthy

NO_EOS = {"0": -100, "2": -100, "4": -100}  # tiny's end-of-generation tokens, never sampled
SLOW = 600.0  # read timeout: a 2-core box shared with other work can crawl
SCOPE = {"type": "http", "method": "POST", "path": "/v1/chat/completions", "headers": []}


# -- the drain middleware, on its own -----------------------------------------------------


class Wire:
    """What the middleware sent, as the server would see it."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []

    async def send(self, message: Any) -> None:
        self.messages.append(message)

    async def receive(self) -> Any:
        await asyncio.Event().wait()  # the client never hangs up

    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.messages[1:])

    def status(self) -> int:
        status: int = self.messages[0]["status"]
        return status


async def endless_stream(_: Any, __: Any, send: Any) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/event-stream; charset=utf-8")],
        }
    )
    await send({"type": "http.response.body", "body": b"data: {}\n\n", "more_body": True})
    await asyncio.Event().wait()


async def never_answers(*_: Any) -> None:
    await asyncio.Event().wait()


async def answers(_: Any, __: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


async def _until(condition: Any) -> None:
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition never held")


async def test_deadline_ends_a_stream_with_an_in_band_error() -> None:
    drain, wire = Drain(endless_stream), Wire()
    request = asyncio.ensure_future(drain(SCOPE, wire.receive, wire.send))
    await _until(lambda: len(wire.messages) == 2)
    drain.begin()
    assert drain.expire() == 1
    await request
    assert wire.status() == 200
    last = wire.messages[-1]
    assert last["more_body"] is False
    assert last["body"].startswith(b"data: ") and last["body"].endswith(b"\n\n")
    assert json.loads(last["body"][6:])["error"]["code"] == "shutting_down"
    assert drain.in_flight == 0


async def test_deadline_answers_503_when_nothing_was_sent_yet() -> None:
    drain, wire = Drain(never_answers), Wire()
    request = asyncio.ensure_future(drain(SCOPE, wire.receive, wire.send))
    await _until(lambda: drain.in_flight == 1)
    drain.begin()
    drain.expire()
    await request
    assert wire.status() == 503
    assert json.loads(wire.body())["error"]["code"] == "shutting_down"


async def test_requests_finishing_before_the_deadline_are_untouched() -> None:
    drain, wire = Drain(answers), Wire()
    await drain(SCOPE, wire.receive, wire.send)
    drain.begin()
    assert drain.expire() == 0
    assert (wire.status(), wire.body()) == (200, b"ok")
    late = Wire()  # a request arriving while draining is refused at once
    await drain(SCOPE, late.receive, late.send)
    assert late.status() == 503
    assert "not taking new requests" in json.loads(late.body())["error"]["message"]


@pytest.mark.parametrize(
    "env",
    [
        {"LISTEN_PID": "1", "LISTEN_FDS": "1"},  # meant for another process
        {"LISTEN_FDS": "1"},
        {"LISTEN_PID": "{pid}", "LISTEN_FDS": "x"},
        {"LISTEN_PID": "{pid}", "LISTEN_FDS": "0"},
        {},
    ],
)
def test_activation_env_that_is_not_ours_is_ignored(env: dict[str, str]) -> None:
    """fd 3 is taken only when LISTEN_PID names this process (the real case runs below)."""
    assert systemd_sockets({k: v.format(pid=os.getpid()) for k, v in env.items()}) == []


# -- on the real daemon -------------------------------------------------------------------


def _home(config: str) -> Path:
    home = short_socket_dir() / "home"
    (home / "config").mkdir(parents=True)
    (home / "config" / "models.toml").write_text(config)
    return home


def _stream_body(max_tokens: int) -> dict[str, Any]:
    return {
        "model": "tiny",
        "max_tokens": max_tokens,
        "logit_bias": NO_EOS,
        "stream": True,
        "messages": [{"role": "user", "content": "Tell me a long story."}],
    }


def _first_content(lines: Iterator[str]) -> None:
    for line in lines:
        if line.startswith("data: {") and json.loads(line[6:])["choices"][0].get("delta"):
            if json.loads(line[6:])["choices"][0]["delta"].get("content"):
                return
    raise AssertionError("the stream ended before any content")


def _wait_refusing(d: Daemon, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while accepts(d.socket):
        assert time.monotonic() < deadline, "the daemon kept accepting after the signal"
        time.sleep(0.05)


@pytest.mark.real
def test_sigterm_lets_an_in_flight_stream_finish(tiny_path: Path) -> None:
    # A deadline far beyond what the answer needs, even on a loaded 2-core box.
    d = start_daemon("--models", "tiny", home=_home("[server]\ndrain_seconds = 900\n"))
    with d.client(SLOW) as c, c.stream("POST", "/v1/chat/completions", json=_stream_body(60)) as r:
        lines = r.iter_lines()
        _first_content(lines)
        d.proc.send_signal(signal.SIGTERM)
        _wait_refusing(d)  # stopped accepting, yet the stream goes on
        rest = [line for line in lines if line.startswith("data: ")]
    assert rest[-1] == "data: [DONE]"
    events = [json.loads(line[6:]) for line in rest[:-1]]
    assert not [e for e in events if "error" in e]
    assert [e["choices"][0]["finish_reason"] for e in events if e.get("choices")][-1] == "length"
    assert [e["usage"]["completion_tokens"] for e in events if e.get("usage")] == [60]
    assert d.proc.wait(60) == 0
    assert not d.socket.exists()
    assert "draining: 1 request(s) in flight, deadline 900.0 s" in d.output()
    assert "Traceback" not in d.output()


@pytest.mark.real
def test_sigint_cuts_a_stream_at_the_drain_deadline(tiny_path: Path) -> None:
    d = start_daemon("--models", "tiny", home=_home("[server]\ndrain_seconds = 1\n"))
    with d.client() as c, c.stream("POST", "/v1/chat/completions", json=_stream_body(3000)) as r:
        lines = r.iter_lines()
        _first_content(lines)
        d.proc.send_signal(signal.SIGINT)
        rest = [line for line in lines if line.startswith("data: ")]
    assert "data: [DONE]" not in rest
    last = json.loads(rest[-1][6:])
    assert last["error"]["code"] == "shutting_down"
    assert "shut down before this request finished" in last["error"]["message"]
    assert d.proc.wait(60) == 0
    assert not d.socket.exists()
    assert "drain deadline passed: ended 1 request(s) with shutting_down" in d.output()
    assert "Traceback" not in d.output()


# A stand-in for systemd: bind the socket, put it on fd 3, name our pid, become the daemon.
ACTIVATOR = """
import os, socket, sys
path = sys.argv[1]
os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
old = os.umask(0o177)
sock.bind(path)
os.umask(old)
sock.listen(16)
if sock.fileno() != 3:
    os.dup2(sock.fileno(), 3)
os.set_inheritable(3, True)
os.environ.update(LISTEN_FDS="1", LISTEN_PID=str(os.getpid()))
daemon = [sys.executable, "-m", "edgeinfer", "serve", "--socket", path, *sys.argv[2:]]
os.execv(sys.executable, daemon)
"""


@pytest.mark.real
def test_systemd_socket_activation_serves_on_fd_3(tiny_path: Path) -> None:
    base = short_socket_dir()
    path, log = base / "run" / "edgeinfer.sock", base / "daemon.log"
    env = {**os.environ, "EDGEINFER_HOME": str(base / "home")}
    env["EDGEINFER_MODELS_DIR"] = str(MODELS_DIR)
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", ACTIVATOR, str(path), "--models", "tiny"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    d = Daemon(proc, path, base / "home", log)
    try:
        wait_healthy(d)  # refuse_if_live must not mistake the activated socket for a rival
        with d.client() as c:
            assert c.get("/health").json()["models"]["tiny"]["status"] == "ready"
        assert f"edgeinfer listening on {path}" in d.output()
    finally:
        assert d.stop(signal.SIGTERM) == 0
    # The socket belongs to systemd, which keeps listening for the next start.
    assert stat.S_ISSOCK(os.stat(path).st_mode)
    assert "Traceback" not in d.output()
