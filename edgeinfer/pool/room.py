"""The pool's memory: room for a load within the budget, and what its runners hold.

:class:`Room` owns the budget and the :class:`~edgeinfer.pool.retire.Drainer`, and borrows the
pool's entries and lock (``pool/scheduler.py``). Before a load it unloads idle, unpinned models
in least-recently-used order until the estimate fits (:func:`memory.plan_evictions`), or refuses
with ``insufficient_memory`` naming what the loaded models hold. A runner it lets go drains
first and counts against the budget until it has stopped. It also picks the models idle past
their ``keep_alive``, and sums what is held for ``/stats`` and ``/health``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from edgeinfer.errors import InsufficientMemory
from edgeinfer.pool.memory import MemoryEstimate, Resident, keep_alive_expired, plan_evictions
from edgeinfer.pool.retire import Drainer, Retiring, runner_busy
from edgeinfer.pool.served import Budget, Entry, mib


def detach(entry: Entry, why: str) -> tuple[Retiring, float] | None:
    """Stop handing ``entry``'s runner out (caller holds the pool's lock); the caller drains it
    with the returned item and the time it was last handed out."""
    if entry.runner is None:
        return None
    ram, vram = entry.held()
    item = Retiring(entry.runner, ram, vram, why)
    entry.runner, entry.measured = None, None
    return item, entry.handed_out


class Room:
    """The budget, the runners draining, and the loaded models' memory held against it."""

    def __init__(
        self,
        entries: dict[str, Entry],
        lock: threading.RLock,
        *,
        budget: Budget,
        drainer: Drainer,
        rss: Callable[[], int],
    ) -> None:
        self._entries = entries  # the pool's, guarded by its lock
        self._lock = lock
        self.budget = budget
        self.drainer = drainer
        self._rss = rss

    def make_room(self, name: str, need: MemoryEstimate, evict: bool = True) -> None:
        """Unload idle, unpinned models (LRU first) until ``need`` fits, or refuse."""
        with self._lock:
            resident = self._residents(name)
            victims = plan_evictions(
                resident,
                need.ram,
                need.vram,
                ram_budget=self.budget.ram,
                vram_budget=self.budget.vram,
            )
            if victims is None or (victims and not evict):
                raise InsufficientMemory(self._refusal(name, need, resident))
            retiring = [detach(self._entries[v], "unloaded to make room") for v in victims]
        for detached in retiring:  # their memory must be free before the new model allocates
            if detached is not None:
                self.drainer.retire(*detached, wait=True)

    def _residents(self, loading: str) -> list[Resident]:
        """Loaded models (and runners still draining) as the eviction plan sees them. The
        model being replaced counts as idle: it drains before the new one loads if need be."""
        rows = [
            Resident(f"(draining {r.runner.name})", r.ram, r.vram, False, True, 0.0)
            for r in self.drainer.retiring()
        ]
        for name, entry in self._entries.items():
            if entry.runner is None:
                continue
            ram, vram = entry.held()
            idle = name == loading or not runner_busy(entry.runner)
            pinned = entry.spec.pin and name != loading
            rows.append(Resident(name, ram, vram, idle, pinned, entry.last_used))
        return rows

    def _refusal(self, name: str, need: MemoryEstimate, resident: list[Resident]) -> str:
        held = ", ".join(
            f"{r.name} {r.ram >> 20} MiB{' (pinned)' if r.pinned else ''}"
            f"{'' if r.idle else ' (busy)'}"
            for r in resident
        )
        return (
            f"model {name!r} needs about {need.ram >> 20} MiB RAM"
            f"{f' and {need.vram >> 20} MiB VRAM' if need.vram else ''}; the budget is"
            f" {mib(self.budget.ram)} RAM, {mib(self.budget.vram)} VRAM, and loaded models"
            f" hold: {held or 'nothing'}"
        )

    def retire(self, entry: Entry, why: str) -> None:
        """Detach and drain in the background (caller holds the lock; this does not block)."""
        detached = detach(entry, why)
        if detached is not None:
            self.drainer.retire(*detached)

    def expired(self, now: float) -> list[str]:
        """The models idle past their ``keep_alive`` at ``now``; a busy model counts as used
        now."""
        expired: list[str] = []
        with self._lock:
            for name, entry in self._entries.items():
                if entry.runner is None or entry.spec.pin:
                    continue
                if runner_busy(entry.runner):
                    entry.last_used = now
                elif keep_alive_expired(entry.spec.keep_alive, entry.last_used, now):
                    expired.append(name)
        return expired

    def figures(self) -> dict[str, Any]:
        """The budget and what is held against it, for ``/stats`` and ``/health``."""
        with self._lock:
            held = [e.held() for e in self._entries.values()]
        retiring = self.drainer.retiring()
        return {
            "budget_bytes": self.budget.ram,
            "vram_budget_bytes": self.budget.vram,
            "used_bytes": sum(r for r, _ in held) + sum(r.ram for r in retiring),
            "used_vram_bytes": sum(v for _, v in held) + sum(r.vram for r in retiring),
            "draining": len(retiring),
            "rss_bytes": self._rss(),
        }
