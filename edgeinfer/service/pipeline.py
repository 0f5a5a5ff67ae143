"""The inference pipeline, free of HTTP and Textual: resolve the model, build the prompt,
tokenize off the event loop, hand the request to the model's runner, and stream events back.

The cache, prompt layer and router act here in the order docs/architecture.md ("Request flow")
gives, each reporting what it saved.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from edgeinfer.cache.layer import CacheRequest, ResponseCache
from edgeinfer.config.schema import PromptSettings, RemoteSpec, RouterSettings
from edgeinfer.embed.base import Embedder
from edgeinfer.engine.base import Sampling, Vocab
from edgeinfer.errors import InvalidRequest
from edgeinfer.pool.admission import Runner
from edgeinfer.pool.events import Event, Finished, GenRequest
from edgeinfer.pool.scheduler import ModelPool, ServedModel
from edgeinfer.prompt.history import SUMMARY_INSTRUCTION
from edgeinfer.prompt.layer import PromptLayer, PromptWish, Summarise
from edgeinfer.prompt.template import needs_literal_check, render_chat_parts
from edgeinfer.prompt.tools import tool_grammar, tool_prompt
from edgeinfer.routing.classifier import Classifier
from edgeinfer.routing.distill import DistillLog
from edgeinfer.routing.policy import Tier
from edgeinfer.routing.router import Router
from edgeinfer.service.continuation import continuing
from edgeinfer.service.generation import GenerateOptions, Generation
from edgeinfer.service.remote import RemoteTier
from edgeinfer.service.sampling import model_defaults, with_defaults


def tokenize_chat(
    engine: Vocab, parts: Sequence[tuple[str, bool]], messages: Sequence[Mapping[str, Any]]
) -> list[int]:
    """Tokens of a rendered chat: the template's parts with their special tokens (it holds any
    BOS it wants), the client's contents as plain text, so typed role tokens stay text. Where
    the template hid the contents' bounds, a content that would parse into special tokens is
    refused instead. Runs off the event loop."""
    if needs_literal_check(parts):
        for message in messages:
            text = message.get("content")
            if isinstance(text, str) and engine.tokenize(
                text, add_special=False
            ) != engine.tokenize(text, add_special=False, parse_special=False):
                raise InvalidRequest(
                    "a message holds the model's special-token text (such as a role marker),"
                    " which this model's chat template cannot keep as plain text",
                    param="messages",
                )
    tokens: list[int] = []
    for text, literal in parts:
        tokens += engine.tokenize(text, add_special=False, parse_special=not literal)
    return tokens


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
            tiers=self.tiers,
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

    def tiers(self) -> list[Tier]:
        """The models the router may pick now: ready local models and configured remotes."""
        wanted = self.router.settings.tiers
        tiers = [
            Tier(m.name, m.spec.quality, _cost(m), frozenset(m.spec.tags), digest=m.digest or "")
            for m in self.pool.models()
            if m.status() == "ready"
        ]
        tiers += [
            Tier(
                r.name,
                r.spec.quality,
                r.spec.cost_per_1k,
                frozenset(r.spec.tags),
                remote=True,
                digest=_remote_digest(r),
            )
            for r in self.remotes.values()
        ]
        return [t for t in tiers if wanted is None or t.name in wanted]

    def max_choices(self, model: str | None) -> tuple[int, str]:
        """How many choices (``n``) ``model`` takes (a local model's slots), and whose limit."""
        if model in self.remotes:
            return 1, f"{model!r} (a remote tier)"
        names = [t.name for t in self.tiers() if not t.remote] if self.router.wants(model) else []
        name = model or self.pool.default or ""
        slots = [s.slots for s in map(self.pool.spec, names or [name]) if s is not None]
        return min(slots, default=1), "'auto' (its local tiers)" if names else repr(name)

    async def chat(
        self, model: str | None, messages: Sequence[Mapping[str, Any]], options: GenerateOptions
    ) -> Generation:
        if self.router.wants(model):
            return await self._routed(messages, options)
        return await self._answer(model, messages, options)

    async def _routed(
        self, messages: Sequence[Mapping[str, Any]], options: GenerateOptions
    ) -> Generation:
        """Model ``auto``: the cache first (keyed on the router's tiers), then the router."""
        hit, cached = await self._lookup("auto", routed_digest(self.tiers()), messages, options)
        if hit is not None:
            hit.route = {"route": "cache", "tiers": []}
            return hit
        untouched = replace(options, cache="off")  # tiers neither read nor fill the cache
        gen = await self.router.chat(messages, untouched, self._answer)
        store = self._storer(cached)
        if store is not None:
            gen.add_finish_hook(store)
        return gen

    async def _lookup(
        self,
        name: str,
        digest: str,
        messages: Sequence[Mapping[str, Any]],
        options: GenerateOptions,
    ) -> tuple[Generation | None, CacheRequest | None]:
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
        hit = await self.cache.lookup(cached)
        return (Generation.replay(name, digest, hit) if hit else None), cached

    async def _answer(
        self, model: str | None, messages: Sequence[Mapping[str, Any]], options: GenerateOptions
    ) -> Generation:
        """One named tier answers: a remote endpoint, or a local model through its runner."""
        remote = self.remotes.get(model or "")
        if remote is not None:
            if options.tools is not None and options.tools.offered:
                raise InvalidRequest(f"remote tier {remote.name!r} gets no tools", param="tools")
            hit, cached = await self._lookup(remote.name, _remote_digest(remote), messages, options)
            if hit is not None:
                return hit
            deadline = self._deadline(options)
            store = self._storer(cached)
            return await remote.answer(messages, options, deadline=deadline, on_finish=store)
        served, runner = await self.pool.acquire(model)
        with runner.held():  # a reload must not retire it before the request is submitted
            return await self._local(served, runner, messages, options)

    async def _local(
        self,
        served: ServedModel,
        runner: Runner,
        messages: Sequence[Mapping[str, Any]],
        options: GenerateOptions,
    ) -> Generation:
        # the model's default sampling first: the cache keys and its deterministic test see
        # the settings the generation will really use
        options = with_defaults(options, model_defaults(served.spec, runner.path))
        hit, cached = await self._lookup(served.name, served.digest or "", messages, options)
        if hit is not None:
            return hit
        engine = runner.engine

        def count(text: str) -> int:
            return len(engine.tokenize(text, add_special=False))

        wish = PromptWish(options.compress, options.context_budget)
        messages, report = await self.prompt_layer.apply(messages, count, wish, self._summariser())
        messages, tools = tool_prompt(engine.info.chat_template, messages, options.tools)
        parts = render_chat_parts(
            engine.info.chat_template,
            messages,
            bos_token=engine.info.bos_text,
            eos_token=engine.info.eos_text,
            tools=tools,
        )
        tokens = await asyncio.to_thread(tokenize_chat, engine, parts, messages)
        store = self._storer(cached)
        if options.continue_on_length and self.router.settings.max_continuations:
            first = await self._start(served, runner, tokens, options)

            async def restart(so_far: str) -> Generation:
                more = await asyncio.to_thread(
                    tokenize_chat, engine, [*parts, (so_far, True)], messages
                )
                return await self._start(served, runner, more, options, deadline=first.deadline)

            rounds = self.router.settings.max_continuations
            gen = continuing(first, restart, rounds=rounds, on_finish=store, hold=runner.held())
        else:
            gen = await self._start(served, runner, tokens, options, store)
        gen.prompt = report.as_dict() if report is not None else None
        return gen

    def _summariser(self) -> Summarise | None:
        """History summaries come from the cheapest local tier (``[prompt] history_budget``)."""
        if self.prompt_layer.settings.history_budget is None:
            return None  # checked first: this runs on every local request
        local = [t for t in self.tiers() if not t.remote]
        if not local:
            return None
        name = min(local, key=lambda t: t.cost_per_1k).name
        options = GenerateOptions(
            max_tokens=256, sampling=Sampling(temperature=0.0), cache="off", compress=False
        )

        async def summarise(transcript: str) -> str:
            convo = [
                {"role": "system", "content": SUMMARY_INSTRUCTION},
                {"role": "user", "content": transcript},
            ]
            return await (await self._answer(name, convo, options)).text()

        return summarise

    def _storer(self, req: CacheRequest | None) -> Callable[[str, Finished], None] | None:
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
        served, runner = await self.pool.acquire(model)
        options = with_defaults(options, model_defaults(served.spec, runner.path))
        with runner.held():
            tokens = await asyncio.to_thread(runner.engine.tokenize, prompt, add_special=True)
            if not tokens:
                raise InvalidRequest("the prompt is empty", param="prompt")
            return await self._start(served, runner, tokens, options)

    async def _start(
        self,
        served: ServedModel,
        runner: Runner,
        tokens: list[int],
        options: GenerateOptions,
        on_finish: Callable[[str, Finished], None] | None = None,
        *,
        deadline: float | None = None,
    ) -> Generation:
        """Submit ``tokens`` to the runner; ``deadline`` is the request's own when this is a
        continuation round (the timeout bounds all rounds together), else it starts now."""
        n_vocab = runner.engine.info.n_vocab
        bad = [t for t in options.sampling.logit_bias if not 0 <= t < n_vocab]
        if bad:
            raise InvalidRequest(
                f"logit_bias names token {bad[0]}; model {served.name!r} has tokens"
                f" 0..{n_vocab - 1}",
                param="logit_bias",
            )
        n_ctx = runner.params.n_ctx
        # With context shift a generation may run past the window; never past the model's cap
        # (its max_tokens key), which also bounds a request that names none.
        cap = served.spec.max_tokens
        limit = cap if runner.can_shift else min(cap, n_ctx)
        if options.max_tokens is not None and options.max_tokens > limit:
            raise InvalidRequest(
                f"max_tokens is {options.max_tokens}; model {served.name!r} allows at most"
                f" {limit} (context {n_ctx} tokens"
                f"{', context shift on' if runner.can_shift else ''})",
                param="max_tokens",
            )
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Event] = asyncio.Queue()

        def emit(event: Event) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, event)
            except RuntimeError:  # the loop closed under a shutting-down daemon
                pass

        sampling = options.sampling
        if options.response_format is not None:
            grammar = await asyncio.to_thread(
                runner.engine.grammar_for, options.response_format, options.json_schema
            )
            sampling = replace(sampling, grammar=grammar)
        elif options.tools is not None and options.tools.forced:
            grammar = await asyncio.to_thread(
                tool_grammar, runner.engine.grammar_for, options.tools
            )
            sampling = replace(sampling, grammar=grammar)
        deadline = deadline if deadline is not None else self._deadline(options)
        request = GenRequest(
            prompt=tokens,
            sampling=sampling,
            max_tokens=options.max_tokens or min(n_ctx, cap),
            emit=emit,
            stop=options.stop,
            logprobs=options.logprobs,
            logprob_tokens=options.logprob_tokens,
            deadline=deadline,
        )
        runner.submit(request)
        return Generation(
            served.name,
            served.digest,
            queue,
            prompt_tokens=len(tokens),
            cancel=request.cancel,
            wants_logprobs=request.logprobs is not None,
            on_finish=on_finish,
            deadline=deadline,
        )

    def _deadline(self, options: GenerateOptions) -> float | None:
        """When the request's timeout (its own, else the daemon's) runs out, monotonic."""
        timeout = options.timeout or self._timeout
        return time.monotonic() + timeout if timeout else None


def routed_digest(tiers: Sequence[Tier]) -> str:
    """What routed (``auto``) answers are cached under in place of one model's digest: each
    tier the router may pick, by name and by model (:attr:`Tier.digest`). A routed answer may
    come from any of them, so replacing any one's model file makes a new key, as for a named
    model."""
    return "router:" + json.dumps([[t.name, t.digest] for t in tiers], separators=(",", ":"))


def _remote_digest(remote: RemoteTier) -> str:
    return f"remote:{remote.spec.url}:{remote.spec.model}"


def _cost(model: ServedModel) -> float:
    """Seconds of this machine's compute per 1k generated tokens, or the configured price.

    Measured from the model's own generation rate once it has generated; before that,
    estimated from the file size (decode is memory-bound: ~size^0.6 fits tiny/small/large here).
    """
    if model.spec.cost_per_1k is not None:
        return model.spec.cost_per_1k
    runner = model.runner
    if runner is not None and runner.stats.generate_seconds > 0 and runner.stats.generated_tokens:
        return 1000.0 * float(runner.stats.generate_seconds) / runner.stats.generated_tokens
    size = model.spec.size or 100_000_000
    return float(6.25 * (size / 98_000_000) ** 0.6)


__all__ = ["GenerateOptions", "Generation", "InferenceService"]
