"""The Engine port.

One :class:`Engine` is one loaded model with one context holding ``slots`` sequences. It is not
thread-safe: exactly one runner thread (``pool/runner.py``) owns it and makes every call. The
real implementation is ``engine/llama.py`` (the only importer of ``llama_cpp``); ``engine/fake.py``
is a deterministic stand-in for unit tests of the scheduling logic.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol


@dataclass(frozen=True)
class EngineParams:
    """How to load a model; a slice of the catalogue entry, passed in by the pool."""

    n_ctx: int = 4096  # per slot
    slots: int = 4
    n_batch: int = 512
    threads: int = 0  # 0 = physical cores
    gpu_layers: int = 0
    flash_attn: Literal["auto", "on", "off"] = "auto"


@dataclass(frozen=True)
class Sampling:
    """Per-request sampling settings. ``temperature <= 0`` means greedy."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    seed: int | None = None
    repeat_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[int, float] = field(default_factory=dict)

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0


@dataclass(frozen=True)
class EngineInfo:
    """What the rest of the system needs to know about a loaded model."""

    n_ctx_train: int
    n_vocab: int
    chat_template: str | None
    bos_text: str
    eos_text: str
    size_bytes: int


@dataclass(frozen=True)
class BatchItem:
    """One token of a decode step: sequence, position, token, and whether to keep its logits."""

    seq: int
    pos: int
    token: int
    logits: bool


class SamplerHandle(Protocol):
    """Opaque per-request sampler state owned by the engine."""


class Engine(Protocol):
    info: EngineInfo
    params: EngineParams

    def tokenize(self, text: str, *, add_special: bool) -> list[int]:
        """Text to tokens; ``add_special`` adds BOS where the model wants it."""
        ...

    def token_to_piece(self, token: int) -> bytes:
        """The bytes of one token (control tokens render empty)."""
        ...

    def is_eog(self, token: int) -> bool: ...

    def decode(self, batch: Sequence[BatchItem]) -> None:
        """Evaluate one batch (at most ``params.n_batch`` items). Raises EngineError."""
        ...

    def new_sampler(self, sampling: Sampling) -> SamplerHandle: ...

    def sample(self, sampler: SamplerHandle, batch_index: int) -> int:
        """Sample from the logits of ``batch_index`` of the last decode and accept the token."""
        ...

    def free_sampler(self, sampler: SamplerHandle) -> None: ...

    def seq_rm(self, seq: int, start: int) -> None:
        """Forget the KV of ``seq`` from position ``start`` on."""
        ...

    def close(self) -> None: ...


EngineFactory = Callable[[Path, EngineParams], Engine]
"""Loads a model file into an Engine; the pool calls it on the runner thread."""
