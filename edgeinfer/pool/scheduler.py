"""The pool: which models are served, their runners, and their state.

Built by the composition root (``bootstrap.py``) with an injected engine factory, so tests can
swap in the fake engine. A model that fails to pull or load is kept with its reason: requests
for it get ``model_unavailable`` naming the reason, and the other models keep serving.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeinfer.config.schema import ModelSpec
from edgeinfer.engine.base import EngineFactory, EngineParams
from edgeinfer.errors import EdgeInferError, ModelNotFound, ModelUnavailable
from edgeinfer.pool.prefix_store import PrefixStore
from edgeinfer.pool.runner import LatencyObserver, ModelRunner

log = logging.getLogger("edgeinfer.pool")


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
    )


@dataclass(frozen=True)
class ServedModel:
    """A model the daemon was asked to serve: its runner, or why it has none."""

    name: str
    spec: ModelSpec
    digest: str | None
    runner: ModelRunner | None
    error: EdgeInferError | None = None

    def status(self) -> str:
        if self.error is not None:
            return "error"
        if self.runner is None:
            return "unavailable"
        if self.runner.load_error is not None:
            return "error"
        return "ready" if self.runner.loaded else "loading"

    def reason(self) -> str | None:
        err = self.error or (self.runner.load_error if self.runner else None)
        return err.message if err else None


class ModelPool:
    """Owns the runners of all served models. Start once, stop once."""

    def __init__(
        self,
        factory: EngineFactory,
        *,
        state_dir: Path | None = None,
        observer: LatencyObserver | None = None,
        runner: Callable[..., ModelRunner] = ModelRunner,
    ) -> None:
        self._factory = factory
        self._state_dir = state_dir
        self._observer = observer
        self._make_runner = runner
        self._models: dict[str, ServedModel] = {}
        self.default: str | None = None

    def add(self, spec: ModelSpec, path: Path, digest: str | None) -> None:
        """Serve ``spec`` from the verified file at ``path``; its runner loads on its thread."""
        runner = self._make_runner(
            spec.name,
            path,
            engine_params(spec),
            self._factory,
            max_queue=spec.max_queue,
            prefix_store=self._prefix_store(spec, digest),
            context_shift=spec.context_shift,
            n_keep=spec.n_keep,
            observer=self._observer,
        )
        self._models[spec.name] = ServedModel(spec.name, spec, digest, runner)
        self.default = self.default or spec.name
        runner.start()

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

    def add_failed(self, spec: ModelSpec, error: EdgeInferError) -> None:
        """Record a model that could not be pulled or verified, so requests get the reason."""
        self._models[spec.name] = ServedModel(spec.name, spec, None, None, error)

    def get(self, name: str | None) -> tuple[ServedModel, ModelRunner]:
        """The model and runner for a request's ``model`` (``None``/``auto``: the default)."""
        if name in (None, "", "auto"):
            name = self.default or next(iter(self._models), None)
        served = self._models.get(name or "")
        if served is None:
            known = ", ".join(self._models) or "none"
            raise ModelNotFound(
                f"model {name!r} is not served here (served: {known})", param="model"
            )
        if served.error is not None or served.runner is None:
            raise ModelUnavailable(f"model {name!r} is unavailable: {served.reason()}")
        if served.runner.load_error is not None:
            raise ModelUnavailable(f"model {name!r} failed to load: {served.reason()}")
        return served, served.runner

    def models(self) -> list[ServedModel]:
        return list(self._models.values())

    def wait_loaded(self, timeout: float | None = None) -> None:
        """Block until every runner finished loading (successfully or not)."""
        for served in self._models.values():
            if served.runner is not None:
                try:
                    served.runner.wait_loaded(timeout)
                except EdgeInferError as exc:
                    log.error("model %s: %s", served.name, exc.message)

    def snapshot(self) -> dict[str, Any]:
        return {
            m.name: {
                "status": m.status(),
                "reason": m.reason(),
                **(m.runner.snapshot() if m.runner is not None else {}),
            }
            for m in self._models.values()
        }

    def stop(self) -> None:
        for served in self._models.values():
            if served.runner is not None:
                served.runner.stop()
