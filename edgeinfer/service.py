"""The inference pipeline, free of HTTP and Textual: resolve the model, build the prompt,
tokenize off the event loop, hand the request to the model's runner, and stream events back.

Later layers (exact and semantic cache, prompt layer, router) slot in here, in the order
DESIGN.md gives, each reporting what it saved.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from edgeinfer.cache.entry import CacheHit
from edgeinfer.cache.layer import CacheRequest, ResponseCache
from edgeinfer.engine.base import Sampling, TokenLogprob
from edgeinfer.errors import InvalidRequest
from edgeinfer.pool.events import Delta, Event, Finished, GenRequest, Usage
from edgeinfer.pool.runner import ModelRunner
from edgeinfer.pool.scheduler import ModelPool, ServedModel
from edgeinfer.prompt.template import render_chat


@dataclass(frozen=True)
class GenerateOptions:
    """What a request asks of the generation itself (validated by the server's schemas)."""

    max_tokens: int | None = None
    sampling: Sampling = field(default_factory=Sampling)
    stop: tuple[str, ...] = ()
    logprobs: int | None = None  # None: off; n: also the top n alternatives
    response_format: str | None = None  # "json_object" | "json_schema"
    json_schema: str | None = None
    timeout: float | None = None  # seconds; the daemon's default when None
    cache: str | None = None  # edgeinfer.cache: "off" | "exact" | "semantic"; None = policy
    cache_threshold: float | None = None

    def key_fields(self) -> dict[str, Any]:
        """Everything here that changes the generated text, for the cache keys."""
        fields = asdict(self.sampling)
        fields.pop("grammar")  # derived from response_format/json_schema, which are keyed
        fields["logit_bias"] = {str(k): v for k, v in self.sampling.logit_bias.items()}
        return {
            **fields,
            "max_tokens": self.max_tokens,
            "stop": list(self.stop),
            "response_format": self.response_format,
            "json_schema": self.json_schema,
        }


class Generation:
    """One answer in flight: iterate it for text deltas, then read :attr:`result`.

    Produced by the engine (events from the runner thread) or replayed from the cache; the
    server treats both alike. Iteration raises the request's error (an ``EdgeInferError``) if it
    fails; leaving early (client hung up) must be followed by :meth:`cancel`, which frees the slot.
    """

    def __init__(
        self,
        model: str,
        digest: str | None,
        queue: asyncio.Queue[Event],
        *,
        prompt_tokens: int,
        cancel: Callable[[], None] = lambda: None,
        wants_logprobs: bool = False,
        cache: dict[str, Any] | None = None,
        on_finish: Callable[[str, Finished], None] | None = None,
    ) -> None:
        self.model = model
        self.digest = digest
        self.prompt_tokens = prompt_tokens
        self.wants_logprobs = wants_logprobs
        self.cache = cache or {"layer": None, "similarity": None}
        self.created = int(time.time())
        self.result: Finished | None = None
        self._queue = queue
        self._cancel = cancel
        self._on_finish = on_finish
        self._text: list[str] = []

    @classmethod
    def replay(cls, model: str, digest: str | None, hit: CacheHit) -> Generation:
        """A generation served from a cache hit, in the same shape as a fresh one."""
        answer = hit.response
        queue: asyncio.Queue[Event] = asyncio.Queue()
        queue.put_nowait(Delta(str(answer.get("content", ""))))
        usage = Usage(hit.prompt_tokens, hit.completion_tokens, hit.prompt_tokens, 0.0, 0.0)
        queue.put_nowait(Finished(answer.get("finish_reason", "stop"), usage))
        info: dict[str, Any] = {"layer": hit.layer, "similarity": round(hit.similarity, 4)}
        if hit.layer == "semantic":
            info["question"] = hit.question
        return cls(model, digest, queue, prompt_tokens=hit.prompt_tokens, cache=info)

    async def __aiter__(self) -> AsyncIterator[Delta]:
        while self.result is None:
            event = await self._queue.get()
            if isinstance(event, Delta):
                self._text.append(event.text)
                yield event
            elif isinstance(event, Finished):
                self.result = event
                if self._on_finish is not None and event.reason != "cancelled":
                    self._on_finish("".join(self._text), event)
            else:
                raise event.error

    async def text(self) -> str:
        """Run to the end and return the whole answer."""
        return "".join([delta.text async for delta in self])

    async def collect(self) -> tuple[str, list[TokenLogprob]]:
        """Run to the end; the answer and the logprobs of its tokens (when asked)."""
        text: list[str] = []
        logprobs: list[TokenLogprob] = []
        async for delta in self:
            text.append(delta.text)
            logprobs.extend(delta.logprobs)
        return "".join(text), logprobs

    def cancel(self) -> None:
        if self.result is None:
            self._cancel()


class InferenceService:
    """Entry point of every request; built once by the composition root."""

    def __init__(
        self,
        pool: ModelPool,
        *,
        cache: ResponseCache | None = None,
        request_timeout: float | None = 600.0,
    ) -> None:
        self.pool = pool
        self.cache = cache
        self._timeout = request_timeout

    def snapshot(self) -> dict[str, Any]:
        """``/stats``: per-model runner figures and the cache's layers and store (blocking)."""
        return {
            "models": self.pool.snapshot(),
            "cache": self.cache.stats() if self.cache is not None else None,
        }

    async def chat(
        self, model: str | None, messages: Sequence[Mapping[str, Any]], options: GenerateOptions
    ) -> Generation:
        served, runner = self.pool.get(model)
        cached = None
        if self.cache is not None and options.logprobs is None:  # a stored answer has none
            cached = self.cache.request(
                model=served.name,
                digest=served.digest or "",
                messages=[dict(m) for m in messages],
                fields=options.key_fields(),
                temperature=options.sampling.temperature,
                seed=options.sampling.seed,
                mode=options.cache,
                threshold=options.cache_threshold,
            )
            hit = await self.cache.lookup(cached)
            if hit is not None:
                return Generation.replay(served.name, served.digest, hit)
        engine = runner.engine
        prompt = render_chat(
            engine.info.chat_template,
            messages,
            bos_token=engine.info.bos_text,
            eos_token=engine.info.eos_text,
        )
        # The chat template already holds any BOS it wants; parse its special tokens.
        tokens = await asyncio.to_thread(engine.tokenize, prompt, add_special=False)
        return await self._start(served, runner, tokens, options, self._storer(cached))

    def _storer(self, req: CacheRequest | None) -> Callable[[str, Finished], None] | None:
        """Step 6: what a finished generation hands to the cache."""
        cache = self.cache
        if cache is None or req is None or req.mode == "off":
            return None

        def store(text: str, done: Finished) -> None:
            answer = {"content": text, "finish_reason": done.reason}
            usage = (done.usage.prompt_tokens, done.usage.completion_tokens)
            cache.put(req, answer, usage, done.usage.total_s)

        return store

    async def complete(
        self, model: str | None, prompt: str, options: GenerateOptions
    ) -> Generation:
        served, runner = self.pool.get(model)
        tokens = await asyncio.to_thread(runner.engine.tokenize, prompt, add_special=True)
        if not tokens:
            raise InvalidRequest("the prompt is empty", param="prompt")
        return await self._start(served, runner, tokens, options)

    async def _start(
        self,
        served: ServedModel,
        runner: ModelRunner,
        tokens: list[int],
        options: GenerateOptions,
        on_finish: Callable[[str, Finished], None] | None = None,
    ) -> Generation:
        n_vocab = runner.engine.info.n_vocab
        bad = [t for t in options.sampling.logit_bias if not 0 <= t < n_vocab]
        if bad:
            raise InvalidRequest(
                f"logit_bias names token {bad[0]}; model {served.name!r} has tokens"
                f" 0..{n_vocab - 1}",
                param="logit_bias",
            )
        n_ctx = runner.params.n_ctx
        # With context shift a generation may run past the window, up to the model's cap.
        limit = served.spec.max_tokens if runner.can_shift else n_ctx
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
        timeout = options.timeout or self._timeout
        request = GenRequest(
            prompt=tokens,
            sampling=sampling,
            max_tokens=options.max_tokens or n_ctx,
            emit=emit,
            stop=options.stop,
            logprobs=options.logprobs,
            deadline=time.monotonic() + timeout if timeout else None,
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
        )


__all__ = ["GenerateOptions", "Generation", "InferenceService"]
