"""The live ``/stats`` feed: one snapshot per interval as server-sent events, to few clients.

Every subscriber costs a snapshot per tick (a worker thread gathering the pool's, the router's
and the cache's figures) for as long as it stays connected, so their number is capped: a client
over :data:`MAX_SUBSCRIBERS` gets 503 ``busy`` with ``Retry-After`` instead of a stream the
daemon would have to keep feeding. The snapshot itself reads counters only (the cache's entry
counts are kept by its writer, cache/tally.py), so a tick costs no table scan.

A subscriber's place is freed when its stream ends: the daemon stops, or the client hangs up
(Starlette cancels the stream on ``http.disconnect``). A stream that never got to start (the
client left before the first byte) frees its place when it is collected, since the place set
holds places weakly and only the stream refers to its own.
"""

from __future__ import annotations

import asyncio
import json
import time
import weakref
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import Request

from edgeinfer.errors import Busy, InvalidRequest

MAX_SUBSCRIBERS = 16
INTERVAL_RANGE = (0.1, 60.0)
"""Seconds between two events a client may ask for with ``?interval=`` (default 1)."""


def sse(data: dict[str, Any] | str) -> bytes:
    """One server-sent event carrying ``data`` (JSON unless already a string)."""
    payload = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return f"data: {payload}\n\n".encode()


def feed_interval(request: Request) -> float:
    """``?interval=`` seconds between two ``/stats`` events (default 1)."""
    raw = request.query_params.get("interval", "1")
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    low, high = INTERVAL_RANGE
    if not low <= value <= high:  # also refuses NaN
        raise InvalidRequest(f"interval: a number of seconds in [{low}, {high}]", param="interval")
    return value


class _Place:
    """A subscriber's place under the cap; it lives exactly as long as its stream refers to it."""


class StatsFeeds:
    """The open feeds of one app, at most ``limit`` at a time."""

    def __init__(
        self,
        snapshot: Callable[[], dict[str, Any]],
        stopping: asyncio.Event,
        limit: int = MAX_SUBSCRIBERS,
    ) -> None:
        self._snapshot = snapshot
        self._stopping = stopping
        self.limit = limit
        self._places: weakref.WeakSet[_Place] = weakref.WeakSet()

    @property
    def subscribers(self) -> int:
        return len(self._places)

    def open(self, request: Request) -> AsyncIterator[bytes]:
        """A new feed for ``request``; :class:`Busy` when ``limit`` feeds are already open."""
        interval = feed_interval(request)
        if len(self._places) >= self.limit:
            raise Busy(
                f"{self.limit} clients already follow the live stats (the most it serves);"
                " poll GET /stats, or retry later",
                retry_after=max(interval, 5.0),
            )
        place = _Place()
        self._places.add(place)
        return self._feed(interval, place)

    async def _feed(self, interval: float, place: _Place) -> AsyncIterator[bytes]:
        """One snapshot per ``interval`` until the daemon stops (or the client leaves)."""
        try:
            while not self._stopping.is_set():
                snap = await asyncio.to_thread(self._snapshot)
                yield sse({"time": round(time.time(), 3), **snap})
                try:
                    await asyncio.wait_for(self._stopping.wait(), interval)
                except TimeoutError:
                    pass
        finally:
            self._places.discard(place)
