"""Bringing one served model up on a new runner: resolve, estimate, make room, start, measure.

:class:`ModelLoader` runs a load on the thread that asks for it (the pool's ``load-<model>``
worker threads, ``preload`` at startup, the admin route), one at a time (its load lock), and
borrows the pool's entries and lock (``pool/scheduler.py``). The file is pulled and verified
on first use, the GGUF-based estimate must fit the budget (``pool/room.py`` unloads idle models
or refuses), and the runner's memory is measured once it has loaded. The new runner replaces the
entry's old one, which drains (``pool/retire.py``); a pull or load that fails is kept on the
entry with its reason.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path

from edgeinfer.config.schema import ModelSpec
from edgeinfer.errors import EdgeInferError, InsufficientMemory, ModelUnavailable
from edgeinfer.pool.admission import Runner
from edgeinfer.pool.maker import RunnerMaker
from edgeinfer.pool.memory import MemoryEstimate
from edgeinfer.pool.room import Room, detach
from edgeinfer.pool.served import Entry

log = logging.getLogger("edgeinfer.pool")

Resolver = Callable[[ModelSpec], tuple[Path, str | None]]
"""Pulls (first use) and verifies a model's file: its path and sha256. Blocking."""
Estimator = Callable[[ModelSpec, Path], MemoryEstimate]


class ModelLoader:
    """Loads a served model's pending or current spec onto a new runner; blocking."""

    def __init__(
        self,
        entries: dict[str, Entry],
        lock: threading.RLock,
        *,
        room: Room,
        make_runner: RunnerMaker,
        resolve: Resolver | None,
        estimator: Estimator,
        rss: Callable[[], int],
        clock: Callable[[], float],
        stopped: threading.Event,
    ) -> None:
        self._entries = entries  # the pool's, guarded by its lock
        self._lock = lock
        self._room = room
        self._make_runner = make_runner
        self._resolve = resolve
        self._estimator = estimator
        self._rss = rss
        self._clock = clock
        self._stopped = stopped
        self._load_lock = threading.Lock()  # one load at a time

    def bring_up(self, name: str, evict: bool) -> None:
        """Resolve, estimate, make room, start the runner, measure (one load at a time)."""
        with self._load_lock:
            self._bring_up(name, evict)

    def _bring_up(self, name: str, evict: bool) -> None:
        with self._lock:
            entry = self._entries.get(name)
            if entry is None:
                return
            spec = entry.pending or entry.spec
            crashed = entry.runner is not None and entry.runner.load_error is not None
            if crashed and entry.pending is None:
                self._room.retire(entry, "restarted after crashing")  # a fresh runner replaces it
            if entry.pending is None and (entry.runner is not None or entry.error is not None):
                return  # loaded meanwhile, or failed for a reason a retry will not fix
            path = entry.path if entry.pending is None else None
        try:
            if path is None:
                path, digest = self.resolve_file(spec)
            else:
                digest = entry.digest
            estimate = self._estimator(spec, path)
            self._room.make_room(name, estimate, evict)
        except InsufficientMemory as exc:
            with self._lock:
                # tried once (left pending, every load's end would start it again at once)
                if not _keep_previous(name, entry, exc, "do not fit"):
                    if entry.pending is not None:  # nothing serves: the new config is it
                        entry.spec, entry.pending = entry.pending, None
                    entry.refused = exc  # told to the request that asked for this load
            raise
        except EdgeInferError as exc:
            self._fail(name, entry, spec, exc)
            raise
        self._start_runner(name, entry, spec, path, digest, estimate)

    def resolve_file(self, spec: ModelSpec) -> tuple[Path, str | None]:
        if self._resolve is None:
            raise ModelUnavailable(f"model {spec.name!r}: no model store to pull it from")
        return self._resolve(spec)

    def _start_runner(
        self,
        name: str,
        entry: Entry,
        spec: ModelSpec,
        path: Path,
        digest: str | None,
        estimate: MemoryEstimate,
    ) -> None:
        before = self._rss()
        runner = self._make_runner(spec, path, digest)
        runner.start()
        try:
            runner.wait_loaded()
        except EdgeInferError as exc:
            runner.stop()
            self._fail(name, entry, spec, exc)
            raise
        own = runner.memory_bytes()  # a runner process: its RSS; else this process's growth
        measured = own if own is not None else max(0, self._rss() - before)
        if measured > estimate.ram + estimate.vram:
            log.warning(
                "model %s holds %d MiB after loading, above its %d MiB estimate",
                name,
                measured >> 20,
                (estimate.ram + estimate.vram) >> 20,
            )
        self._install(name, entry, spec, runner, path, digest, estimate, measured)

    def _install(
        self,
        name: str,
        entry: Entry,
        spec: ModelSpec,
        runner: Runner,
        path: Path,
        digest: str | None,
        estimate: MemoryEstimate,
        measured: int,
    ) -> None:
        """Swap the loaded runner in; the one it replaces drains."""
        with self._lock:
            if self._entries.get(name) is not entry or self._stopped.is_set():
                runner.stop()  # removed (or shutting down) while it loaded
                return
            old = detach(entry, "replaced after a config change")
            entry.runner, entry.path, entry.digest = runner, path, digest
            entry.estimate, entry.measured, entry.error = estimate, measured, None
            entry.not_applied = None
            entry.spec, entry.last_used = spec, self._clock()
            if entry.pending is spec:
                entry.pending = None
        if old is not None:
            self._room.drainer.retire(*old)
        log.info(
            "model %s loaded (estimated %d MiB, measured %d MiB)",
            name,
            (estimate.ram + estimate.vram) >> 20,
            measured >> 20,
        )

    def _fail(self, name: str, entry: Entry, spec: ModelSpec, exc: EdgeInferError) -> None:
        """A pull or load failed: report it. A changed config that fails while the previous
        one still serves keeps that runner (a typo in a sha256 pin must not take a working
        model away); with nothing serving, the model is in error."""
        with self._lock:
            if self._entries.get(name) is not entry:
                return
            if _keep_previous(name, entry, exc, "failed to load"):
                return
            if entry.pending is not None:
                entry.spec, entry.pending = spec, None
                self._room.retire(entry, "replaced by a config that failed to load")
            entry.error = exc


def _keep_previous(name: str, entry: Entry, exc: EdgeInferError, what: str) -> bool:
    """A changed config that failed while the previous one still serves: drop the change and
    keep serving, saying why in one line; False when nothing serves (caller holds the lock)."""
    serving = entry.runner is not None and entry.runner.load_error is None
    if entry.pending is None or not serving:
        return False
    entry.pending = None
    entry.not_applied = f"its changed settings {what}: {exc.message}"
    log.error(
        "model %s: its changed settings %s (%s); it keeps running with the previous ones",
        name,
        what,
        exc.message,
    )
    return True
