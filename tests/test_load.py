"""Load and fault behaviour of the real daemon: a flood against a bounded queue, and clients
that hang up mid-stream. Every request is answered (200 or 503 busy), none is lost, every slot
is freed, and the daemon stays healthy with bounded memory."""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import Daemon, short_socket_dir, start_daemon

pytestmark = pytest.mark.real

BODY = {
    "model": "tiny",
    "max_tokens": 8,
    "temperature": 0.8,  # sampled: not served from the response cache
    "messages": [{"role": "user", "content": "Tell me something about the sea."}],
}


@pytest.fixture(scope="module")
def small_queue(tiny_path: Path) -> Iterator[Daemon]:
    home = short_socket_dir() / "home"
    (home / "config").mkdir(parents=True)
    (home / "config" / "models.toml").write_text("[models.tiny]\nslots = 4\nmax_queue = 32\n")
    d = start_daemon("--models", "tiny", "--no-cache", home=home)
    yield d
    d.stop()
    shutil.rmtree(d.socket.parent, ignore_errors=True)


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


# The flood's daemon: one slot, held by a long answer while the flood arrives, and a queue of
# QUEUE. Exactly QUEUE of the flood can wait; every other one must be refused with busy.
QUEUE = 4
FLOOD = 200
# A long answer that cannot stop early (tiny's end-of-text tokens banned, as in _hang_up):
# it runs its whole max_tokens unless its client hangs up.
ENDLESS = {**BODY, "max_tokens": 2000, "logit_bias": {"0": -100, "2": -100, "4": -100}}


@pytest.fixture
def one_slot(tiny_path: Path) -> Iterator[Daemon]:
    home = short_socket_dir() / "home"
    (home / "config").mkdir(parents=True)
    (home / "config" / "models.toml").write_text(f"[models.tiny]\nslots = 1\nmax_queue = {QUEUE}\n")
    d = start_daemon("--models", "tiny", "--no-cache", home=home)
    yield d
    d.stop()
    shutil.rmtree(d.socket.parent, ignore_errors=True)


def _has_content(line: str) -> bool:
    if not line.startswith("data: {"):
        return False
    choices = json.loads(line[6:])["choices"]
    return bool(choices and choices[0]["delta"].get("content"))


async def _tiny_stats(client: httpx.AsyncClient) -> dict[str, Any]:
    stats: dict[str, Any] = (await client.get("/stats")).json()["models"]["tiny"]
    return stats


async def _all_in(
    client: httpx.AsyncClient, rejected_before: int, ended: asyncio.Future[None]
) -> dict[str, Any]:
    """/stats once every flood request is refused or queued; or at once when the queue is past
    its bound, or the endless answer ended (then the slot may have taken some of the flood):
    either fails the caller."""
    while True:
        stats = await _tiny_stats(client)
        accounted = stats["busy_rejections"] - rejected_before + stats["queue_depth"]
        if accounted >= FLOOD or stats["queue_depth"] > QUEUE or ended.done():
            return stats
        await asyncio.sleep(0.05)


def _client(socket: Path, connections: int) -> httpx.AsyncClient:
    # the limits go to the transport: a client given its own transport ignores its ``limits``
    # and the transport's default pool holds 100 connections, so only 100 would be in flight
    limits = httpx.Limits(max_connections=connections)
    transport = httpx.AsyncHTTPTransport(uds=str(socket), limits=limits)
    return httpx.AsyncClient(transport=transport, base_url="http://ei", timeout=300)


async def _flood_a_held_slot(socket: Path) -> tuple[list[Any], bool, dict[str, Any]]:
    """FLOOD requests while an endless answer holds the only slot. Once each is refused or
    queued, hang up on that answer so the queued ones run. Returns the responses, whether the
    endless answer still held the slot then, and /stats at that moment (a queue found past its
    bound cancels the flood: the test fails at once rather than after serving all of it)."""
    # /stats on a client of its own: a flood that is not refused holds every connection
    async with _client(socket, FLOOD + 1) as client, _client(socket, 1) as watch:
        rejected_before = (await _tiny_stats(watch))["busy_rejections"]
        hog = client.stream("POST", "/v1/chat/completions", json={**ENDLESS, "stream": True})
        async with hog as held:
            assert held.status_code == 200
            lines = held.aiter_lines()
            async for line in lines:
                if _has_content(line):  # a token out: the slot is generating
                    break

            async def hog_ends() -> None:
                async for line in lines:
                    if line == "data: [DONE]":
                        return

            ended = asyncio.ensure_future(hog_ends())
            post = client.post
            flood = [
                asyncio.ensure_future(post("/v1/chat/completions", json=BODY)) for _ in range(FLOOD)
            ]
            stats = await _all_in(watch, rejected_before, ended)
            held_throughout = not ended.done()
            ended.cancel()
            if stats["queue_depth"] > QUEUE:
                for task in flood:
                    task.cancel()
        # out of the block: hung up on the endless answer, whose slot now takes the queue
        stats["busy_rejections"] -= rejected_before
        results = await asyncio.gather(*flood, return_exceptions=True)
        return results, held_throughout, stats


def test_200_concurrent_clients_against_a_queue_of_4(one_slot: Daemon) -> None:
    before = rss_mib(one_slot.proc.pid)
    results, held_throughout, seen = asyncio.run(_flood_a_held_slot(one_slot.socket))
    assert held_throughout, "the endless answer ended before the flood was all in"
    assert seen["queue_depth"] == QUEUE and seen["busy_rejections"] == FLOOD - QUEUE, seen
    assert all(isinstance(r, httpx.Response) for r in results), results
    responses: list[httpx.Response] = results
    codes = [r.status_code for r in responses]
    busy = [r for r in responses if r.status_code == 503]
    assert len(busy) == FLOOD - QUEUE, codes  # all but the queue's worth, refused at once
    for r in busy:
        error = r.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}, r.text
        assert error["code"] == "busy" and error["type"] == "server_error" and error["message"]
        assert int(r.headers["Retry-After"]) >= 1
    served = [r.json() for r in responses if r.status_code == 200]
    assert len(served) == QUEUE, codes  # the queued ones ran once the slot came free
    for reply in served:
        assert isinstance(reply["choices"][0]["message"]["content"], str)
        assert reply["choices"][0]["finish_reason"] in ("stop", "length")
    with one_slot.client() as c:
        for _ in range(300):  # the hung-up answer frees its slot at the runner's next step
            stats = c.get("/stats").json()["models"]["tiny"]
            if stats["slots_busy"] == 0 and stats["queue_depth"] == 0:
                break
            time.sleep(0.1)
        assert stats["slots_busy"] == 0 and stats["queue_depth"] == 0
        assert c.get("/health").json()["status"] == "ok"
        assert c.post("/v1/chat/completions", json=BODY).status_code == 200
    assert rss_mib(one_slot.proc.pid) < before + 200  # bounded: no per-request leak


async def _hang_up(socket: Path, n: int) -> int:
    transport = httpx.AsyncHTTPTransport(uds=str(socket))
    body = {
        **BODY,
        "max_tokens": 2000,
        "stream": True,
        "logit_bias": {"0": -100, "2": -100, "4": -100},
    }
    async with httpx.AsyncClient(
        transport=transport,
        base_url="http://ei",
        timeout=300,
        limits=httpx.Limits(max_connections=n),
    ) as client:

        async def one() -> int:
            async with client.stream("POST", "/v1/chat/completions", json=body) as r:
                if r.status_code != 200:
                    return r.status_code
                async for _ in r.aiter_lines():
                    break  # got the first event: hang up
                return 200

        return sum(code == 200 for code in await asyncio.gather(*(one() for _ in range(n))))


def test_100_clients_hanging_up_mid_stream_free_every_slot(small_queue: Daemon) -> None:
    with small_queue.client() as c:
        cancelled_before = c.get("/stats").json()["models"]["tiny"]["cancelled"]
    started = asyncio.run(_hang_up(small_queue.socket, 100))
    assert started >= 4
    with small_queue.client() as c:
        for _ in range(300):
            stats = c.get("/stats").json()["models"]["tiny"]
            if stats["slots_busy"] == 0 and stats["queue_depth"] == 0:
                break
            asyncio.run(asyncio.sleep(0.1))
        assert stats["slots_busy"] == 0 and stats["queue_depth"] == 0
        assert stats["cancelled"] - cancelled_before >= started - 4  # a few may have finished
        ok = c.post("/v1/chat/completions", json=BODY)
        assert ok.status_code == 200
