"""Values every layer may pass and import: sampling settings, token logprobs and the events a
generation streams (a runner's, a remote tier's, a cache replay's alike).

The neutral home of the types that cross layers (docs/architecture.md, "Layers"): it imports
nothing of edgeinfer but :mod:`edgeinfer.errors`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from edgeinfer.errors import EdgeInferError


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
    grammar: str | None = None  # GBNF, from Engine.grammar_for (structured output)

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0


@dataclass(frozen=True)
class TokenLogprob:
    """One sampled token's log-probability, its most likely alternatives, and the entropy (nats)
    of the whole next-token distribution when the engine computed it."""

    piece: bytes
    logprob: float
    top: tuple[tuple[bytes, float], ...] = ()
    entropy: float | None = None


FinishReason = Literal["stop", "length", "cancelled"]


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    ttft_s: float
    total_s: float


@dataclass(frozen=True)
class Delta:
    text: str
    logprobs: tuple[TokenLogprob, ...] = ()  # the tokens this text came from, when asked


@dataclass(frozen=True)
class Finished:
    reason: FinishReason
    usage: Usage
    stop_sequence: str | None = None  # the stop string that ended it (reason "stop")


@dataclass(frozen=True)
class Failed:
    error: EdgeInferError


Event = Delta | Finished | Failed
