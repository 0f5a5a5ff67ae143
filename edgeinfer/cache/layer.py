"""The two cache layers as the service uses them: look a request up, store what was generated.

Wraps the store, the embedder and the savings counters. Every blocking call (SQLite reads, the
ONNX embedding) runs in a worker thread; writes go to the store's own writer thread.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from edgeinfer.cache.entry import CacheEntry, CacheHit
from edgeinfer.cache.key import (
    CacheMode,
    cache_mode,
    cache_threshold,
    exact_key,
    namespace_key,
    semantic_question,
)
from edgeinfer.cache.savings import CostEstimator, Savings
from edgeinfer.cache.store import CacheStore
from edgeinfer.core.embedding import Embedder

log = logging.getLogger("edgeinfer.cache")


@dataclass
class CacheRequest:
    """One chat request as the cache sees it; built by the service, filled in by lookups."""

    mode: CacheMode
    model: str
    digest: str
    messages: list[dict[str, Any]]
    threshold: float
    exact: str
    namespace: str
    question: str | None
    vector: NDArray[np.float32] | None = field(default=None, repr=False)


class ResponseCache:
    """Exact and semantic layers in front of generation (docs/architecture.md, steps 1, 2, 6)."""

    def __init__(
        self,
        store: CacheStore,
        embedder: Embedder,
        *,
        threshold: float,
        estimator: CostEstimator | None = None,
    ) -> None:
        self.store = store
        self.embedder = embedder
        self.threshold = threshold
        self.estimator = estimator
        self.savings = Savings()

    def request(
        self,
        *,
        model: str,
        digest: str,
        messages: list[dict[str, Any]],
        fields: dict[str, Any],
        temperature: float,
        seed: int | None,
        mode: str | None,
        threshold: float | None,
    ) -> CacheRequest:
        """Key a request; ``mode``/``threshold`` are the request's ``edgeinfer`` options."""
        return CacheRequest(
            mode=cache_mode(mode, temperature, seed),
            model=model,
            digest=digest,
            messages=messages,
            threshold=cache_threshold(threshold, self.threshold),
            exact=exact_key(model, digest, messages, fields),
            namespace=namespace_key(model, digest, messages, fields),
            question=semantic_question(messages),
        )

    async def lookup(self, req: CacheRequest) -> CacheHit | None:
        """The exact layer, then the semantic one (when the request allows it).

        The exact layer also sees answers the store's writer has not committed yet, so a
        client repeating a request at once still hits (read-your-writes, store.py).
        """
        if req.mode == "off":
            return None
        hit = await asyncio.to_thread(self.store.lookup_exact, req.exact)
        if hit is not None:
            await self._record(req, hit)
            return hit
        self.savings.miss("exact")
        if req.mode != "semantic" or req.question is None:
            return None
        if not (await asyncio.to_thread(self.embedder.fits, [req.question]))[0]:
            # the embedder would see only the start: two questions sharing a long preamble
            # would look identical, so a question this long is cached exactly or not at all
            req.question = None
            self.savings.too_long()
            return None
        req.vector = (await asyncio.to_thread(self.embedder.embed, [req.question]))[0]
        hit = await asyncio.to_thread(
            self.store.lookup_semantic, req.namespace, req.vector, req.question, req.threshold
        )
        if hit is not None:
            await self._record(req, hit)
            return hit
        self.savings.miss("semantic")
        return None

    async def _record(self, req: CacheRequest, hit: CacheHit) -> None:
        """Measured savings always; the estimated API cost when a price is configured."""
        estimate = None
        if self.estimator is not None:
            completion = str(hit.response.get("content", ""))
            estimate = await asyncio.to_thread(self.estimator.estimate, req.messages, completion)
        self.savings.hit(hit, estimate)

    def put(
        self, req: CacheRequest, answer: dict[str, Any], usage: tuple[int, int], seconds: float
    ) -> None:
        """Store a finished generation (the writer thread commits it; never blocks)."""
        if req.mode == "off":
            return
        semantic = req.mode == "semantic" and req.vector is not None
        self.store.put(
            CacheEntry(
                exact_key=req.exact,
                namespace=req.namespace,
                model=req.model,
                model_digest=req.digest,
                question=req.question if semantic else None,
                embedding=req.vector if semantic else None,
                response=answer,
                prompt_tokens=usage[0],
                completion_tokens=usage[1],
                generation_s=seconds,
            )
        )

    def stats(self) -> dict[str, Any]:
        return {"layers": self.savings.snapshot(), "store": self.store.stats()}

    def close(self) -> None:
        self.store.close()
