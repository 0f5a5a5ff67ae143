"""The batching step: one ``decode`` over a runner's slots, and what each sampled token does.

:class:`Batcher` owns a :class:`~edgeinfer.pool.runner.ModelRunner`'s slots and is called on the
runner thread only, so it takes no lock. Each step is one ``decode`` holding one token of every
generating slot plus prompt chunks of newly admitted requests under the ``n_batch`` budget (see
:func:`slots.plan_step`); each sampled token streams text, ends its request (stop, length) or
shifts the context. A request's last event goes out through the runner's ``end`` callback,
which counts it out of flight.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from edgeinfer.core.values import Delta, Failed, Finished, FinishReason, TokenLogprob, Usage
from edgeinfer.engine.base import BatchItem, Engine, EngineParams
from edgeinfer.errors import EdgeInferError, RequestTimeout
from edgeinfer.pool.admission import LatencyObserver, RunnerStats
from edgeinfer.pool.events import GenRequest
from edgeinfer.pool.slots import plan_step
from edgeinfer.pool.text import TextStream


@dataclass(eq=False)
class Slot:
    """One sequence of the context: the tokens its KV holds, and the request in it, if any."""

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
    held: list[str] = field(default_factory=list)  # text a ``whole`` request gets at its end

    def reusable(self, n_keep: int) -> list[int]:
        return self.cached[:n_keep] if self.shifted else self.cached

    def take_held(self) -> str:
        text, self.held = "".join(self.held), []
        return text


class Batcher:
    """Runs the decode steps over one runner's slots (the runner admits requests into them)."""

    def __init__(
        self,
        name: str,
        params: EngineParams,
        *,
        stats: RunnerStats,
        clock: Callable[[], float],
        observer: LatencyObserver | None,
        context_shift: bool,
        n_keep: int,
        end: Callable[[GenRequest, Finished | Failed], None],
    ) -> None:
        self.name = name
        self.params = params
        self.stats = stats  # the runner's counters, counted into in place
        self._clock = clock
        self._observer = observer
        self._context_shift = context_shift
        self._n_keep = n_keep
        self._end = end
        self.slots = [Slot(seq=i) for i in range(params.slots)]

    def active(self) -> list[Slot]:
        return [s for s in self.slots if s.req is not None]

    def step(self, engine: Engine) -> None:
        now = self._clock()
        for slot in self.active():
            assert slot.req is not None
            if slot.req.cancelled.is_set():
                self.stats.cancelled += 1
                self._finish(engine, slot, "cancelled")
            elif slot.req.deadline is not None and now > slot.req.deadline:
                self.fail(engine, slot, RequestTimeout("the request ran past its timeout"))
        generating = [s for s in self.active() if s.next_token is not None]
        prefilling = [s for s in self.active() if s.next_token is None and s.pending]
        if not generating and not prefilling:
            return
        batch: list[BatchItem] = []
        outputs: list[tuple[Slot, int]] = []
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
                self.fail(engine, slot, exc)
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
    def _logprob_top_n(slot: Slot) -> int | None:
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

    def _on_token(self, engine: Engine, slot: Slot, token: int) -> None:
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
        if out and req.whole and not slot.logprobs:
            # Nobody reads it before the end: one event per answer instead of per token
            # (in a runner process each is a message the daemon wakes up for, 0.4 ms of
            # its CPU, taken from the decoding threads on a small machine).
            slot.held.append(out)
        elif out:
            req.emit(Delta(slot.take_held() + out, tuple(slot.logprobs)))
            slot.logprobs = []
        if text.stopped:
            self._finish(engine, slot, "stop")
        elif slot.n_gen >= req.max_tokens:
            self._finish(engine, slot, "length")
        elif len(slot.cached) + 1 >= self.params.n_ctx and not self._shift(engine, slot):
            self._finish(engine, slot, "length")
        else:
            slot.next_token = token

    def _shift(self, engine: Engine, slot: Slot) -> bool:
        """Context shift: keep the first n_keep tokens, drop half of the rest, slide positions."""
        if not (self._context_shift and engine.info.can_shift):
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

    def _release(self, engine: Engine, slot: Slot) -> GenRequest:
        req = slot.req
        assert req is not None
        slot.pending = []  # a partly evaluated prompt keeps the KV it has: still a prefix
        if slot.shifted:  # shifted KV is not what a fresh evaluation would give: keep n_keep
            engine.seq_rm(slot.seq, self._n_keep)
            slot.cached = slot.cached[: self._n_keep]
            slot.shifted = False
        engine.free_sampler(slot.sampler)
        slot.req, slot.sampler, slot.text, slot.next_token = None, None, None, None
        slot.held = []
        slot.last_used = self._clock()
        return req

    def _finish(self, engine: Engine, slot: Slot, reason: FinishReason) -> None:
        text, n_gen, n_cached, t_first = slot.text, slot.n_gen, slot.n_cached, slot.t_first
        logprobs, held = tuple(slot.logprobs), slot.take_held()
        req = self._release(engine, slot)
        if text is not None and reason != "cancelled":
            tail = held + text.flush()
            if tail or logprobs:
                req.emit(Delta(tail, logprobs))
        now = self._clock()
        ttft = (t_first - req.submitted) if t_first is not None else 0.0
        usage = Usage(len(req.prompt), n_gen, n_cached, ttft, now - req.submitted)
        matched = text.matched if text is not None and reason == "stop" else None
        self._end(req, Finished(reason, usage, matched))

    def fail(self, engine: Engine, slot: Slot, error: EdgeInferError) -> None:
        """End ``slot``'s request with ``error`` and free the slot (its KV stays a prefix)."""
        self.stats.errors += 1
        req = self._release(engine, slot)
        self._end(req, Failed(error))
