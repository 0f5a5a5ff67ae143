"""A model served from a runner process of its own, so a native fault costs one request.

:class:`RunnerProcess` is the daemon's side of a runner (the :class:`~edgeinfer.pool.runner.Runner`
the pool, the drain and the service use). The child (``pool/child.py``) owns the llama.cpp
context, the slots, the batching loop and the prompt-cache tiers; the daemon keeps a vocab-only
load of the same file to tokenize and render prompts (0.06-0.2 s, 10-45 MB: cheaper than a round
trip per prompt, and it works while the child restarts).

When the child dies (SIGSEGV, SIGILL, an abort, a kill):

- requests that had streamed text end with ``model_crashed`` (the signal, the last lines of the
  child's stderr); those that had not are sent again, once, to the restarted runner;
- the runner restarts after 0.5 s, then 1 s; the third crash within five minutes leaves the
  model in ``error`` (its reason in /health) until a reload or ``POST /admin/models/NAME/load``;
- a SIGILL (or SIGSEGV, SIGBUS) while llama.cpp's extra buffer types are on and
  ``extra_buffers = "auto"`` records the verdict "off" (``engine/extra_buffers.py``) and
  restarts without them at once.

That policy is ``pool/crashes.py``'s; the table of requests the runner has taken, and the
channel they go over, is ``pool/inflight.py``'s.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Protocol

from edgeinfer.core.values import Failed
from edgeinfer.engine.base import EngineInfo, EngineParams, Vocab
from edgeinfer.errors import (
    EdgeInferError,
    ModelCrashed,
    ModelUnavailable,
)
from edgeinfer.pool.admission import Admission, LatencyObserver, RunnerStats, runner_snapshot
from edgeinfer.pool.channel import ChildProcess, RunnerInit, error_from_wire, event_from_wire
from edgeinfer.pool.crashes import CrashPolicy
from edgeinfer.pool.events import GenRequest, cancelled_before_start
from edgeinfer.pool.inflight import InFlight
from edgeinfer.pool.prefix_store import PrefixStore

log = logging.getLogger("edgeinfer.runner")

_STOP_GRACE_S = 30.0


class ProcessFactory(Protocol):
    """How runner processes get their engine (``engine.llama.Loader``): decided in the daemon,
    loaded in the child."""

    child_factory: str  # "module:function" the child imports: an EngineFactory

    def resolve(self, path: Path, params: EngineParams) -> EngineParams:
        """``params`` with ``extra_buffers`` decided: "on" or "off" (may run a probe)."""
        ...

    def vocab(self, path: Path) -> Vocab: ...

    def crashed(self, path: Path, reason: str) -> None:
        """Extra buffers killed the runner (SIGILL): remember them as off."""
        ...


class RunnerProcess(Admission):
    """One model in its own runner process, with the :class:`Runner` interface."""

    def __init__(
        self,
        name: str,
        path: Path,
        params: EngineParams,
        factory: ProcessFactory,
        *,
        max_queue: int = 64,
        max_queued_tokens: int | None = None,
        prefix_store: PrefixStore | None = None,
        observer: LatencyObserver | None = None,
        context_shift: bool = True,
        n_keep: int = 128,
        step_timeout: float | None = None,
    ) -> None:
        super().__init__(
            max_queue=max_queue, max_queued_tokens=max_queued_tokens, cond=threading.Condition()
        )
        self._step_timeout = step_timeout
        self.name = name
        self.path = path
        self.params = params
        self._factory = factory
        self._prefix = prefix_store.config if prefix_store is not None else None
        self._observer = observer
        self._context_shift = context_shift
        self._n_keep = min(n_keep, params.n_ctx // 2)
        self._inflight = InFlight(self._cond)
        self._stopping = threading.Event()
        self._chan: Connection | None = None  # the child's channel from its start (for stop)
        self._child_proc: ChildProcess | None = None
        self._vocab: Vocab | None = None
        self._info: EngineInfo | None = None
        self._loaded = threading.Event()
        self.load_error: EdgeInferError | None = None
        self.stats = RunnerStats()  # every child's counters so far, and the daemon's own
        self._dead = RunnerStats()  # what children that died had counted
        self._child = RunnerStats()  # the running child's last report
        self._own = RunnerStats()  # counted here: busy refusals, crash failures, early cancels
        self._live: dict[str, Any] = {}  # its snapshot: the prompt cache figures
        self._rss: int | None = None
        self._crashes = CrashPolicy(name, path, params.extra_buffers, factory.crashed)
        self._state = "starting"
        self._thread = threading.Thread(target=self._main, name=f"runner-{name}", daemon=True)

    # -- the Runner interface (event loop and pool threads) --------------------------------

    def _in_flight(self) -> int:
        return len(self._inflight)

    def start(self) -> None:
        self._thread.start()

    def wait_loaded(self, timeout: float | None = None) -> Vocab:
        self._loaded.wait(timeout)
        if self.load_error is not None:
            raise self.load_error
        if self._vocab is None or self._info is None:
            raise ModelUnavailable(f"model {self.name!r} is still loading")
        return self._vocab

    @property
    def loaded(self) -> bool:
        return self._info is not None

    @property
    def can_shift(self) -> bool:
        return self._context_shift and self._info is not None and self._info.can_shift

    @property
    def engine(self) -> Vocab:
        if self._vocab is None or self._info is None:
            raise ModelUnavailable(f"model {self.name!r} is not loaded")
        return self._vocab

    @property
    def pid(self) -> int | None:
        child = self._child_proc
        return child.pid if child is not None and child.proc.poll() is None else None

    @property
    def restarts(self) -> int:
        return self._crashes.restarts

    def memory_bytes(self) -> int | None:
        return self._rss

    def submit(self, req: GenRequest) -> None:
        self._check_fits(req)
        with self._cond:
            if self._stopping.is_set():
                raise ModelUnavailable(f"model {self.name!r} is shutting down")
            if self.load_error is not None:
                raise self.load_error
            # the child's slots take the oldest requests; the rest wait
            self._check_queue(self._inflight.waiting(self.params.slots), req)
            rid = self._inflight.add(req)
        req.on_cancel = lambda: self._cancel(rid)
        if req.cancelled.is_set():
            self._cancel(rid)

    def _refused(self) -> None:
        self._own.busy_rejections += 1
        self._total()

    def _cancel(self, rid: int) -> None:
        req = self._inflight.cancel(rid)
        if req is None:
            return
        self._own.cancelled += 1
        self._total()
        req.emit(cancelled_before_start(req))

    def snapshot(self) -> dict[str, Any]:
        with self._cond:  # every request passes here: the oldest hold the slots, the rest wait
            in_flight = len(self._inflight)
        busy = min(in_flight, self.params.slots)
        snap = runner_snapshot(
            self.stats,
            self.params.slots,
            slots_busy=busy,
            queue_depth=in_flight - busy,
            extra_buffers=self._info.extra_buffers if self._info is not None else None,
            prompt_cache=self._live.get("prompt_cache"),
        )
        return {
            **snap,
            "restarts": self.restarts,
            "runner": {
                "pid": self.pid,
                "state": self._state,
                "rss_bytes": self._rss,
                "restarts": self.restarts,
                "last_crash": self._crashes.last_crash,
            },
        }

    def stop(self, timeout: float = 10.0) -> None:
        """Fail what is queued, save what the slots hold, end the process."""
        self._stopping.set()
        with self._cond:
            chan = self._chan
            if chan is not None:
                with contextlib.suppress(OSError):
                    chan.send(("stop",))
        if self._thread.is_alive():
            self._thread.join(max(timeout, _STOP_GRACE_S))
        child = self._child_proc
        if child is not None and child.proc.poll() is None:
            log.warning("model %s: runner process did not stop; killing it", self.name)
            child.proc.kill()
            child.proc.wait(5.0)

    # -- the supervisor thread -------------------------------------------------------------

    def _main(self) -> None:
        try:
            self._vocab = self._factory.vocab(self.path)
            params = self._factory.resolve(self.path, self.params)
        except Exception as exc:
            self._give_up(_as_error(exc, f"model {self.name!r} failed to load"))
            return
        while not self._stopping.is_set():
            code = self._run_child(params)
            if code is None or self._stopping.is_set():
                break  # a load failure (already reported) or a stop
            params, delay = self._after_crash(code, params)
            if delay is None or self._stopping.wait(delay):
                break
        self._state = "stopped" if self.load_error is None else "error"
        self._fail_all(ModelUnavailable(f"model {self.name!r} is shutting down"))

    def _run_child(self, params: EngineParams) -> int | None:
        """Start a child, serve through it until it ends; its exit code, or ``None`` when it
        failed to load (reported) or was stopped."""
        self._state = "starting" if self.restarts == 0 else "restarting"
        try:
            child = ChildProcess(self.name)
        except OSError as exc:
            self._give_up(ModelUnavailable(f"model {self.name!r}: cannot start a runner: {exc}"))
            return None
        self._child_proc = child
        conn = child.conn
        try:
            with self._cond:
                conn.send(self._init(params))
                self._chan = conn
                if self._stopping.is_set():  # stopped while this child was starting
                    conn.send(("stop",))
            loaded = self._serve(conn)
        except OSError:
            loaded = False  # it died before reading its init: its exit code tells why
        finally:
            with self._cond:
                self._inflight.conn = self._chan = None
        code = child.wait()
        if not loaded and code == 0:
            return None
        if self._stopping.is_set():
            return None
        return code

    def _init(self, params: EngineParams) -> RunnerInit:
        return RunnerInit(
            name=self.name,
            path=self.path,
            params=params,
            factory=self._factory.child_factory,
            context_shift=self._context_shift,
            n_keep=self._n_keep,
            prefix=self._prefix,
            log_level=logging.getLogger("edgeinfer").getEffectiveLevel(),
            step_timeout=self._step_timeout,
        )

    def _serve(self, conn: Connection) -> bool:
        """Read the child's messages until its channel closes; whether it had loaded."""
        loaded = False
        while True:
            try:
                msg = conn.recv()
            except (EOFError, OSError):
                return loaded
            kind = msg[0]
            if kind == "ev":
                if msg[4] is not None:
                    self._on_stats(msg[4])
                self._on_event(msg[1], event_from_wire(msg[2]), msg[3])
            elif kind == "stats":
                self._on_stats(msg)
            elif kind == "stuck":  # the watchdog's last word: these must not be sent again
                self._inflight.no_retry(msg[1])
            elif kind == "loaded":
                loaded = True
                self._on_loaded(conn, msg[1], msg[2])
            elif kind == "load_failed":
                self._give_up(error_from_wire(msg[1]))

    def _on_stats(self, msg: tuple[Any, ...]) -> None:
        self._live, self._rss = msg[1], msg[3]
        self._child = RunnerStats(**msg[2])
        self._total()

    def _total(self) -> None:
        """``stats``: the dead children's counts, the live one's, and the daemon's own."""
        self.stats = self._dead + self._child + self._own

    def _on_loaded(self, conn: Connection, info: EngineInfo, rss: int) -> None:
        vocab = self._vocab
        assert vocab is not None
        vocab.info = info  # the runner's: context shift, extra buffers, size in memory
        self._info, self._rss = info, rss
        for req in self._inflight.attach(conn):  # cancelled while the runner restarted
            req.emit(cancelled_before_start(req))
        self._state = "running"
        if self.restarts:
            log.info("model %s: runner process restarted (pid %d)", self.name, self._proc_pid())
        self._loaded.set()

    def _proc_pid(self) -> int:
        return self._child_proc.pid if self._child_proc is not None else -1

    def _on_event(self, rid: int, event: Any, latencies: list[tuple[str, float]]) -> None:
        if self._observer is not None:
            for kind, seconds in latencies:
                if kind == "ttft":
                    self._observer.ttft(self.name, seconds)
                else:
                    self._observer.inter_token(self.name, seconds)
        req = self._inflight.route(rid, event)
        if req is not None:
            req.emit(event)

    def _after_crash(self, code: int, params: EngineParams) -> tuple[EngineParams, float | None]:
        """The params and delay of the restart (``pool/crashes.py``), or ``None``: too many
        crashes, the model is in error."""
        tail = self._child_proc.tail if self._child_proc else ()
        verdict = self._crashes.after_crash(code, params, tail, self._settle, self._proc_pid())
        if isinstance(verdict, ModelCrashed):
            self._give_up(verdict)
            return params, None
        return verdict

    def _settle(self, crash: ModelCrashed) -> int:
        """After a crash: requests that streamed text, or were already retried once, fail;
        the others wait for the restarted runner. Returns how many failed."""
        failed = self._inflight.settle()
        self._own.errors += len(failed)
        self._dead, self._child = self._dead + self._child, RunnerStats()  # the next counts anew
        self._total()
        for req in failed:
            req.emit(Failed(crash))
        return len(failed)

    def _fail_all(self, error: EdgeInferError) -> None:
        for req in self._inflight.clear():
            req.emit(Failed(error))

    def _give_up(self, error: EdgeInferError) -> None:
        """The model cannot load, or crashed too often: report it, fail what waits."""
        self.load_error = error
        self._state = "error"
        log.error("%s", error.message)
        self._loaded.set()
        self._fail_all(error)


def _as_error(exc: Exception, what: str) -> EdgeInferError:
    if isinstance(exc, EdgeInferError):
        return exc
    return ModelUnavailable(f"{what}: {exc}")
