"""The inference pipeline, free of HTTP and Textual: resolve the model, look in the cache, let
the router or a named tier answer, and store the answer back.

The cache, prompt layer and router act in the order docs/architecture.md ("Request flow")
gives, each reporting what it saved. The tiers that answer (``service/local.py``,
``service/remote.py``) implement :class:`~edgeinfer.core.tier.Tier`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from edgeinfer.cache.entry import CacheHit
from edgeinfer.cache.layer import CacheRequest, ResponseCache
from edgeinfer.config.schema import PromptSettings, RemoteSpec, RouterSettings
from edgeinfer.core.embedding import Embedder
from edgeinfer.core.generation import FinishHook, Generation
from edgeinfer.core.options import GenerateOptions
from edgeinfer.core.tier import Tier, TierCard
from edgeinfer.core.values import Finished, Sampling, Usage
from edgeinfer.errors import InvalidRequest
from edgeinfer.pool.scheduler import ModelPool, ServedModel
from edgeinfer.prompt.history import SUMMARY_INSTRUCTION
from edgeinfer.prompt.layer import PromptLayer, Summarise
from edgeinfer.routing.classifier import Classifier
from edgeinfer.routing.distill import DistillLog
from edgeinfer.routing.router import Router
from edgeinfer.service.local import LocalTier
from edgeinfer.service.remote import RemoteTier


class InferenceService:
    """Entry point of every request; built once by the composition root."""

    def __init__(
        self,
        pool: ModelPool,
        *,
        cache: ResponseCache | None = None,
        embedder: Embedder | None = None,
        request_timeout: float | None = 600.0,
        remotes: Mapping[str, RemoteTier] | None = None,
        router: RouterSettings | None = None,
        classifier: Classifier | None = None,
        distill: DistillLog | None = None,
        outcomes: Path | None = None,
        prompt: PromptSettings | None = None,
    ) -> None:
        self.pool = pool
        self.cache = cache
        # one embedder for the cache, the router's classifier, the prompt layer's context
        # selection and the embeddings routes: a daemon without the cache still has it
        self.embedder = embedder or (cache.embedder if cache is not None else None)
        self.remotes = dict(remotes or {})
        self._timeout = request_timeout
        embed = self.embedder.embed if self.embedder is not None else None
        self.prompt_layer = PromptLayer(prompt or PromptSettings(), embed=embed)
        self.router = Router(
            router or RouterSettings(),
            tiers=self._available,
            embed=embed,
            classifier=classifier,
            distill=distill,
            outcomes=outcomes,
        )

    def configure(
        self,
        *,
        router: RouterSettings,
        prompt: PromptSettings,
        remotes: Mapping[str, RemoteSpec],
        classifier: Classifier | None,
        distill: DistillLog | None,
    ) -> None:
        """Hot reload of [router], [prompt] and [remotes] for the next requests; requests in
        flight finish on what they started with. A remote whose settings did not change keeps
        its tier and connection pool."""
        self.prompt_layer.settings = prompt
        kept = {n: r for n, r in self.remotes.items() if remotes.get(n) == r.spec}
        self.remotes = {n: kept.get(n) or RemoteTier(spec) for n, spec in remotes.items()}
        self.router.reconfigure(router, classifier=classifier, distill=distill)

    def snapshot(self) -> dict[str, Any]:
        """``/stats``: per-model runner figures and the cache's layers and store (blocking)."""
        return {
            "models": self.pool.snapshot(),
            "cache": self.cache.stats() if self.cache is not None else None,
            "router": {"tiers": self.router.tier_names(), **self.router.stats.as_dict()},
            "prompt": self.prompt_layer.snapshot(),
        }

    def _available(self) -> list[Tier]:
        """Every tier that could answer now: ready local models and configured remotes."""
        tiers: list[Tier] = [self._local(m) for m in self.pool.models() if m.status() == "ready"]
        return tiers + list(self.remotes.values())

    def _local(self, served: ServedModel) -> LocalTier:
        return LocalTier(
            self.pool,
            served,
            prompt_layer=self.prompt_layer,
            summarise=self._summariser,
            max_continuations=self.router.settings.max_continuations,
        )

    def max_choices(self, model: str | None) -> tuple[int, str]:
        """How many choices (``n``) ``model`` takes (a local model's slots), and whose limit."""
        if model in self.remotes:
            return 1, f"{model!r} (a remote tier)"
        routed = self.router.wants(model)
        names = [t.card.name for t in self.router.tiers() if not t.card.remote] if routed else []
        name = model or self.pool.default or ""
        slots = [s.slots for s in map(self.pool.spec, names or [name]) if s is not None]
        return min(slots, default=1), "'auto' (its local tiers)" if names else repr(name)

    async def chat(
        self, model: str | None, messages: Sequence[Mapping[str, Any]], options: GenerateOptions
    ) -> Generation:
        options = self._timed(options)
        if self.router.wants(model):
            return await self._routed(messages, options)
        return await self._answer(await self._tier(model), messages, options)

    async def _tier(self, model: str | None) -> Tier:
        """The tier a request names: a remote, else a local model (loaded on demand)."""
        remote = self.remotes.get(model or "")
        if remote is not None:
            return remote
        served, _ = await self.pool.acquire(model)
        return self._local(served)

    async def _routed(
        self, messages: Sequence[Mapping[str, Any]], options: GenerateOptions
    ) -> Generation:
        """Model ``auto``: the cache first (keyed on the router's tiers), then the router."""
        cards = [t.card for t in self.router.tiers()]
        hit, cached = await self._lookup("auto", routed_digest(cards), messages, options)
        if hit is not None:
            return _replay("auto", hit, route={"route": "cache", "tiers": []})
        untouched = replace(options, cache="off")  # tiers neither read nor fill the cache
        gen = await self.router.chat(messages, untouched)
        return gen.derive(on_finish=self._storer(cached))

    async def _answer(
        self, tier: Tier, messages: Sequence[Mapping[str, Any]], options: GenerateOptions
    ) -> Generation:
        """A named tier answers, through the cache (keyed on the options it will really use)."""
        options = tier.settle(options)
        hit, cached = await self._lookup(tier.card.name, tier.card.digest, messages, options)
        if hit is not None:
            return _replay(tier.card.name, hit, digest=tier.card.digest)
        gen = await tier.answer(messages, options)
        return gen.derive(on_finish=self._storer(cached))

    async def _lookup(
        self,
        name: str,
        digest: str,
        messages: Sequence[Mapping[str, Any]],
        options: GenerateOptions,
    ) -> tuple[CacheHit | None, CacheRequest | None]:
        """Steps 1-2: an answer from the cache, and the request to store a fresh one under."""
        if self.cache is None or options.logprobs is not None:  # a stored answer has none
            return None, None
        cached = self.cache.request(
            model=name,
            digest=digest,
            messages=[dict(m) for m in messages],
            fields=options.key_fields(),
            temperature=options.sampling.temperature,
            seed=options.sampling.seed,
            mode=options.cache,
            threshold=options.cache_threshold,
        )
        return await self.cache.lookup(cached), cached

    def _summariser(self) -> Summarise | None:
        """History summaries come from the cheapest local tier (``[prompt] history_budget``)."""
        if self.prompt_layer.settings.history_budget is None:
            return None  # checked first: this runs on every local request
        local = [t for t in self.router.tiers() if not t.card.remote]
        if not local:
            return None
        tier = min(local, key=lambda t: t.card.cost_per_1k)
        options = GenerateOptions(
            max_tokens=256, sampling=Sampling(temperature=0.0), cache="off", compress=False
        )

        async def summarise(transcript: str) -> str:
            convo = [
                {"role": "system", "content": SUMMARY_INSTRUCTION},
                {"role": "user", "content": transcript},
            ]
            return await (await tier.answer(convo, self._timed(options))).text()

        return summarise

    def _storer(self, req: CacheRequest | None) -> FinishHook | None:
        """Step 6: what a finished generation hands to the cache."""
        cache = self.cache
        if cache is None or req is None or req.mode == "off":
            return None

        def store(text: str, done: Finished) -> None:
            answer: dict[str, Any] = {"content": text, "finish_reason": done.reason}
            if done.stop_sequence is not None:
                answer["stop_sequence"] = done.stop_sequence
            usage = (done.usage.prompt_tokens, done.usage.completion_tokens)
            cache.put(req, answer, usage, done.usage.total_s)

        return store

    async def complete(
        self, model: str | None, prompt: str, options: GenerateOptions
    ) -> Generation:
        """A raw completion: no cache, router, continuation or prompt layer, so of the
        ``edgeinfer`` options only ``timeout`` applies; the others are refused, not ignored."""
        refused = [f"edgeinfer.{n}" for n in options.edgeinfer_given() if n != "timeout"]
        if refused:
            raise InvalidRequest(
                f"{', '.join(refused)}: not applied by /v1/completions (of the edgeinfer"
                " options it takes only edgeinfer.timeout; caching, routing, continuation and"
                " the prompt layer are for /v1/chat/completions)",
                param=refused[0],
            )
        served, _ = await self.pool.acquire(model)
        return await self._local(served).complete(prompt, self._timed(options))

    def _timed(self, options: GenerateOptions) -> GenerateOptions:
        """``options`` with the request's deadline: its own timeout, else the daemon's, from
        now (monotonic). Every tier and round the request takes shares it."""
        timeout = options.timeout or self._timeout
        return replace(options, deadline=time.monotonic() + timeout if timeout else None)


def _replay(
    name: str, hit: CacheHit, *, digest: str | None = None, route: dict[str, Any] | None = None
) -> Generation:
    """A generation served from a cache hit, in the same shape as a fresh one."""
    answer = hit.response
    usage = Usage(hit.prompt_tokens, hit.completion_tokens, hit.prompt_tokens, 0.0, 0.0)
    stop_sequence = answer.get("stop_sequence")
    matched = stop_sequence if isinstance(stop_sequence, str) else None
    done = Finished(answer.get("finish_reason", "stop"), usage, matched)
    cache: dict[str, Any] = {"layer": hit.layer, "similarity": round(hit.similarity, 4)}
    if hit.layer == "semantic":
        cache["question"] = hit.question
    text = str(answer.get("content", ""))
    return Generation.from_text(name, digest, text, done, cache=cache, route=route)


def routed_digest(tiers: Sequence[TierCard]) -> str:
    """What routed (``auto``) answers are cached under in place of one model's digest: each
    tier the router may pick, by name and by model (:attr:`TierCard.digest`). A routed answer
    may come from any of them, so replacing any one's model file makes a new key, as for a
    named model."""
    return "router:" + json.dumps([[t.name, t.digest] for t in tiers], separators=(",", ":"))


# The pool's records as HTTP sees them: the server reaches the pool only through the service.
__all__ = ["InferenceService", "ModelPool", "ServedModel", "routed_digest"]
