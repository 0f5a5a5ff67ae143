"""The inference pipeline, free of HTTP and Textual: resolve the model, build the prompt,
tokenize off the event loop, hand the request to the model's runner, and stream events back.

Later layers (exact and semantic cache, prompt layer, router) slot in here, in the order
DESIGN.md gives, each reporting what it saved.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from edgeinfer.engine.base import Sampling, TokenLogprob
from edgeinfer.errors import EdgeInferError, InvalidRequest
from edgeinfer.pool.events import Delta, Event, Failed, Finished, GenRequest
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


class Generation:
    """One running generation: iterate it for text deltas, then read :attr:`result`.

    Iteration raises the request's error (an :class:`EdgeInferError`) if it fails; leaving the
    iteration early (client hung up) must be followed by :meth:`cancel`, which frees the slot.
    """

    def __init__(self, served: ServedModel, request: GenRequest, queue: asyncio.Queue[Event]):
        self.model = served.name
        self.digest = served.digest
        self.prompt_tokens = len(request.prompt)
        self.wants_logprobs = request.logprobs is not None
        self.created = int(time.time())
        self.result: Finished | None = None
        self._request = request
        self._queue = queue

    async def __aiter__(self) -> AsyncIterator[Delta]:
        while self.result is None:
            event = await self._queue.get()
            if isinstance(event, Delta):
                yield event
            elif isinstance(event, Finished):
                self.result = event
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
            self._request.cancel()


class InferenceService:
    """Entry point of every request; built once by the composition root."""

    def __init__(self, pool: ModelPool, *, request_timeout: float | None = 600.0) -> None:
        self.pool = pool
        self._timeout = request_timeout

    async def chat(
        self, model: str | None, messages: Sequence[Mapping[str, Any]], options: GenerateOptions
    ) -> Generation:
        served, runner = self.pool.get(model)
        engine = runner.engine
        prompt = render_chat(
            engine.info.chat_template,
            messages,
            bos_token=engine.info.bos_text,
            eos_token=engine.info.eos_text,
        )
        # The chat template already holds any BOS it wants; parse its special tokens.
        tokens = await asyncio.to_thread(engine.tokenize, prompt, add_special=False)
        return await self._start(served, runner, tokens, options)

    async def complete(
        self, model: str | None, prompt: str, options: GenerateOptions
    ) -> Generation:
        served, runner = self.pool.get(model)
        tokens = await asyncio.to_thread(runner.engine.tokenize, prompt, add_special=True)
        if not tokens:
            raise InvalidRequest("the prompt is empty", param="prompt")
        return await self._start(served, runner, tokens, options)

    async def _start(
        self, served: ServedModel, runner: ModelRunner, tokens: list[int], options: GenerateOptions
    ) -> Generation:
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
        return Generation(served, request, queue)


__all__ = ["EdgeInferError", "Failed", "GenerateOptions", "Generation", "InferenceService"]
