"""The local tier: a model in the pool answers through its runner.

It owns what a prompt needs before a runner can take it: the model's default sampling, the
prompt layer, the chat template (with tools), tokenization off the event loop, the request's
checks against the model's limits, grammars, and the continuation of an answer cut at
``max_tokens``. It implements :class:`~edgeinfer.core.tier.Tier`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from edgeinfer.config.schema import ModelSpec
from edgeinfer.core.generation import Generation
from edgeinfer.core.options import GenerateOptions
from edgeinfer.core.tier import TierCard
from edgeinfer.core.values import Event
from edgeinfer.engine.base import Vocab
from edgeinfer.errors import ContextLengthExceeded, InvalidRequest
from edgeinfer.pool.admission import Runner
from edgeinfer.pool.events import GenRequest
from edgeinfer.pool.scheduler import ModelPool, ServedModel
from edgeinfer.prompt.layer import PromptLayer, PromptWish, Summarise
from edgeinfer.prompt.template import needs_literal_check, render_chat_parts
from edgeinfer.prompt.tools import tool_grammar, tool_prompt
from edgeinfer.service.continuation import continuing
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


def cost_per_1k(model: ServedModel) -> float:
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


class LocalTier:
    """One served model as a tier; built per request (or per router look) by the service.

    ``summarise`` gives the prompt layer its history summariser (``[prompt] history_budget``),
    ``max_continuations`` bounds ``continue_on_length``.
    """

    def __init__(
        self,
        pool: ModelPool,
        served: ServedModel,
        *,
        prompt_layer: PromptLayer,
        summarise: Callable[[], Summarise | None],
        max_continuations: int,
    ) -> None:
        self._pool = pool
        self._served = served
        self._prompt_layer = prompt_layer
        self._summarise = summarise
        self._max_continuations = max_continuations
        spec = served.spec
        self.card = TierCard(
            served.name,
            spec.quality,
            cost_per_1k(served),
            frozenset(spec.tags),
            digest=served.digest or "",
        )

    def settle(self, options: GenerateOptions) -> GenerateOptions:
        """The model's default sampling first: the cache keys and its deterministic test see
        the settings the generation will really use."""
        runner = self._served.runner
        path = runner.path if runner is not None else None
        return _settled(options, self._served.spec, path)

    async def answer(
        self, messages: Sequence[Mapping[str, Any]], options: GenerateOptions
    ) -> Generation:
        served, runner = await self._pool.acquire(self.card.name)
        with runner.held():  # a reload must not retire it before the request is submitted
            return await self._chat(served, runner, messages, options)

    async def complete(self, prompt: str, options: GenerateOptions) -> Generation:
        """A raw completion: the prompt's own tokens, no template, prompt layer or continuation."""
        served, runner = await self._pool.acquire(self.card.name)
        options = _settled(options, served.spec, runner.path)
        with runner.held():
            tokens = await asyncio.to_thread(runner.engine.tokenize, prompt, add_special=True)
            if not tokens:
                raise InvalidRequest("the prompt is empty", param="prompt")
            try:
                return await _start(served, runner, tokens, options)
            except ContextLengthExceeded as exc:  # the engine names the chat field
                exc.param = "prompt"
                raise

    async def _chat(
        self,
        served: ServedModel,
        runner: Runner,
        messages: Sequence[Mapping[str, Any]],
        options: GenerateOptions,
    ) -> Generation:
        options = _settled(options, served.spec, runner.path)
        engine = runner.engine

        def count(text: str) -> int:
            return len(engine.tokenize(text, add_special=False))

        wish = PromptWish(options.compress, options.context_budget)
        messages, report = await self._prompt_layer.apply(messages, count, wish, self._summarise())
        messages, tools = tool_prompt(engine.info.chat_template, messages, options.tools)
        parts = render_chat_parts(
            engine.info.chat_template,
            messages,
            bos_token=engine.info.bos_text,
            eos_token=engine.info.eos_text,
            tools=tools,
        )
        tokens = await asyncio.to_thread(tokenize_chat, engine, parts, messages)
        shown = report.as_dict() if report is not None else None
        if not (options.continue_on_length and self._max_continuations):
            return await _start(served, runner, tokens, options, prompt=shown)
        first = await _start(served, runner, tokens, options)

        async def restart(so_far: str) -> Generation:
            more = await asyncio.to_thread(
                tokenize_chat, engine, [*parts, (so_far, True)], messages
            )
            return await _start(served, runner, more, options)

        rounds = self._max_continuations
        return continuing(first, restart, rounds=rounds, hold=runner.held(), prompt=shown)


def _settled(options: GenerateOptions, spec: ModelSpec, path: Path | None) -> GenerateOptions:
    """``options`` with the model's default sampling; an already settled request (the cache
    lookup settled it before ``answer``) skips reading the model's defaults again."""
    if not options.default_sampling:
        return options
    return with_defaults(options, model_defaults(spec, path))


async def _start(
    served: ServedModel,
    runner: Runner,
    tokens: list[int],
    options: GenerateOptions,
    *,
    prompt: dict[str, Any] | None = None,
) -> Generation:
    """Submit ``tokens`` to the runner, after checking the request against the model's
    vocabulary and context; ``prompt`` is the prompt layer's report for the answer."""
    n_vocab = runner.engine.info.n_vocab
    bad = [t for t in options.sampling.logit_bias if not 0 <= t < n_vocab]
    if bad:
        raise InvalidRequest(
            f"logit_bias names token {bad[0]}; model {served.name!r} has tokens 0..{n_vocab - 1}",
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
        grammar = await asyncio.to_thread(tool_grammar, runner.engine.grammar_for, options.tools)
        sampling = replace(sampling, grammar=grammar)
    request = GenRequest(
        prompt=tokens,
        sampling=sampling,
        max_tokens=options.max_tokens or min(n_ctx, cap),
        emit=emit,
        stop=options.stop,
        logprobs=options.logprobs,
        logprob_tokens=options.logprob_tokens,
        deadline=options.deadline,
        whole=not options.stream,
    )
    runner.submit(request)
    return Generation(
        served.name,
        served.digest,
        queue,
        prompt_tokens=len(tokens),
        cancel=request.cancel,
        wants_logprobs=request.logprobs is not None,
        deadline=options.deadline,
        prompt=prompt,
    )
