"""What the pool, the drain and the service need of a model's runner, whatever runs its engine:
the :class:`Runner` interface, its counters, and :class:`Admission` (holds, the in-flight count
and the checks a request passes at submit), shared by the thread runner (``pool/runner.py``)
and the runner process (``pool/process.py``)."""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from edgeinfer.engine.base import EngineParams, Vocab
from edgeinfer.errors import Busy, ContextLengthExceeded, EdgeInferError
from edgeinfer.pool.events import GenRequest


class LatencyObserver(Protocol):
    """Receives latencies as they happen (``stats.Metrics`` feeds Prometheus histograms).
    Called on the runner thread: must be quick and thread-safe."""

    def ttft(self, model: str, seconds: float) -> None: ...

    def inter_token(self, model: str, seconds: float) -> None: ...


@dataclass
class RunnerStats:
    requests: int = 0
    prompt_tokens: int = 0
    prompt_tokens_evaluated: int = 0
    cached_tokens: int = 0
    generated_tokens: int = 0
    prefill_seconds: float = 0.0
    generate_seconds: float = 0.0
    ttft_seconds_total: float = 0.0
    ttft_count: int = 0
    errors: int = 0
    cancelled: int = 0
    busy_rejections: int = 0
    prefix_kept: int = 0  # requests that reused their own slot's KV
    prefix_copied: int = 0  # ... copied from another slot
    prefix_restored_ram: int = 0
    prefix_restored_disk: int = 0
    context_shifts: int = 0

    def __add__(self, other: RunnerStats) -> RunnerStats:
        """Field by field: a runner process's counters across its children's lives."""
        return RunnerStats(
            *(getattr(self, f.name) + getattr(other, f.name) for f in dataclasses.fields(self))
        )


class Runner(Protocol):
    """What the pool, the drain and the service use of a loaded model's runner: this thread
    runner, or a runner process (``pool/process.py``) that runs one in a child."""

    name: str
    path: Path
    params: EngineParams
    stats: RunnerStats
    load_error: EdgeInferError | None

    def held(self) -> contextlib.AbstractContextManager[None]: ...

    @property
    def holds(self) -> int: ...

    @property
    def busy(self) -> bool: ...

    def wait_idle(self, timeout: float) -> bool: ...

    def start(self) -> None: ...

    def wait_loaded(self, timeout: float | None = None) -> Vocab: ...

    @property
    def loaded(self) -> bool: ...

    @property
    def can_shift(self) -> bool: ...

    @property
    def engine(self) -> Vocab: ...

    def submit(self, req: GenRequest) -> None: ...

    def snapshot(self) -> dict[str, Any]: ...

    def memory_bytes(self) -> int | None:
        """The runner's own resident memory (a process's RSS); ``None``: shares the daemon's."""

    def stop(self, timeout: float = 10.0) -> None: ...


class Admission:
    """What every runner does on the event loop's side, whatever runs its engine: holds (a
    drain waits for them), the in-flight count, and the checks a request passes at submit."""

    name: str
    params: EngineParams
    stats: RunnerStats

    def __init__(
        self, *, max_queue: int, max_queued_tokens: int | None, cond: threading.Condition
    ) -> None:
        self._max_queue = max_queue
        self._max_queued_tokens = max_queued_tokens
        self._cond = cond
        self._holds = 0  # requests between the pool handing this runner out and submit()

    def _in_flight(self) -> int:
        """Requests submitted and not yet ended (caller holds ``_cond``)."""
        raise NotImplementedError

    @contextmanager
    def held(self) -> Iterator[None]:
        """Keep this runner from being retired while a request prepares its prompt (cache
        lookup, prompt layer, tokenizing) between the pool handing it out and :meth:`submit`;
        a drain waits for every hold to end."""
        with self._cond:
            self._holds += 1
        try:
            yield
        finally:
            with self._cond:
                self._holds -= 1
                self._cond.notify_all()

    @property
    def holds(self) -> int:
        return self._holds

    @property
    def busy(self) -> bool:
        """Whether any request holds this runner or is in it (queued, being admitted or in a
        slot): read under the lock, so a request moving from queue to slot is never missed."""
        with self._cond:
            return self._in_flight() > 0 or self._holds > 0

    def wait_idle(self, timeout: float) -> bool:
        """Wait up to ``timeout`` for :attr:`busy` to turn false (drains); True when idle."""
        with self._cond:
            return self._cond.wait_for(lambda: self._in_flight() == 0 and self._holds == 0, timeout)

    def _check_fits(self, req: GenRequest) -> None:
        if len(req.prompt) >= self.params.n_ctx:
            raise ContextLengthExceeded(
                f"the prompt is {len(req.prompt)} tokens; model {self.name!r} has a context of"
                f" {self.params.n_ctx} tokens per request (prompt plus answer)",
                param="messages",
            )

    def _check_queue(self, waiting: Sequence[GenRequest], req: GenRequest) -> None:
        """Bound the work waiting for a slot, not just the count: a request's work is its
        prompt plus its max_tokens. An empty queue takes any one request, or a large one could
        never run (caller holds ``_cond``)."""
        if len(waiting) >= self._max_queue:
            self._refused()
            raise Busy(f"model {self.name!r} has {len(waiting)} requests queued; retry")
        cap = self._max_queued_tokens
        if cap is None or not waiting:
            return
        queued = sum(len(r.prompt) + r.max_tokens for r in waiting)
        if queued + len(req.prompt) + req.max_tokens > cap:
            self._refused()
            raise Busy(
                f"model {self.name!r} has {queued} tokens of work queued"
                f" (max_queued_tokens = {cap}); retry"
            )

    def _refused(self) -> None:
        self.stats.busy_rejections += 1


def runner_snapshot(
    s: RunnerStats,
    slots: int,
    *,
    slots_busy: int = 0,
    queue_depth: int = 0,
    extra_buffers: bool | None = None,
    prompt_cache: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A runner's /stats figures: its counters and its live state."""
    return {
        "slots": slots,
        "slots_busy": slots_busy,
        "queue_depth": queue_depth,
        "requests": s.requests,
        "prompt_tokens": s.prompt_tokens,
        "prompt_tokens_evaluated": s.prompt_tokens_evaluated,
        "cached_tokens": s.cached_tokens,
        "cached_token_ratio": s.cached_tokens / s.prompt_tokens if s.prompt_tokens else 0.0,
        "generated_tokens": s.generated_tokens,
        "prefill_tokens_per_s": _rate(s.prompt_tokens_evaluated, s.prefill_seconds),
        "generation_tokens_per_s": _rate(s.generated_tokens, s.generate_seconds),
        "ttft_avg_s": s.ttft_seconds_total / s.ttft_count if s.ttft_count else None,
        "errors": s.errors,
        "cancelled": s.cancelled,
        "busy_rejections": s.busy_rejections,
        "prefix_kept": s.prefix_kept,
        "prefix_copied": s.prefix_copied,
        "prefix_restored_ram": s.prefix_restored_ram,
        "prefix_restored_disk": s.prefix_restored_disk,
        "context_shifts": s.context_shifts,
        "extra_buffers": extra_buffers,
        "prompt_cache": prompt_cache,
    }


def _rate(tokens: int, seconds: float) -> float | None:
    return tokens / seconds if seconds > 0 else None
