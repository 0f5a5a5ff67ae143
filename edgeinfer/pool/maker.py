"""Building a model's runner from its catalogue entry: engine parameters, queue bounds and
prompt-cache tiers. The pool calls a :class:`RunnerMaker` on its load thread."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from edgeinfer.config.schema import ModelSpec
from edgeinfer.engine.base import EngineFactory, EngineParams
from edgeinfer.pool.admission import LatencyObserver, Runner
from edgeinfer.pool.prefix_store import PrefixStore
from edgeinfer.pool.runner import ModelRunner


def engine_params(spec: ModelSpec) -> EngineParams:
    """The engine's slice of a catalogue entry."""
    return EngineParams(
        n_ctx=spec.n_ctx,
        slots=spec.slots,
        n_batch=max(spec.n_batch, spec.slots),
        threads=spec.threads,
        gpu_layers=spec.gpu_layers,
        flash_attn=spec.flash_attn,
        n_ubatch=spec.n_ubatch,
        kv_type=spec.kv_type,
        extra_buffers=spec.extra_buffers,
        name=spec.name,
    )


class RunnerMaker:
    """Makes (does not start) a runner for a spec; the pool's factory and state dir are
    injected once."""

    def __init__(
        self,
        factory: EngineFactory,
        *,
        state_dir: Path | None = None,
        observer: LatencyObserver | None = None,
        runner: Callable[..., Runner] = ModelRunner,
    ) -> None:
        self._factory = factory
        self._state_dir = state_dir
        self._observer = observer
        self._runner = runner

    def __call__(self, spec: ModelSpec, path: Path, digest: str | None) -> Runner:
        return self._runner(
            spec.name,
            path,
            engine_params(spec),
            self._factory,
            max_queue=spec.max_queue,
            max_queued_tokens=spec.max_queued_tokens,
            prefix_store=self._prefix_store(spec, digest),
            context_shift=spec.context_shift,
            n_keep=spec.n_keep,
            observer=self._observer,
            step_timeout=spec.step_timeout,
        )

    def _prefix_store(self, spec: ModelSpec, digest: str | None) -> PrefixStore | None:
        """The model's prompt-cache tiers. Saved states only fit the same file, context size
        and KV type, so those name the disk folder."""
        if spec.prompt_cache_ram_mb == 0 and spec.prompt_cache_disk_mb == 0:
            return None
        disk = None
        if self._state_dir is not None and digest and spec.prompt_cache_disk_mb:
            disk = self._state_dir / f"{spec.name}-{digest[:16]}-{spec.n_ctx}-{spec.kv_type}"
        return PrefixStore(
            ram_bytes=spec.prompt_cache_ram_mb << 20,
            disk_dir=disk,
            disk_bytes=spec.prompt_cache_disk_mb << 20,
            min_tokens=spec.prompt_cache_min_tokens,
        )
