"""One runner thread per loaded model: continuous batching over the context's slots.

The runner thread is the only caller of its :class:`~edgeinfer.engine.Engine`. The event loop
talks to it through :meth:`ModelRunner.submit` (bounded queue; a full queue raises ``Busy``) and
receives events through each request's ``emit`` callback, which the runner calls from its own
thread and which must not block (the service passes ``loop.call_soon_threadsafe``).

The runner thread admits queued requests into idle slots, placing the longest prefix of each
prompt it can find (the slot's own KV, another slot's, a saved state of the prefix store); the
decode steps over the slots are :class:`~edgeinfer.pool.batch.Batcher`'s (``pool/batch.py``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgeinfer.core.values import Failed, Finished
from edgeinfer.engine.base import Engine, EngineFactory, EngineParams
from edgeinfer.errors import EdgeInferError, EngineError, ModelUnavailable
from edgeinfer.pool.admission import Admission, LatencyObserver, RunnerStats, runner_snapshot
from edgeinfer.pool.batch import Batcher, Slot
from edgeinfer.pool.events import GenRequest, cancelled_before_start
from edgeinfer.pool.prefix_store import PrefixStore
from edgeinfer.pool.slots import choose_slot, common_prefix, plan_reuse
from edgeinfer.pool.text import TextStream

log = logging.getLogger("edgeinfer.runner")

# A copy or restore must bring at least this many more prompt tokens than the slot has.
_MIN_GAIN = 16


class ModelRunner(Admission):
    """Owns one model's engine on a dedicated thread and schedules requests over its slots."""

    def __init__(
        self,
        name: str,
        path: Path,
        params: EngineParams,
        factory: EngineFactory,
        *,
        max_queue: int = 64,
        max_queued_tokens: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        prefix_store: PrefixStore | None = None,
        observer: LatencyObserver | None = None,
        context_shift: bool = True,
        n_keep: int = 128,
        step_timeout: float | None = None,
    ) -> None:
        super().__init__(
            max_queue=max_queue, max_queued_tokens=max_queued_tokens, cond=threading.Condition()
        )
        self.name = name
        self.params = params
        self.path = path  # the GGUF file (its metadata may hold default sampling settings)
        del step_timeout  # for the maker's sake: only a runner process is watched (pool/child.py)
        self.step_started: float | None = None
        """When the engine call running now (an admission or a batch step) began, on the
        monotonic clock; None between calls."""
        self._factory = factory
        self._clock = clock
        self._store = prefix_store
        self._observer = observer
        self._context_shift = context_shift
        self._n_keep = min(n_keep, params.n_ctx // 2)
        self._queue: deque[GenRequest] = deque()
        self._n_in_flight = 0  # submitted and not yet ended: queued, being admitted, in a slot
        self._stopping = False
        self._engine: Engine | None = None
        self._loaded = threading.Event()
        self.load_error: EdgeInferError | None = None
        self.stats = RunnerStats()
        self._batch = Batcher(
            name,
            params,
            stats=self.stats,
            clock=clock,
            observer=observer,
            context_shift=context_shift,
            n_keep=self._n_keep,
            end=self._end,
        )
        self._thread = threading.Thread(target=self._main, name=f"runner-{name}", daemon=True)

    # -- event-loop side -------------------------------------------------------------------

    def _in_flight(self) -> int:
        return self._n_in_flight

    def start(self) -> None:
        self._thread.start()

    def wait_loaded(self, timeout: float | None = None) -> Engine:
        """Block until the engine is loaded (called off the event loop); raise its load error."""
        self._loaded.wait(timeout)
        if self.load_error is not None:
            raise self.load_error
        if self._engine is None:
            raise ModelUnavailable(f"model {self.name!r} is still loading")
        return self._engine

    @property
    def can_shift(self) -> bool:
        """Whether generations may slide past the context window (config and engine allow)."""
        return self._context_shift and self._engine is not None and self._engine.info.can_shift

    @property
    def loaded(self) -> bool:
        return self._engine is not None

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            raise ModelUnavailable(f"model {self.name!r} is not loaded")
        return self._engine

    def submit(self, req: GenRequest) -> None:
        """Queue a request; raise ``Busy`` when the bounded queue is full."""
        self._check_fits(req)
        with self._cond:
            if self._stopping:
                raise ModelUnavailable(f"model {self.name!r} is shutting down")
            self._check_queue(self._queue, req)
            self._queue.append(req)
            self._n_in_flight += 1
            self._cond.notify_all()

    def in_slots(self) -> list[GenRequest]:
        """The requests holding a slot now (read by a runner process's watchdog while this
        runner's thread is stuck in an engine call)."""
        return [slot.req for slot in self._batch.active() if slot.req is not None]

    def snapshot(self) -> dict[str, Any]:
        """Live figures for /stats (read without the lock: ints are atomic enough here)."""
        return runner_snapshot(
            self.stats,
            len(self._batch.slots),
            slots_busy=sum(1 for sl in self._batch.slots if sl.req is not None),
            queue_depth=len(self._queue),
            extra_buffers=self._engine.info.extra_buffers if self._engine else None,
            prompt_cache=self._store_snapshot(),
        )

    def _store_snapshot(self) -> dict[str, Any] | None:
        if self._store is None:
            return None
        st = self._store.stats
        return {
            "ram_bytes": self._store.ram_bytes,
            "saved": st.saved,
            "ram_hits": st.ram_hits,
            "disk_hits": st.disk_hits,
            "spilled_to_disk": st.spilled,
        }

    def memory_bytes(self) -> int | None:
        return None  # shares the daemon's process: the pool measures the RSS delta

    def stop(self, timeout: float = 10.0) -> None:
        """Fail queued requests, cancel running ones, join the thread, free the engine."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self._thread.join(timeout)

    # -- runner thread ---------------------------------------------------------------------

    def _main(self) -> None:
        try:
            self._engine = self._factory(self.path, self.params)
        except EdgeInferError as exc:
            self.load_error = exc
        except Exception as exc:  # a native loader can fail in many ways; report, stay up
            self.load_error = ModelUnavailable(f"model {self.name!r} failed to load: {exc}")
        finally:
            self._loaded.set()
        if self._engine is None:
            log.error("model %s failed to load: %s", self.name, self.load_error)
            self._drain_queue(self.load_error or ModelUnavailable("load failed"))
            return
        try:
            while self._wait_for_work(self._engine):
                self.step_started = time.monotonic()
                try:
                    self._batch.step(self._engine)
                except Exception as exc:  # a bug must fail requests, not hang the daemon
                    log.exception("model %s: step failed; failing its active requests", self.name)
                    for slot in self._batch.active():
                        slot.cached = []
                        self._engine.seq_rm(slot.seq, 0)
                        self._batch.fail(self._engine, slot, _as_edgeinfer(exc))
                finally:
                    self.step_started = None
        finally:
            self._shutdown(self._engine)

    def _wait_for_work(self, engine: Engine) -> bool:
        with self._cond:
            while not self._stopping and not self._queue and not self._batch.active():
                self._cond.wait()
            if self._stopping:
                return False
            free = sum(1 for s in self._batch.slots if s.req is None)
            taken = [self._queue.popleft() for _ in range(min(free, len(self._queue)))]
        # Admission builds samplers (grammars) and copies or restores KV state (~100 MB for a
        # large model, maybe from disk): never under the lock submit() and held() take on the
        # event loop. Only this thread touches the slots.
        self.step_started = time.monotonic()
        try:
            self._admit(engine, taken)
        finally:
            self.step_started = None
        return True

    def _admit(self, engine: Engine, taken: list[GenRequest]) -> None:
        """Move requests taken off the queue into idle slots (one idle slot each). Whatever
        goes wrong with one request ends that request, never the others or the runner."""
        for req in taken:
            if req.cancelled.is_set():
                self._finish_unstarted(req)
                continue
            try:
                self._admit_one(engine, req)
            except Exception as exc:
                if not isinstance(exc, EdgeInferError):
                    log.exception("model %s: admitting a request failed", self.name)
                self.stats.errors += 1
                self._end(req, Failed(_as_edgeinfer(exc)))

    def _admit_one(self, engine: Engine, req: GenRequest) -> None:
        idle = [(s.seq, s.cached, s.last_used) for s in self._batch.slots if s.req is None]
        sampler = engine.new_sampler(req.sampling)  # raises for a grammar llama.cpp refuses
        seq, reuse = choose_slot(idle, req.prompt)
        slot = self._batch.slots[seq]
        try:
            reuse = self._place_prefix(engine, slot, req.prompt, reuse)
        except Exception as exc:  # a refused state or copy: start this slot clean
            log.exception("model %s: prefix placement failed", self.name)
            engine.seq_rm(seq, 0)
            slot.cached, reuse = [], 0
            if not isinstance(exc, EdgeInferError):
                engine.free_sampler(sampler)
                raise
        slot.pending = req.prompt[reuse:]
        slot.prompt_len = len(req.prompt)
        slot.req, slot.n_gen, slot.n_cached, slot.t_first = req, 0, reuse, None
        slot.next_token = None
        slot.sampler = sampler
        slot.logprobs = []
        slot.text = TextStream(req.stop)
        self.stats.requests += 1
        self.stats.prompt_tokens += len(req.prompt)
        self.stats.cached_tokens += reuse

    def _place_prefix(self, engine: Engine, slot: Slot, prompt: list[int], reuse: int) -> int:
        """Put the longest available prefix of ``prompt`` into ``slot``'s sequence: what the slot
        holds, a copy from another slot, or a saved state; return its length."""
        limit = len(prompt) - 1  # the last prompt token is always evaluated, for its logits
        src, copy = self._best_other_slot(slot, prompt)
        hit = None
        if self._store is not None:
            hit = self._store.lookup(prompt, better_than=max(reuse, copy) + _MIN_GAIN - 1)
        restore = min(len(hit.tokens), limit) if hit is not None else 0
        how = plan_reuse(reuse, min(copy, limit), restore, min_gain=_MIN_GAIN)
        self._save_evicted(engine, slot, keep=reuse if how == "slot" else 0)
        if how == "copy":
            engine.seq_cp(src, slot.seq)
            reuse = min(copy, limit)
            self.stats.prefix_copied += 1
        elif how == "restore" and hit is not None:
            engine.state_set(slot.seq, hit.state)
            reuse = restore
            if hit.tier == "ram":
                self.stats.prefix_restored_ram += 1
            else:
                self.stats.prefix_restored_disk += 1
        elif reuse:
            self.stats.prefix_kept += 1
        engine.seq_rm(slot.seq, reuse)
        slot.cached = prompt[:reuse]
        return reuse

    def _best_other_slot(self, slot: Slot, prompt: list[int]) -> tuple[int, int]:
        best = (slot.seq, 0)
        for other in self._batch.slots:
            if other is not slot:
                n = common_prefix(other.reusable(self._n_keep), prompt)
                if n > best[1]:
                    best = (other.seq, n)
        return best

    def _save_evicted(self, engine: Engine, slot: Slot, keep: int) -> None:
        """Before a slot's KV is overwritten, keep a long-enough state in the RAM tier."""
        if self._store is None or slot.shifted:
            return
        if len(slot.cached) - keep >= self._store.min_tokens:
            self._store.put(slot.cached, engine.state_get(slot.seq), bounds=[slot.prompt_len])

    def _finish_unstarted(self, req: GenRequest) -> None:
        self.stats.cancelled += 1
        self._end(req, cancelled_before_start(req))

    def _end(self, req: GenRequest, event: Finished | Failed) -> None:
        """A request's last event; it no longer counts as in flight."""
        req.emit(event)
        with self._cond:
            self._n_in_flight -= 1
            self._cond.notify_all()

    def _drain_queue(self, error: EdgeInferError) -> None:
        with self._cond:
            while self._queue:
                self._end(self._queue.popleft(), Failed(error))

    def _shutdown(self, engine: Engine) -> None:
        self._drain_queue(ModelUnavailable(f"model {self.name!r} is shutting down"))
        for slot in self._batch.active():
            self._batch.fail(
                engine, slot, ModelUnavailable(f"model {self.name!r} is shutting down")
            )
        if self._store is not None:  # what the slots hold survives a restart on disk
            for slot in self._batch.slots:
                if len(slot.cached) >= self._store.min_tokens and not slot.shifted:
                    state = engine.state_get(slot.seq)
                    self._store.save_to_disk(slot.cached, state, bounds=[slot.prompt_len])
            self._store.flush()
        try:
            engine.close()
        except EngineError:
            log.exception("closing model %s", self.name)


def _as_edgeinfer(exc: Exception) -> EdgeInferError:
    if isinstance(exc, EdgeInferError):
        return exc
    return EngineError(f"internal engine error: {type(exc).__name__}: {exc}")
