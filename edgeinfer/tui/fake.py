"""A deterministic stand-in for the daemon, shipped so the TUI's tests (and anyone demoing the
TUI) need no model: :class:`FakeClient` satisfies :class:`edgeinfer.tui.port.DaemonPort`.

It records every chat request, streams a scripted answer (optionally held chunk by chunk so a
test can stop it midway), serves fixed ``/stats`` snapshots, and can be stopped and started
like a daemon restart: open streams then break with ``DaemonError`` and new calls fail until
:meth:`FakeClient.start`.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeinfer.errors import DaemonError

MODELS = ["tiny", "small", "large"]


def snapshot(step: int, *, requests: int = 0) -> dict[str, Any]:
    """A plausible ``/stats`` snapshot at second ``step``, the same every run."""
    gen = [0, 40, 95, 160, 180, 260, 300, 380][step % 8] + 400 * (step // 8)
    return {
        "time": 1000.0 + step,
        "models": {
            "tiny": _model(4, 1, 0, requests + step, gen, 0.042, 1 << 27),
            "small": _model(2, 0, 0, step // 2, gen // 3, 0.180, 1 << 29),
            "large": _model(2, 2, 3, step // 3, gen // 5, 0.950, 1 << 30),
        },
        "cache": {
            "layers": {
                "exact": _layer(hits=3, misses=9, prompt=240, completion=310, est_usd=0.0012),
                "semantic": _layer(hits=2, misses=7, prompt=150, completion=120, est_usd=0.0007),
            },
            "store": {"entries": 16},
        },
        "router": {
            "tiers": ["tiny", "small", "large"],
            "requests": 19,
            "by_tier": {"tiny": 12, "small": 5, "large": 2},
            "cascades": 6,
            "escalations": 3,
            "tokens_on_smaller_tiers": 5400,
            "compute_seconds_saved_est": 41.5,
        },
    }


def _model(
    slots: int, busy: int, queue: int, requests: int, gen: int, ttft: float, mem: int
) -> dict[str, Any]:
    return {
        "status": "ready",
        "reason": None,
        "slots": slots,
        "slots_busy": busy,
        "queue_depth": queue,
        "requests": requests,
        "prompt_tokens": 120 * requests,
        "cached_tokens": 70 * requests,
        "cached_token_ratio": 70 / 120 if requests else 0.0,
        "generated_tokens": gen,
        "ttft_avg_s": ttft,
        "memory_measured_bytes": mem,
    }


def _layer(hits: int, misses: int, prompt: int, completion: int, est_usd: float) -> dict[str, Any]:
    return {
        "hits": hits,
        "misses": misses,
        "hit_rate": hits / (hits + misses),
        "guard_rejections": 0,
        "measured": {
            "prompt_tokens_saved": prompt,
            "completion_tokens_saved": completion,
            "time_saved_s": 2.5 * hits,
        },
        "estimated": {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "api_cost_saved_usd": est_usd,
        },
    }


ANSWER = [
    "Paris ",
    "is the **capital** of France.\n\n",
    "- population: about 2.1 million\n",
    "- river: the Seine\n",
]


@dataclass
class FakeClient:
    """Scripted daemon. ``hold=True`` makes each answer chunk wait for :meth:`release`."""

    answer: list[str] = field(default_factory=lambda: list(ANSWER))
    models_served: list[str] = field(default_factory=lambda: list(MODELS))
    snapshots: list[dict[str, Any]] = field(default_factory=lambda: [snapshot(0), snapshot(1)])
    report: dict[str, Any] = field(default_factory=dict)
    hold: bool = False
    up: bool = True
    socket: Path | str = Path("/run/user/1000/edgeinfer/edgeinfer.sock")
    requests: list[dict[str, Any]] = field(default_factory=list)
    streams_closed: int = 0
    stats_connects: int = 0
    _gate: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(0))
    _dropped: asyncio.Event = field(default_factory=asyncio.Event)

    def _check_up(self) -> None:
        if not self.up:
            raise DaemonError(f"no edgeinfer daemon answers on {self.socket} (fake: stopped)")

    def stop(self) -> None:
        """The daemon goes away: open streams break, new calls fail."""
        self.up = False
        self._dropped.set()

    def start(self, snapshots: list[dict[str, Any]] | None = None) -> None:
        """The daemon is back (counters restarted: pass its new ``snapshots``)."""
        self.up = True
        self._dropped = asyncio.Event()
        if snapshots is not None:
            self.snapshots = snapshots

    def release(self, chunks: int = 1) -> None:
        """Let ``chunks`` more answer chunks through when ``hold`` is on."""
        for _ in range(chunks):
            self._gate.release()

    async def health(self) -> dict[str, Any]:
        self._check_up()
        return {"status": "ok", "version": "fake", "uptime_s": 1.0, "models": {}}

    async def models(self) -> list[dict[str, Any]]:
        self._check_up()
        return [{"id": name, "object": "model"} for name in self.models_served]

    async def chat_stream(
        self, messages: list[dict[str, Any]], **params: Any
    ) -> AsyncIterator[dict[str, Any]]:
        self._check_up()
        self.requests.append({"messages": copy.deepcopy(messages), **params})
        model = str(params.get("model") or "auto")
        served = self.models_served[0] if model == "auto" else model
        try:
            yield {"model": served, "choices": [{"index": 0, "delta": {"role": "assistant"}}]}
            for piece in self.answer:
                if self.hold:
                    await self._gate.acquire()
                if not self.up:
                    raise DaemonError(f"lost the connection to the daemon on {self.socket}")
                yield {"model": served, "choices": [{"index": 0, "delta": {"content": piece}}]}
            yield self._final(served)
        finally:
            self.streams_closed += 1

    def _final(self, served: str) -> dict[str, Any]:
        info = {
            "model": served,
            "cache": {"layer": None, "similarity": None},
            "cached_tokens": 24,
            "timings": {"ttft_ms": 40.0, "total_ms": 440.0},
            **self.report,
        }
        usage = {
            "prompt_tokens": 31,
            "completion_tokens": 20,
            "total_tokens": 51,
            "prompt_tokens_details": {"cached_tokens": 24},
        }
        choice = {"index": 0, "delta": {}, "finish_reason": "stop"}
        return {"model": served, "choices": [choice], "usage": usage, "edgeinfer": info}

    async def stream_stats(self, interval: float = 1.0) -> AsyncIterator[dict[str, Any]]:
        self._check_up()
        self.stats_connects += 1
        dropped = self._dropped
        for snap in list(self.snapshots):
            yield snap
        await dropped.wait()  # then idle like a live feed, until the daemon "stops"
        raise DaemonError(f"lost the connection to the daemon on {self.socket}")

    async def aclose(self) -> None:
        return None
