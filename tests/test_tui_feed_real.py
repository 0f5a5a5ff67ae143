"""The live ``/stats`` feed the TUI follows, against the real daemon serving ``tiny``."""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
from pathlib import Path

import pytest

from edgeinfer.client import AsyncClient
from edgeinfer.errors import DaemonError
from tests.conftest import Daemon, start_daemon

pytestmark = pytest.mark.real
QUESTION = [{"role": "user", "content": "Say hi."}]


async def test_feed_streams_snapshots_and_counts_a_request(daemon: Daemon) -> None:
    async with AsyncClient(daemon.socket) as feed_client, AsyncClient(daemon.socket) as asker:
        feed = feed_client.stream_stats(interval=0.2)
        first = await anext(feed)
        before = first["models"]["tiny"]["requests"]
        reply = await asker.chat(QUESTION, model="tiny", max_tokens=4, edgeinfer={"cache": "off"})
        assert reply["choices"][0]["message"]["content"] is not None
        times = [first["time"]]
        async for snap in feed:
            times.append(snap["time"])
            if snap["models"]["tiny"]["requests"] == before + 1:
                break
        await feed.aclose()
    assert times == sorted(times) and len(set(times)) == len(times)
    assert {"models", "cache", "time"} <= set(first)


def test_stats_negotiates_json_or_the_feed(daemon: Daemon) -> None:
    with daemon.client() as c:
        plain = c.get("/stats")
        assert plain.headers["content-type"].startswith("application/json")
        assert "tiny" in plain.json()["models"]
        accept = {"Accept": "text/event-stream"}
        with c.stream("GET", "/stats", headers=accept, params={"interval": 0.5}) as r:
            assert r.headers["content-type"].startswith("text/event-stream")
            line = next(line for line in r.iter_lines() if line)
        assert line.startswith("data: ")
        assert "tiny" in json.loads(line[6:])["models"]


@pytest.mark.parametrize("interval", ["0", "61", "abc", "nan"])
def test_feed_interval_is_validated(daemon: Daemon, interval: str) -> None:
    with daemon.client() as c:
        r = c.get("/stats/stream", params={"interval": interval})
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "interval"


def test_feed_stays_out_of_the_openapi_schema(daemon: Daemon) -> None:
    """A schema-driven fuzzer reads whole bodies; an endless one must not be in the schema."""
    with daemon.client() as c:
        paths = c.get("/openapi.json").json()["paths"]
    assert "/stats" in paths and "/stats/stream" not in paths


async def test_sigterm_ends_open_feeds_so_shutdown_is_not_held(tiny_path: Path) -> None:
    """uvicorn drains responses before the app's shutdown; an open feed must end by itself
    (cleanly, not cut off when the graceful timeout runs out)."""
    d = start_daemon("--models", "tiny")
    try:
        async with AsyncClient(d.socket) as client:
            events = 0
            async for _ in client.stream_stats(interval=0.2):
                events += 1
                if events == 2:
                    d.proc.send_signal(signal.SIGTERM)
            # Reaching here means the stream ended normally (a cut connection raises).
        code = await asyncio.to_thread(d.proc.wait, 60)
        assert code in (0, -signal.SIGTERM)
        log = d.output()
        assert "graceful shutdown exceeded" not in log
        assert "Application shutdown complete" in log
    finally:
        d.stop(signal.SIGKILL)
        shutil.rmtree(d.socket.parent, ignore_errors=True)


async def test_client_reports_a_killed_daemon_and_reconnects_to_its_successor(
    tiny_path: Path,
) -> None:
    """What the TUI's reconnect relies on, with the real client: a daemon that dies mid-feed
    is a ``DaemonError`` (not an httpx error), and the same client follows the next daemon on
    the same socket."""
    first = start_daemon("--models", "tiny")
    second = None
    try:
        async with AsyncClient(first.socket) as client:
            feed = client.stream_stats(interval=0.2)
            await anext(feed)
            first.proc.kill()
            with pytest.raises(DaemonError):
                async for _ in feed:
                    pass
            await asyncio.to_thread(first.proc.wait, 60)
            with pytest.raises(DaemonError, match="no edgeinfer daemon answers"):
                await client.models()
            second = start_daemon("--models", "tiny", socket=first.socket, home=first.home)
            feed = client.stream_stats(interval=0.2)
            snap = await anext(feed)
            await feed.aclose()
            assert snap["models"]["tiny"]["requests"] == 0  # a fresh daemon's counters
    finally:
        for d in (first, second):
            if d is not None:
                d.stop(signal.SIGKILL)
        shutil.rmtree(first.socket.parent, ignore_errors=True)
