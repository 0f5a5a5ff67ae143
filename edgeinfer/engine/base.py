"""The Engine port.

One :class:`Engine` is one loaded model with one context holding ``slots`` sequences. It is not
thread-safe: exactly one runner thread (``pool/runner.py``) owns it and makes every call. The
real implementation is ``engine/llama.py`` (the only importer of ``llama_cpp``); ``engine/fake.py``
is a deterministic stand-in for unit tests of the scheduling logic.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

from edgeinfer.core.values import Sampling, TokenLogprob


@dataclass(frozen=True)
class EngineParams:
    """How to load a model; a slice of the catalogue entry, passed in by the pool."""

    n_ctx: int = 4096  # per slot
    slots: int = 4
    n_batch: int = 512
    threads: int = 0  # 0 = physical cores
    gpu_layers: int = 0
    flash_attn: Literal["auto", "on", "off"] = "auto"
    n_ubatch: int = 512
    kv_type: Literal["f16", "q8_0"] = "f16"
    # llama.cpp's extra buffer types (AMX, repacked weights); "auto" = on where a probe decode
    # survives them (engine/extra_buffers.py)
    extra_buffers: Literal["auto", "on", "off"] = "auto"
    name: str = ""  # the catalogue name, for log lines


@dataclass(frozen=True)
class EngineInfo:
    """What the rest of the system needs to know about a loaded model."""

    n_ctx_train: int
    n_vocab: int
    chat_template: str | None
    bos_text: str
    eos_text: str
    size_bytes: int
    can_shift: bool = True  # whether positions can be shifted (context shift)
    extra_buffers: bool = False  # whether llama.cpp repacked weights into extra buffer types


@dataclass(frozen=True)
class BatchItem:
    """One token of a decode step: sequence, position, token, and whether to keep its logits."""

    seq: int
    pos: int
    token: int
    logits: bool


class SamplerHandle(Protocol):
    """Opaque per-request sampler state owned by the engine."""


class Vocab(Protocol):
    """The model-facing calls the daemon's request path makes (prompt rendering, token counts,
    grammars). A runner process owns the :class:`Engine`; the daemon answers these from a
    vocab-only load of the same file, so tokenizing never waits on a decode."""

    info: EngineInfo

    def tokenize(self, text: str, *, add_special: bool, parse_special: bool = True) -> list[int]:
        """Text to tokens; ``add_special`` adds BOS where the model wants it, ``parse_special``
        turns special-token text (``<|im_start|>``) into those tokens: never for user text."""
        ...

    def token_to_piece(self, token: int) -> bytes:
        """The bytes of one token (control tokens render empty)."""
        ...

    def is_eog(self, token: int) -> bool: ...

    def grammar_for(self, kind: str, schema: str | None) -> str:
        """GBNF for ``response_format`` ``json_object`` or ``json_schema`` (raises
        InvalidRequest for a schema that cannot be converted). Pure: any thread may call it."""
        ...


class Engine(Vocab, Protocol):
    params: EngineParams

    def decode(self, batch: Sequence[BatchItem]) -> None:
        """Evaluate one batch (at most ``params.n_batch`` items). Raises EngineError."""
        ...

    def new_sampler(self, sampling: Sampling) -> SamplerHandle:
        """A sampler chain for one request; raises EngineError for a grammar llama.cpp refuses."""
        ...

    def logprobs(self, batch_index: int, token: int, top_n: int) -> TokenLogprob:
        """Log-probability of ``token`` under the raw logits of ``batch_index``, and the
        ``top_n`` most likely tokens there."""
        ...

    def sample(self, sampler: SamplerHandle, batch_index: int) -> int:
        """Sample from the logits of ``batch_index`` of the last decode and accept the token."""
        ...

    def free_sampler(self, sampler: SamplerHandle) -> None: ...

    def seq_rm(self, seq: int, start: int, end: int = -1) -> None:
        """Forget the KV of ``seq`` in positions ``[start, end)`` (``end=-1``: to the end)."""
        ...

    def seq_cp(self, src: int, dst: int) -> None:
        """Make ``dst`` a copy of the whole of ``src`` (the caller trims it with seq_rm)."""
        ...

    def seq_shift(self, seq: int, start: int, delta: int) -> None:
        """Add ``delta`` to the positions of ``seq`` from ``start`` on (context shift)."""
        ...

    def state_get(self, seq: int) -> bytes:
        """The saved state (KV) of one sequence, for the prompt-cache tiers."""
        ...

    def state_set(self, seq: int, state: bytes) -> None:
        """Load a state saved by :meth:`state_get` into ``seq`` (which must be empty)."""
        ...

    def close(self) -> None: ...


EngineFactory = Callable[[Path, EngineParams], Engine]
"""Loads a model file into an Engine; the pool calls it on the runner thread."""
