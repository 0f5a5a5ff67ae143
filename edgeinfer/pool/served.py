"""The pool's records of served models: the public view, the mutable entry, the budget."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeinfer.config.schema import ModelSpec
from edgeinfer.errors import EdgeInferError
from edgeinfer.pool.admission import Runner
from edgeinfer.pool.memory import MemoryEstimate


@dataclass(frozen=True)
class Budget:
    """Bytes models may hold; ``None`` is unlimited (RAM) or unchecked (VRAM)."""

    ram: int | None = None
    vram: int | None = None


@dataclass(frozen=True)
class ServedModel:
    """A served model as callers see it: its spec, and its runner when loaded."""

    name: str
    spec: ModelSpec
    digest: str | None
    runner: Runner | None
    error: EdgeInferError | None = None
    loading: bool = False
    not_applied: str | None = None
    """Why the model's changed settings did not load (the previous ones still serve)."""

    def status(self) -> str:
        """``ready``, ``loading``, ``unloaded`` (loads on demand) or ``error``."""
        if self.error is not None:
            return "error"
        if self.runner is None:
            return "loading" if self.loading else "unloaded"
        if self.runner.load_error is not None:
            return "error"
        return "ready" if self.runner.loaded else "loading"

    def reason(self) -> str | None:
        err = self.error or (self.runner.load_error if self.runner else None)
        return err.message if err else None


@dataclass(eq=False)
class Entry:
    """The pool's mutable record of one served model (guarded by the pool's lock)."""

    spec: ModelSpec
    path: Path | None = None
    digest: str | None = None
    runner: Runner | None = None
    error: EdgeInferError | None = None  # pull or load failure; cleared by a config change
    refused: EdgeInferError | None = None  # the last on-demand load's refusal, told once
    pending: ModelSpec | None = None  # a changed spec loading while `runner` serves the old one
    not_applied: str | None = None  # why the last change did not load; cleared by a load
    loading: bool = False
    estimate: MemoryEstimate | None = None
    measured: int | None = None
    last_used: float = 0.0  # injected clock: LRU order and keep-alive
    handed_out: float = field(default_factory=time.monotonic)  # real clock: drain grace

    def held(self) -> tuple[int, int]:
        """RAM and VRAM the loaded runner is accounted for: the larger of estimate and measure."""
        if self.runner is None or self.estimate is None:
            return 0, 0
        return max(self.estimate.ram, self.measured or 0), self.estimate.vram


def model_row(entry: Entry, view: ServedModel) -> dict[str, Any]:
    est = entry.estimate
    return {
        "status": view.status(),
        "reason": view.reason(),
        "not_applied": view.not_applied,
        "pinned": entry.spec.pin,
        "keep_alive": entry.spec.keep_alive,
        "memory": {
            "estimated": est.as_dict() if est is not None else None,
            "measured_bytes": entry.measured,
        },
        "memory_estimated_bytes": (est.ram + est.vram) if est is not None else 0,
        "memory_measured_bytes": entry.measured or 0,
        **(view.runner.snapshot() if view.runner is not None else {}),
    }


def mib(value: int | None) -> str:
    return "unlimited" if value is None else f"{value >> 20} MiB"
