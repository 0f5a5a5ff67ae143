"""The pool: which models are served, which are loaded, and the memory they may hold.

Built by the composition root (``bootstrap.py``) with an injected engine factory, file resolver,
estimator and clock, so tests swap in the fake engine and drive keep-alive without sleeping.

- Every served model has an entry, loaded or not; ``models()`` and ``get()`` describe them all.
- Loads happen one at a time (``pool/loading.py``) on worker threads, never on the event loop;
  a request for a model that is not loaded starts its load and gets ``model_loading`` (retry),
  or waits for it through :meth:`ModelPool.acquire`.
- Before a load the GGUF-based estimate must fit the budget, unloading idle, unpinned models in
  least-recently-used order; when it cannot fit the load is refused (``insufficient_memory``).
  The budget, the drains and keep-alive expiry are ``pool/room.py``'s.
- ``configure`` applies a reloaded catalogue (``pool/reload.py``): a changed model loads on a
  new runner while the old one keeps serving, then the old one drains (``pool/retire.py``).
- A model that fails to pull or load is kept with its reason; the others keep serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from edgeinfer.config.schema import ModelSpec
from edgeinfer.engine.base import EngineFactory
from edgeinfer.errors import (
    EdgeInferError,
    InsufficientMemory,
    ModelLoading,
    ModelNotFound,
    ModelUnavailable,
)
from edgeinfer.pool.admission import LatencyObserver, Runner
from edgeinfer.pool.loading import Estimator, ModelLoader, Resolver
from edgeinfer.pool.maker import RunnerMaker, engine_params
from edgeinfer.pool.memory import estimate_file, rss_bytes
from edgeinfer.pool.reload import ReloadPlan, plan_reload
from edgeinfer.pool.retire import Drainer
from edgeinfer.pool.room import Room, detach
from edgeinfer.pool.runner import ModelRunner
from edgeinfer.pool.served import Budget, Entry, ServedModel, model_row

log = logging.getLogger("edgeinfer.pool")


def _resolve(woken: asyncio.Future[None]) -> None:
    if not woken.done():
        woken.set_result(None)


class ModelPool:
    """Owns the served models' runners. ``configure`` or ``add`` them, ``stop`` once."""

    def __init__(
        self,
        factory: EngineFactory,
        *,
        state_dir: Path | None = None,
        observer: LatencyObserver | None = None,
        runner: Callable[..., Runner] = ModelRunner,
        resolve: Resolver | None = None,
        estimator: Estimator = estimate_file,
        budget: Budget | None = None,
        clock: Callable[[], float] = time.monotonic,
        rss: Callable[[], int] = rss_bytes,
        drainer: Drainer | None = None,
        reap_every: float | None = None,
        load_wait_s: float = 30.0,
    ) -> None:
        self._clock = clock
        self._lock = threading.RLock()
        self._idle = threading.Condition(self._lock)  # notified when a load ends
        # requests awaiting a load (acquire), woken on their own loop when one ends
        self._waiters: set[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = set()
        self.load_wait_s = load_wait_s
        self._entries: dict[str, Entry] = {}
        self._stopped = threading.Event()
        self._room = Room(
            self._entries,
            self._lock,
            budget=budget or Budget(),
            drainer=drainer or Drainer(),
            rss=rss,
        )
        self._loader = ModelLoader(
            self._entries,
            self._lock,
            room=self._room,
            make_runner=RunnerMaker(factory, state_dir=state_dir, observer=observer, runner=runner),
            resolve=resolve,
            estimator=estimator,
            rss=rss,
            clock=clock,
            stopped=self._stopped,
        )
        self.default: str | None = None
        self._reaper: threading.Thread | None = None
        if reap_every is not None:
            self._reaper = threading.Thread(
                target=self._reap, args=(reap_every,), name="pool-reaper", daemon=True
            )
            self._reaper.start()

    # -- the catalogue ---------------------------------------------------------------------

    def configure(self, specs: Mapping[str, ModelSpec], budget: Budget | None = None) -> ReloadPlan:
        """Serve exactly ``specs`` (a reload's served models); returns what changed. Quick:
        replacement loads and drains run on their own threads."""
        with self._lock:
            if budget is not None:
                self._room.budget = budget
            plan = plan_reload({n: e.pending or e.spec for n, e in self._entries.items()}, specs)
            for name in plan.removed:
                self._room.retire(self._entries.pop(name), "removed from the config")
            for name in plan.added:
                self._entries[name] = Entry(specs[name], last_used=self._clock())
            for name in plan.updated:
                entry = self._entries[name]
                entry.spec = specs[name] if entry.pending is None else entry.spec
                entry.pending = None if entry.pending is None else specs[name]
            for name in plan.restarted:
                self._restart(name, specs[name])
            if self.default not in self._entries:
                self.default = next(iter(self._entries), None)
        if plan.added or plan.removed or plan.restarted or plan.updated:
            log.info("models: %s", plan.summary())
        return plan

    def _restart(self, name: str, spec: ModelSpec) -> None:
        """A changed engine key: reload on a new runner (caller holds the lock)."""
        entry = self._entries[name]
        if entry.runner is None and not entry.loading:
            self._entries[name] = Entry(spec, last_used=entry.last_used)
            return
        entry.pending = spec
        self._start_load(name)

    def add(self, spec: ModelSpec, path: Path, digest: str | None) -> None:
        """Serve ``spec`` from the verified file at ``path`` and start loading it now."""
        with self._lock:
            self._entries[spec.name] = Entry(spec, path, digest, last_used=self._clock())
            self.default = self.default or spec.name
            self._start_load(spec.name)

    def add_failed(self, spec: ModelSpec, error: EdgeInferError) -> None:
        """Record a model that could not be pulled or verified, so requests get the reason."""
        with self._lock:
            self._entries[spec.name] = Entry(spec, error=error)
            self.default = self.default or spec.name

    def prepare(self, name: str) -> None:
        """Pull and verify ``name``'s file now (startup, with progress bars), not at first use."""
        with self._lock:
            entry = self._entries[name]
            if entry.path is not None or entry.error is not None:
                return
            spec = entry.spec
        path: Path | None = None
        digest: str | None = None
        error: EdgeInferError | None = None
        try:
            path, digest = self._loader.resolve_file(spec)
        except EdgeInferError as exc:
            log.error("model %s is unavailable: %s", name, exc.message)
            error = exc
        with self._lock:
            if self._entries.get(name) is entry and entry.spec is spec:
                entry.path, entry.digest, entry.error = path, digest, error

    # -- requests --------------------------------------------------------------------------

    def get(self, name: str | None) -> tuple[ServedModel, Runner]:
        """The model and runner for a request's ``model`` (``None``/``auto``: the default).

        A served model that is not loaded starts loading and raises ``ModelLoading`` (HTTP 503
        with Retry-After); :meth:`acquire` waits instead."""
        with self._lock:
            name, entry = self._lookup(name)
            runner = entry.runner
            if runner is not None and runner.loaded and runner.load_error is not None:
                raise runner.load_error  # crashed too often: error until a reload or a load
            if runner is not None and runner.loaded:
                entry.last_used, entry.handed_out = self._clock(), time.monotonic()
                return self._view(name, entry), runner
            if entry.error is not None:
                raise ModelUnavailable(f"model {name!r} is unavailable: {entry.error.message}")
            if entry.refused is not None:
                refused, entry.refused = entry.refused, None
                raise refused
            self._start_load(name)
        raise ModelLoading(f"model {name!r} is loading; retry shortly", retry_after=2.0)

    async def acquire(self, name: str | None) -> tuple[ServedModel, Runner]:
        """Like :meth:`get`, but waits up to ``load_wait_s`` for an on-demand load, then
        raises ``ModelLoading`` (503 with Retry-After). The wait is an awaited future that the
        load thread resolves: no thread is parked per waiting request (six of them once
        stalled tokenizing, cache lookups and /stats on a 2-core box)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.load_wait_s
        while True:
            woken: asyncio.Future[None] = loop.create_future()
            waiter = (loop, woken)
            with self._lock:  # registered before looking, so a load ending now still wakes us
                self._waiters.add(waiter)
            try:
                return self.get(name)
            except ModelLoading:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(woken, remaining)
            finally:
                with self._lock:
                    self._waiters.discard(waiter)

    def _wake_waiters(self) -> None:
        """A load ended (lock held): every :meth:`acquire` waiting looks again."""
        for loop, woken in self._waiters:
            with contextlib.suppress(RuntimeError):  # a loop already closed
                loop.call_soon_threadsafe(_resolve, woken)

    def _lookup(self, name: str | None) -> tuple[str, Entry]:
        if name in (None, "", "auto"):
            name = self.default or next(iter(self._entries), None)
        entry = self._entries.get(name or "")
        if entry is None or name is None:
            known = ", ".join(self._entries) or "none"
            raise ModelNotFound(
                f"model {name!r} is not served here (served: {known})", param="model"
            )
        return name, entry

    def models(self) -> list[ServedModel]:
        """Every served model, loaded or not (the router and ``/v1/models`` read this)."""
        with self._lock:
            return [self._view(n, e) for n, e in self._entries.items()]

    def spec(self, name: str) -> ModelSpec | None:
        with self._lock:
            entry = self._entries.get(name)
            return entry.spec if entry is not None else None

    def _view(self, name: str, entry: Entry) -> ServedModel:
        return ServedModel(
            name,
            entry.spec,
            entry.digest,
            entry.runner,
            entry.error,
            entry.loading,
            entry.not_applied,
        )

    # -- loading ---------------------------------------------------------------------------

    def _start_load(self, name: str) -> None:
        """Load ``name`` on a worker thread unless a load is already on its way (lock held)."""
        entry = self._entries[name]
        if entry.loading or self._stopped.is_set():
            return
        entry.loading = True
        threading.Thread(
            target=self._load_quietly, args=(name,), name=f"load-{name}", daemon=True
        ).start()

    def _load_quietly(self, name: str) -> None:
        try:
            self.load(name, started=True)
        except EdgeInferError as exc:
            log.error("model %s: %s", name, exc.message)

    def preload(self, names: Iterable[str]) -> list[str]:
        """Startup: load ``names`` in order while they fit beside each other, unloading none;
        the rest load on demand. Returns the names loaded."""
        loaded = []
        for name in names:
            try:
                self.load(name, evict=False)
                loaded.append(name)
            except InsufficientMemory as exc:
                log.info("model %s loads on demand: %s", name, exc.message)
                with self._lock:
                    self._entries[name].refused = None
            except EdgeInferError as exc:
                log.error("model %s: %s", name, exc.message)
        return loaded

    def load(self, name: str, *, started: bool = False, evict: bool = True) -> ServedModel:
        """Load ``name`` now, unloading idle models (LRU) if the budget needs it and ``evict``
        allows (blocking: worker threads, ``acquire``, the admin route). Raises its error."""
        with self._lock:
            name, entry = self._lookup(name)
            entry.loading = entry.loading or not started
        try:
            self._loader.bring_up(name, evict)
        finally:
            with self._lock:
                current = self._entries.get(name)
                if current is not None:
                    current.loading = False
                    if current.pending is not None and current.error is None:
                        self._start_load(name)  # changed again while this load ran
                self._idle.notify_all()
                self._wake_waiters()
        with self._lock:
            return self._view(name, self._entries[name])

    # -- memory ----------------------------------------------------------------------------

    def unload(self, name: str, why: str = "unloaded") -> bool:
        """Unload ``name`` (it drains first); False when it was not loaded."""
        with self._lock:
            name, entry = self._lookup(name)
            detached = detach(entry, why)
        if detached is None:
            return False
        self._room.drainer.retire(*detached)
        return True

    def expire_idle(self) -> list[str]:
        """Unload models idle past their ``keep_alive`` (the reaper calls this every second;
        tests call it with an injected clock). A busy model counts as used now."""
        expired = self._room.expired(self._clock())
        for name in expired:
            self.unload(name, "idle past keep_alive")
        return expired

    def _reap(self, every: float) -> None:
        while not self._stopped.wait(every):
            try:
                self.expire_idle()
            except Exception:  # the reaper must outlive a bug in one pass
                log.exception("keep-alive pass failed")

    # -- lifecycle and figures -------------------------------------------------------------

    def wait_loaded(self, timeout: float | None = None) -> bool:
        """Block until no load is running (startup, tests); True when all finished."""
        end = None if timeout is None else time.monotonic() + timeout
        with self._idle:
            while any(e.loading for e in self._entries.values()):
                left = None if end is None else end - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._idle.wait(left)
        return True

    def drained(self, timeout: float | None = None) -> bool:
        """Block until every retired runner stopped (tests)."""
        return self._room.drainer.wait(timeout)

    def snapshot(self) -> dict[str, Any]:
        """Per model: status, memory (estimated and measured bytes) and the runner's figures."""
        with self._lock:
            rows = [(n, e, self._view(n, e)) for n, e in self._entries.items()]
        return {name: model_row(entry, view) for name, entry, view in rows}

    def memory(self) -> dict[str, Any]:
        """The budget and what is held against it, for ``/stats`` and ``/health``."""
        return self._room.figures()

    def stop(self) -> None:
        self._stopped.set()
        if self._reaper is not None:
            self._reaper.join(5.0)
        with self._lock:
            runners = [e.runner for e in self._entries.values() if e.runner is not None]
        for runner in runners:
            runner.stop()
        self._room.drainer.stop()


__all__ = ["Budget", "ModelPool", "ServedModel", "engine_params"]
