"""One runner thread per loaded model: continuous batching over the context's slots.

The runner thread is the only caller of its :class:`~edgeinfer.engine.Engine`. The event loop
talks to it through :meth:`ModelRunner.submit` (bounded queue; a full queue raises ``Busy``) and
receives events through each request's ``emit`` callback, which the runner calls from its own
thread and which must not block (the service passes ``loop.call_soon_threadsafe``).

Each step is one ``decode`` holding one token of every generating slot plus prompt chunks of
newly admitted requests under the ``n_batch`` budget (see :func:`slots.plan_step`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeinfer.core.values import Delta, Failed, Finished, FinishReason, TokenLogprob, Usage
from edgeinfer.engine.base import BatchItem, Engine, EngineFactory, EngineParams
from edgeinfer.errors import (
    EdgeInferError,
    EngineError,
    ModelUnavailable,
    RequestTimeout,
)
from edgeinfer.pool.admission import Admission, LatencyObserver, RunnerStats, runner_snapshot
from edgeinfer.pool.events import GenRequest, cancelled_before_start
from edgeinfer.pool.prefix_store import PrefixStore
from edgeinfer.pool.slots import choose_slot, common_prefix, plan_reuse, plan_step
from edgeinfer.pool.text import TextStream

log = logging.getLogger("edgeinfer.runner")

# A copy or restore must bring at least this many more prompt tokens than the slot has.
_MIN_GAIN = 16


@dataclass(eq=False)
class _Slot:
    seq: int
    cached: list[int] = field(default_factory=list)
    last_used: float = 0.0
    req: GenRequest | None = None
    pending: list[int] = field(default_factory=list)
    sampler: Any = None
    text: TextStream | None = None
    next_token: int | None = None
    n_gen: int = 0
    n_cached: int = 0
    t_first: float | None = None
    t_last: float = 0.0
    shifted: bool = False  # after a context shift only the first n_keep tokens are reusable
    prompt_len: int = 0  # where the last request's prompt ended: a restore boundary
    logprobs: list[TokenLogprob] = field(default_factory=list)  # not yet emitted

    def reusable(self, n_keep: int) -> list[int]:
        return self.cached[:n_keep] if self.shifted else self.cached


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
    ) -> None:
        super().__init__(
            max_queue=max_queue, max_queued_tokens=max_queued_tokens, cond=threading.Condition()
        )
        self.name = name
        self.params = params
        self.path = path  # the GGUF file (its metadata may hold default sampling settings)
        self._factory = factory
        self._clock = clock
        self._store = prefix_store
        self._observer = observer
        self._context_shift = context_shift
        self._n_keep = min(n_keep, params.n_ctx // 2)
        self._queue: deque[GenRequest] = deque()
        self._n_in_flight = 0  # submitted and not yet ended: queued, being admitted, in a slot
        self._stopping = False
        self._slots = [_Slot(seq=i) for i in range(params.slots)]
        self._engine: Engine | None = None
        self._loaded = threading.Event()
        self.load_error: EdgeInferError | None = None
        self.stats = RunnerStats()
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

    def snapshot(self) -> dict[str, Any]:
        """Live figures for /stats (read without the lock: ints are atomic enough here)."""
        return runner_snapshot(
            self.stats,
            len(self._slots),
            slots_busy=sum(1 for sl in self._slots if sl.req is not None),
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
                try:
                    self._step(self._engine)
                except Exception as exc:  # a bug must fail requests, not hang the daemon
                    log.exception("model %s: step failed; failing its active requests", self.name)
                    for slot in self._active():
                        slot.cached = []
                        self._engine.seq_rm(slot.seq, 0)
                        self._fail(self._engine, slot, _as_edgeinfer(exc))
        finally:
            self._shutdown(self._engine)

    def _wait_for_work(self, engine: Engine) -> bool:
        with self._cond:
            while not self._stopping and not self._queue and not self._active():
                self._cond.wait()
            if self._stopping:
                return False
            free = sum(1 for s in self._slots if s.req is None)
            taken = [self._queue.popleft() for _ in range(min(free, len(self._queue)))]
        # Admission builds samplers (grammars) and copies or restores KV state (~100 MB for a
        # large model, maybe from disk): never under the lock submit() and held() take on the
        # event loop. Only this thread touches the slots.
        self._admit(engine, taken)
        return True

    def _active(self) -> list[_Slot]:
        return [s for s in self._slots if s.req is not None]

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
        idle = [(s.seq, s.cached, s.last_used) for s in self._slots if s.req is None]
        sampler = engine.new_sampler(req.sampling)  # raises for a grammar llama.cpp refuses
        seq, reuse = choose_slot(idle, req.prompt)
        slot = self._slots[seq]
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

    def _place_prefix(self, engine: Engine, slot: _Slot, prompt: list[int], reuse: int) -> int:
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

    def _best_other_slot(self, slot: _Slot, prompt: list[int]) -> tuple[int, int]:
        best = (slot.seq, 0)
        for other in self._slots:
            if other is not slot:
                n = common_prefix(other.reusable(self._n_keep), prompt)
                if n > best[1]:
                    best = (other.seq, n)
        return best

    def _save_evicted(self, engine: Engine, slot: _Slot, keep: int) -> None:
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

    def _step(self, engine: Engine) -> None:
        now = self._clock()
        for slot in self._active():
            assert slot.req is not None
            if slot.req.cancelled.is_set():
                self.stats.cancelled += 1
                self._finish(engine, slot, "cancelled")
            elif slot.req.deadline is not None and now > slot.req.deadline:
                self._fail(engine, slot, RequestTimeout("the request ran past its timeout"))
        generating = [s for s in self._active() if s.next_token is not None]
        prefilling = [s for s in self._active() if s.next_token is None and s.pending]
        if not generating and not prefilling:
            return
        batch: list[BatchItem] = []
        outputs: list[tuple[_Slot, int]] = []
        for slot in generating:
            assert slot.next_token is not None
            batch.append(BatchItem(slot.seq, len(slot.cached), slot.next_token, True))
            slot.cached.append(slot.next_token)
            outputs.append((slot, len(batch) - 1))
        plan = plan_step(len(generating), [len(s.pending) for s in prefilling], self.params.n_batch)
        n_prefill = 0
        for slot, take in zip(prefilling, plan, strict=True):
            for k, token in enumerate(slot.pending[:take]):
                last = k == len(slot.pending) - 1
                batch.append(BatchItem(slot.seq, len(slot.cached), token, last))
                slot.cached.append(token)
            if take == len(slot.pending):
                outputs.append((slot, len(batch) - 1))
            slot.pending = slot.pending[take:]
            n_prefill += take
        started = self._clock()
        try:
            engine.decode(batch)
        except EdgeInferError as exc:
            for slot in generating + prefilling:
                slot.cached = []
                self._fail(engine, slot, exc)
            return
        elapsed = self._clock() - started
        self._account(elapsed, n_prefill, len(generating))
        for slot, index in outputs:
            token = engine.sample(slot.sampler, index)
            top_n = self._logprob_top_n(slot)
            if top_n is not None and not engine.is_eog(token):
                slot.logprobs.append(engine.logprobs(index, token, top_n))
            self._on_token(engine, slot, token)

    @staticmethod
    def _logprob_top_n(slot: _Slot) -> int | None:
        """How many alternatives this slot's next token's logprob wants, ``None``: no logprob
        (not asked for, or past the request's ``logprob_tokens``)."""
        req = slot.req
        if req is None or (req.logprob_tokens is not None and slot.n_gen >= req.logprob_tokens):
            return None
        return req.logprobs

    def _account(self, elapsed: float, n_prefill: int, n_gen: int) -> None:
        # A mixed step's time is split in proportion to the tokens of each kind it held.
        total = n_prefill + n_gen
        if total:
            self.stats.prompt_tokens_evaluated += n_prefill
            self.stats.prefill_seconds += elapsed * n_prefill / total
            self.stats.generate_seconds += elapsed * n_gen / total

    def _on_token(self, engine: Engine, slot: _Slot, token: int) -> None:
        req, text = slot.req, slot.text
        assert req is not None and text is not None
        now = self._clock()
        if slot.t_first is None:
            slot.t_first = now
            self.stats.ttft_seconds_total += now - req.submitted
            self.stats.ttft_count += 1
            if self._observer is not None:
                self._observer.ttft(self.name, now - req.submitted)
        elif self._observer is not None:
            self._observer.inter_token(self.name, now - slot.t_last)
        slot.t_last = now
        if engine.is_eog(token):
            self._finish(engine, slot, "stop")
            return
        slot.n_gen += 1
        self.stats.generated_tokens += 1
        out = text.feed(engine.token_to_piece(token))
        if out:
            req.emit(Delta(out, tuple(slot.logprobs)))
            slot.logprobs = []
        if text.stopped:
            self._finish(engine, slot, "stop")
        elif slot.n_gen >= req.max_tokens:
            self._finish(engine, slot, "length")
        elif len(slot.cached) + 1 >= self.params.n_ctx and not self._shift(engine, slot):
            self._finish(engine, slot, "length")
        else:
            slot.next_token = token

    def _shift(self, engine: Engine, slot: _Slot) -> bool:
        """Context shift: keep the first n_keep tokens, drop half of the rest, slide positions."""
        if not self.can_shift:
            return False
        keep = self._n_keep
        discard = (len(slot.cached) - keep) // 2
        if discard <= 0:
            return False
        engine.seq_rm(slot.seq, keep, keep + discard)
        engine.seq_shift(slot.seq, keep + discard, -discard)
        slot.cached = slot.cached[:keep] + slot.cached[keep + discard :]
        slot.shifted = True
        self.stats.context_shifts += 1
        return True

    def _release(self, engine: Engine, slot: _Slot) -> GenRequest:
        req = slot.req
        assert req is not None
        slot.pending = []  # a partly evaluated prompt keeps the KV it has: still a prefix
        if slot.shifted:  # shifted KV is not what a fresh evaluation would give: keep n_keep
            engine.seq_rm(slot.seq, self._n_keep)
            slot.cached = slot.cached[: self._n_keep]
            slot.shifted = False
        engine.free_sampler(slot.sampler)
        slot.req, slot.sampler, slot.text, slot.next_token = None, None, None, None
        slot.last_used = self._clock()
        return req

    def _finish(self, engine: Engine, slot: _Slot, reason: FinishReason) -> None:
        text, n_gen, n_cached, t_first = slot.text, slot.n_gen, slot.n_cached, slot.t_first
        logprobs = tuple(slot.logprobs)
        req = self._release(engine, slot)
        if text is not None and reason != "cancelled":
            tail = text.flush()
            if tail or logprobs:
                req.emit(Delta(tail, logprobs))
        now = self._clock()
        ttft = (t_first - req.submitted) if t_first is not None else 0.0
        usage = Usage(len(req.prompt), n_gen, n_cached, ttft, now - req.submitted)
        matched = text.matched if text is not None and reason == "stop" else None
        self._end(req, Finished(reason, usage, matched))

    def _fail(self, engine: Engine, slot: _Slot, error: EdgeInferError) -> None:
        self.stats.errors += 1
        req = self._release(engine, slot)
        self._end(req, Failed(error))

    def _drain_queue(self, error: EdgeInferError) -> None:
        with self._cond:
            while self._queue:
                self._end(self._queue.popleft(), Failed(error))

    def _shutdown(self, engine: Engine) -> None:
        self._drain_queue(ModelUnavailable(f"model {self.name!r} is shutting down"))
        for slot in self._active():
            self._fail(engine, slot, ModelUnavailable(f"model {self.name!r} is shutting down"))
        if self._store is not None:  # what the slots hold survives a restart on disk
            for slot in self._slots:
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
