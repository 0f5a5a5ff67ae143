"""A runner process: one model's engine and its :class:`ModelRunner`, driven by the daemon.

``python -m edgeinfer.pool.child FD``: the daemon (``pool/channel.py``) starts it with one end of
a socket pair as ``FD`` and speaks a small framed protocol over it
(:class:`multiprocessing.connection.Connection`: length-prefixed pickles, both ends ours):

daemon → runner: ``RunnerInit`` first, then ``("submit", rid, fields)``, ``("cancel", rid)``,
``("stop",)``.

runner → daemon: ``("loaded", info, rss)`` or ``("load_failed", error)``, then
``("ev", rid, event, latencies, stats)`` for every request event (``stats``, a "stats" message,
with a request's last event), ``("stats", snapshot, stats, rss)`` each second while busy,
``("stopped",)`` last.

A native fault here kills this process only: faulthandler writes the Python stacks to stderr,
which the daemon keeps the tail of for the ``model_crashed`` error. The process exits when the
daemon says stop or its end of the channel closes (the daemon died).
"""

from __future__ import annotations

import dataclasses
import faulthandler
import importlib
import logging
import os
import signal
import sys
import threading
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from edgeinfer.core.values import Event, Failed, Finished
from edgeinfer.engine.base import Engine, EngineFactory, EngineParams
from edgeinfer.errors import EdgeInferError
from edgeinfer.pool.channel import RunnerInit, error_to_wire, event_to_wire
from edgeinfer.pool.events import GenRequest
from edgeinfer.pool.memory import rss_bytes
from edgeinfer.pool.prefix_store import PrefixStore
from edgeinfer.pool.runner import ModelRunner

log = logging.getLogger("edgeinfer.runner")

STATS_EVERY_S = 1.0
# Fault injection for the crash tests: a decode with extra buffers on dies of SIGILL, the way
# llama.cpp's AMX path does on the CPUs it crashes on.
FAULT_ENV = "EDGEINFER_RUNNER_FAULT"


class _Out:
    """The runner's end of the channel: any thread sends, one at a time; a daemon that went
    away makes sends no-ops (the read loop sees the channel close and exits)."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._lock = threading.Lock()
        self.closed = False

    def send(self, msg: Any) -> None:
        with self._lock:
            if self.closed:
                return
            try:
                self._conn.send(msg)
            except OSError:
                self.closed = True


class _Latencies:
    """The runner's LatencyObserver: buffered, shipped with the request's next event."""

    def __init__(self) -> None:
        self.pending: list[tuple[str, float]] = []

    def ttft(self, model: str, seconds: float) -> None:
        self.pending.append(("ttft", seconds))

    def inter_token(self, model: str, seconds: float) -> None:
        self.pending.append(("inter_token", seconds))

    def take(self) -> list[tuple[str, float]]:
        out, self.pending = self.pending, []
        return out


def load_factory(ref: str) -> EngineFactory:
    module, _, attr = ref.partition(":")
    factory: EngineFactory = getattr(importlib.import_module(module), attr)
    if os.environ.get(FAULT_ENV) == "sigill-with-extra-buffers":
        return _sigill_on_extra_buffers(factory)
    return factory


def _sigill_on_extra_buffers(factory: EngineFactory) -> EngineFactory:
    def load(path: Path, params: EngineParams) -> Engine:
        engine = factory(path, params)
        if params.extra_buffers == "on":
            decode = engine.decode

            def dying(batch: Any) -> None:
                os.kill(os.getpid(), signal.SIGILL)
                decode(batch)  # pragma: no cover - the signal ends the process first

            engine.decode = dying  # type: ignore[method-assign]
        return engine

    return load


class RunnerChild:
    """The runner process's main loop: requests in, events out."""

    def __init__(self, conn: Connection, init: RunnerInit) -> None:
        self._conn = conn
        self._out = _Out(conn)
        self._lat = _Latencies()
        self._requests: dict[int, GenRequest] = {}
        self._work = threading.Event()
        self._step_timeout = init.step_timeout
        prefix = PrefixStore(**init.prefix) if init.prefix is not None else None
        self.runner = ModelRunner(
            init.name,
            init.path,
            init.params,
            load_factory(init.factory),
            max_queue=1 << 30,  # the daemon bounds the queue; it sees every submit first
            prefix_store=prefix,
            observer=self._lat,
            context_shift=init.context_shift,
            n_keep=init.n_keep,
        )

    def run(self) -> None:
        self.runner.start()
        try:
            engine = self.runner.wait_loaded()
        except EdgeInferError as exc:
            self._out.send(("load_failed", error_to_wire(exc)))
            return
        self._out.send(("loaded", engine.info, rss_bytes()))
        self._push_stats()
        threading.Thread(target=self._stats_loop, name="runner-stats", daemon=True).start()
        if self._step_timeout is not None:
            watch = threading.Thread(target=self._watchdog, name="runner-watchdog", daemon=True)
            watch.start()
        try:
            self._serve()
        finally:
            self.runner.stop(timeout=60.0)  # fails what is left, saves slot prefixes to disk
            self._push_stats()
            self._out.send(("stopped",))

    def _serve(self) -> None:
        while True:
            try:
                msg = self._conn.recv()
            except (EOFError, OSError):
                return  # the daemon is gone
            kind = msg[0]
            if kind == "submit":
                self._submit(msg[1], msg[2])
            elif kind == "cancel":
                req = self._requests.get(msg[1])
                if req is not None:
                    req.cancel()
            elif kind == "stop":
                return

    def _submit(self, rid: int, fields: dict[str, Any]) -> None:
        req = GenRequest(**fields, emit=lambda event: self._emit(rid, event))
        self._requests[rid] = req
        try:
            self.runner.submit(req)
        except EdgeInferError as exc:
            self._emit(rid, Failed(exc))
        self._work.set()

    def _emit(self, rid: int, event: Event) -> None:
        """Called on the runner thread (and for a refused submit, the read loop)."""
        end = isinstance(event, Finished | Failed)
        if end:
            self._requests.pop(rid, None)
        stats = self._stats() if end else None  # counted before the daemon sees the end
        self._out.send(("ev", rid, event_to_wire(event), self._lat.take(), stats))

    def _stats(self) -> tuple[Any, ...]:
        return ("stats", self.runner.snapshot(), dataclasses.asdict(self.runner.stats), rss_bytes())

    def _push_stats(self) -> None:
        self._out.send(self._stats())

    def _stats_loop(self) -> None:
        """Fresh figures for /stats during long generations; asleep while idle."""
        while not self._out.closed:
            self._work.wait()
            while self.runner.busy and not self._out.closed:
                self._push_stats()
                time.sleep(STATS_EVERY_S)
            self._work.clear()
            if self.runner.busy:
                self._work.set()

    def _watchdog(self) -> None:
        """End this process when one engine call outlasts ``step_timeout``: llama.cpp is stuck
        in native code (seen: its grammar matcher on a pattern that repeats what can match
        nothing, over ten minutes for one token), holding its slots and the other requests
        behind them, and nothing else can stop it. The daemon sees a crash whose last output is
        the line below, fails the requests that were in the stuck step (sent again, they would
        hang the next runner too), sends the queued ones once more, and restarts the runner."""
        assert self._step_timeout is not None
        limit = self._step_timeout
        while not self._out.closed:
            time.sleep(min(1.0, limit / 4))
            started = self.runner.step_started
            if started is not None and time.monotonic() - started > limit:
                held = {id(req) for req in self.runner.in_slots()}
                stuck = [rid for rid, req in list(self._requests.items()) if id(req) in held]
                self._out.send(("stuck", stuck))
                print(
                    f"model {self.runner.name!r}: one llama.cpp step has run for over "
                    f"{limit:g} s: it is stuck, so the runner ends (raise [models."
                    f"{self.runner.name}] step_timeout if this machine is really that slow)",
                    file=sys.stderr,
                    flush=True,
                )
                os.kill(os.getpid(), signal.SIGKILL)  # no faulthandler dump after the line


def main(argv: list[str]) -> None:
    faulthandler.enable()  # a native crash leaves the Python stacks in the daemon's log
    # The daemon ends its runners (saving their KV) when it stops; a SIGTERM to the whole
    # group (systemd stopping the service) must not kill them first. A daemon that dies
    # closes the channel, and the runner exits.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    conn = Connection(int(argv[1]))
    init: RunnerInit = conn.recv()
    logging.basicConfig(
        level=init.log_level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    try:
        child = RunnerChild(conn, init)
    except Exception as exc:  # a factory that cannot be imported: tell the daemon, exit
        err = EdgeInferError(f"model {init.name!r}: its runner process failed to start: {exc}")
        conn.send(("load_failed", error_to_wire(err)))
        raise
    child.run()


if __name__ == "__main__":
    main(sys.argv)
