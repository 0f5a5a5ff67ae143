"""Retiring runners gracefully: a replaced, removed or unloaded model finishes its requests.

The pool stops handing a runner out first; the runner then keeps serving what it has (queued
and running requests) until it is idle, and only then is stopped and its engine freed. A request
may be between ``pool.get`` and ``runner.submit`` (prompt layer, tokenizing) when the pool lets
go: the service holds the runner over that stretch (``runner.held()``), and the drain waits for
the holds too. ``grace`` seconds after the runner was last handed out cover the instant between
``pool.get`` returning and the hold starting.
``timeout`` bounds the wait: a stuck request cannot hold a model's memory forever.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from edgeinfer.pool.admission import Runner

log = logging.getLogger("edgeinfer.pool")

_POLL_S = 0.05


def runner_busy(runner: Runner) -> bool:
    """Whether any request holds the runner or is in it (its locked in-flight count)."""
    return runner.busy


@dataclass(frozen=True)
class Retiring:
    """A runner on its way out, with the memory it still holds (the budget counts it)."""

    runner: Runner
    ram: int
    vram: int
    why: str


class Drainer:
    """Owns the retiring runners and their drain threads."""

    def __init__(self, *, grace: float = 2.0, timeout: float = 600.0) -> None:
        self.grace = grace
        self.timeout = timeout
        self._lock = threading.Lock()
        self._retiring: dict[int, Retiring] = {}
        self._threads: list[threading.Thread] = []
        self._abort = threading.Event()

    def retire(self, item: Retiring, handed_out: float, *, wait: bool = False) -> None:
        """Drain ``item.runner`` then stop it; ``handed_out`` is ``time.monotonic()`` of the
        last ``pool.get`` that returned it. ``wait`` blocks until it is stopped."""
        with self._lock:
            self._retiring[id(item.runner)] = item
        thread = threading.Thread(
            target=self._drain,
            args=(item, handed_out),
            name=f"drain-{item.runner.name}",
            daemon=True,
        )
        thread.start()
        with self._lock:
            self._threads = [t for t in self._threads if t.is_alive()] + [thread]
        if wait:
            thread.join()

    def _drain(self, item: Retiring, handed_out: float) -> None:
        deadline = time.monotonic() + self.timeout
        runner = item.runner
        while not self._abort.is_set():
            quiet = time.monotonic() - handed_out >= self.grace
            if quiet and runner.wait_idle(_POLL_S):  # waits on the runner's in-flight count
                break
            if time.monotonic() > deadline:
                log.warning("model %s: drain timed out; failing what is left", runner.name)
                break
            if not quiet:
                self._abort.wait(_POLL_S)
        runner.stop()
        with self._lock:
            self._retiring.pop(id(runner), None)
        log.info("model %s: %s; runner stopped", runner.name, item.why)

    def retiring(self) -> list[Retiring]:
        with self._lock:
            return list(self._retiring.values())

    def wait(self, timeout: float | None = None) -> bool:
        """Join every drain thread; True when none is left (tests, shutdown)."""
        with self._lock:
            threads = list(self._threads)
        end = None if timeout is None else time.monotonic() + timeout
        for thread in threads:
            thread.join(None if end is None else max(0.0, end - time.monotonic()))
        return not any(t.is_alive() for t in threads)

    def stop(self) -> None:
        """Daemon shutdown: stop draining politely, stop every retiring runner now."""
        self._abort.set()
        self.wait(30.0)
