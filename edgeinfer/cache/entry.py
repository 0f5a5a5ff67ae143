"""What goes into the cache and what comes out of a lookup.

The service builds a :class:`CacheEntry` after a generation (the response body as the client got
it, the token counts and how long it took) and receives a :class:`CacheHit` from a lookup, which
it serves in the shape of a generation and records in the savings counters.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

Layer = Literal["exact", "semantic"]


@dataclass(frozen=True)
class CacheEntry:
    """One generated answer, keyed for both layers.

    Attributes:
        exact_key: ``cache.key.exact_key`` of the request.
        namespace: ``cache.key.namespace_key`` of the request.
        model: the model route that answered.
        model_digest: sha256 of the model file, so entries of a replaced file can be purged.
        question: the last user turn, or None when the request can only be cached exactly.
        embedding: the question's unit vector (``embedder.dim`` floats), or None.
        response: the response body (a chat completion), served again on a hit.
        prompt_tokens: prompt tokens the generation processed.
        completion_tokens: tokens it generated.
        generation_s: how long the generation took: the time a hit saves.
        created: when it was stored (``None``: the store's clock at ``put``).
    """

    exact_key: str
    namespace: str
    model: str
    model_digest: str
    question: str | None
    embedding: NDArray[np.float32] | None
    response: dict[str, Any]
    prompt_tokens: int = 0
    completion_tokens: int = 0
    generation_s: float = 0.0
    created: float | None = None
    last_hit: float | None = None
    hits: int = 0


@dataclass(frozen=True)
class GuardRejection:
    """A stored question above the threshold that the guard refused, and why."""

    question: str
    similarity: float
    reason: str


@dataclass(frozen=True)
class CacheHit:
    """A stored answer that may be served.

    Attributes:
        layer: ``"exact"`` or ``"semantic"``.
        response: the stored response body.
        similarity: cosine of the two questions (1.0 for the exact layer).
        question: the stored question the answer belongs to.
        guard_rejections: closer candidates the guard refused before this one was accepted.
    """

    layer: Layer
    response: dict[str, Any]
    similarity: float
    prompt_tokens: int
    completion_tokens: int
    generation_s: float
    entry_id: int
    question: str | None = None
    guard_rejections: tuple[GuardRejection, ...] = field(default_factory=tuple)
