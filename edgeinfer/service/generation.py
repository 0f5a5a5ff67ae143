"""What the service hands the server: a request's options, and an answer in flight.

Shared by the service, the router and the server; a generation looks the same whether it came
from a local runner, a remote tier, the cache, or a cascade's kept draft.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from edgeinfer.cache.entry import CacheHit
from edgeinfer.engine.base import Sampling, TokenLogprob
from edgeinfer.errors import RequestTimeout
from edgeinfer.pool.events import Delta, Event, Finished, Usage
from edgeinfer.prompt.tools import ToolSpec

log = logging.getLogger("edgeinfer.service.generation")

# The ``edgeinfer`` object's fields, as GenerateOptions holds them.
EDGEINFER_FIELDS = (
    "timeout",
    "cache",
    "cache_threshold",
    "route",
    "min_quality",
    "max_cost",
    "request_type",
    "continue_on_length",
    "compress",
    "context_budget",
)


@dataclass(frozen=True)
class GenerateOptions:
    """What a request asks of the generation itself (validated by the server's schemas)."""

    max_tokens: int | None = None
    sampling: Sampling = field(default_factory=Sampling)
    stop: tuple[str, ...] = ()
    logprobs: int | None = None  # None: off; n: also the top n alternatives
    logprob_tokens: int | None = None  # logprobs for only the first n tokens (a cascade's draft)
    response_format: str | None = None  # "json_object" | "json_schema"
    json_schema: str | None = None
    timeout: float | None = None  # seconds; the daemon's default when None
    cache: str | None = None  # edgeinfer.cache: "off" | "exact" | "semantic"; None = policy
    cache_threshold: float | None = None
    # router (model "auto"): policy and constraints; see edgeinfer.routing.policy
    route: str | None = None  # "cheapest" | "cascade" | "best"; None = the configured default
    min_quality: float | None = None
    max_cost: float | None = None
    request_type: str | None = None  # inferred from the last user turn when None
    continue_on_length: bool = False  # extend an answer cut at max_tokens from its KV state
    # prompt layer: None = the [prompt] settings
    compress: bool | None = None
    context_budget: int | None = None
    # who asks ("uid:1000" on the socket, "tcp" for token holders): the response cache is
    # partitioned by it, so one user's answers (and questions) are never served to another
    identity: str = ""
    # sampling fields the request left out: the serving model's defaults fill them in
    # (service.sampling.with_defaults) once it is known; until then they hold Sampling's own
    default_sampling: frozenset[str] = frozenset()
    tools: ToolSpec | None = None  # tools offered (or not: tool_choice none), tool_choice

    def edgeinfer_given(self) -> list[str]:
        """The ``edgeinfer`` options this request set to something else than their default, so
        an endpoint that does not apply one can refuse it instead of ignoring it."""
        default = _DEFAULT_OPTIONS
        return [n for n in EDGEINFER_FIELDS if getattr(self, n) != getattr(default, n)]

    def key_fields(self) -> dict[str, Any]:
        """Everything here that changes the generated text, for the cache keys."""
        fields = asdict(self.sampling)
        fields.pop("grammar")  # derived from response_format/json_schema, which are keyed
        fields["logit_bias"] = {str(k): v for k, v in self.sampling.logit_bias.items()}
        routing = {
            "route": self.route,
            "min_quality": self.min_quality,
            "max_cost": self.max_cost,
            "request_type": self.request_type,
            "continue_on_length": self.continue_on_length or None,
            "compress": self.compress,
            "context_budget": self.context_budget,
            "identity": self.identity or None,
            # left to a model not chosen yet (model "auto"): "unset" is not "set to 1.0"
            "defaulted": sorted(self.default_sampling) or None,
            "tools": self.tools.key() if self.tools is not None else None,
        }
        return {
            **fields,
            "max_tokens": self.max_tokens,
            "stop": list(self.stop),
            "response_format": self.response_format,
            "json_schema": self.json_schema,
            # only when set, so keys of requests without them stay what they were
            **{k: v for k, v in routing.items() if v is not None},
        }


_DEFAULT_OPTIONS = GenerateOptions()

# How long past its deadline a generation waits before it gives up by itself: the runner and a
# remote tier time out at the deadline, freeing the slot and saying which part ran late; this
# only catches one that died without a word (or a request still queued when time ran out).
DEADLINE_GRACE_S = 1.0


class Generation:
    """One answer in flight: iterate it for text deltas, then read :attr:`result`.

    Produced by the engine (events from the runner thread) or replayed from the cache; the
    server treats both alike. Iteration raises the request's error (an ``EdgeInferError``) if it
    fails; leaving early (client hung up) must be followed by :meth:`cancel`, which frees the slot.

    ``deadline`` (monotonic seconds, from the request's timeout) bounds the wait for events
    whoever was to send them: a runner thread or a remote task that died without a word, or a
    request still queued, ends in ``RequestTimeout`` (after :data:`DEADLINE_GRACE_S`) instead
    of a client waiting forever.
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
        deadline: float | None = None,
    ) -> None:
        self.model = model
        self.deadline = deadline
        self.digest = digest
        self.prompt_tokens = prompt_tokens
        self.wants_logprobs = wants_logprobs
        self.cache = cache or {"layer": None, "similarity": None}
        self.created = int(time.time())
        self.result: Finished | None = None
        self._queue = queue
        self._cancel = cancel
        self._hooks: list[Callable[[str, Finished], None]] = [on_finish] if on_finish else []
        self._text: list[str] = []
        self._unread: list[Delta] = []
        self.route: dict[str, Any] | None = None  # set by the router: tiers, confidence, why
        self.prompt: dict[str, Any] | None = None  # set by the prompt layer: tokens removed
        self.continued: list[dict[str, int]] = []  # continuation rounds past max_tokens

    @classmethod
    def replay(cls, model: str, digest: str | None, hit: CacheHit) -> Generation:
        """A generation served from a cache hit, in the same shape as a fresh one."""
        answer = hit.response
        usage = Usage(hit.prompt_tokens, hit.completion_tokens, hit.prompt_tokens, 0.0, 0.0)
        stop_sequence = answer.get("stop_sequence")
        matched = stop_sequence if isinstance(stop_sequence, str) else None
        done = Finished(answer.get("finish_reason", "stop"), usage, matched)
        gen = cls.from_text(model, digest, str(answer.get("content", "")), done)
        gen.cache = {"layer": hit.layer, "similarity": round(hit.similarity, 4)}
        if hit.layer == "semantic":
            gen.cache["question"] = hit.question
        return gen

    @classmethod
    def from_text(
        cls,
        model: str,
        digest: str | None,
        text: str,
        done: Finished,
        logprobs: tuple[TokenLogprob, ...] = (),
        *,
        wants_logprobs: bool = False,
    ) -> Generation:
        """An answer already generated in full (a cascade's kept draft), replayed as a stream."""
        queue: asyncio.Queue[Event] = asyncio.Queue()
        queue.put_nowait(Delta(text, logprobs if wants_logprobs else ()))
        queue.put_nowait(done)
        return cls(
            model,
            digest,
            queue,
            prompt_tokens=done.usage.prompt_tokens,
            wants_logprobs=wants_logprobs,
        )

    def add_finish_hook(self, hook: Callable[[str, Finished], None]) -> None:
        """Call ``hook(text, finished)`` when the answer completes (not when cancelled)."""
        self._hooks.append(hook)

    def unread(self, delta: Delta) -> None:
        """Hand back what an earlier reader took (the head of a cascade's draft): the next
        reader gets it first. Its text already counts toward the answer."""
        self._unread.append(delta)

    async def __aiter__(self) -> AsyncGenerator[Delta, None]:
        while self._unread:
            yield self._unread.pop(0)
        while self.result is None:
            event = await self._next()
            if isinstance(event, Delta):
                self._text.append(event.text)
                yield event
            elif isinstance(event, Finished):
                self.result = event
                if event.reason != "cancelled":
                    self._run_hooks(event)
            else:
                raise event.error

    async def _next(self) -> Event:
        """The next event; what is queued already is read even past the deadline (it may be
        the runner's own error), an empty queue is waited on only until the deadline (and
        its grace)."""
        deadline = self.deadline
        try:
            return self._queue.get_nowait()
        except asyncio.QueueEmpty:
            pass
        if deadline is None:
            return await self._queue.get()
        try:
            async with asyncio.timeout(deadline + DEADLINE_GRACE_S - time.monotonic()):
                return await self._queue.get()
        except TimeoutError:
            self._cancel()  # frees the slot, or stops the remote call
            raise RequestTimeout(
                f"the request ran past its timeout waiting for model {self.model!r}"
            ) from None

    def _run_hooks(self, done: Finished) -> None:
        """Storing or accounting an answer must never turn it into an error: it is complete,
        and the client has most of it already. A failing hook is logged with its traceback."""
        text = "".join(self._text)
        for hook in self._hooks:
            try:
                hook(text, done)
            except Exception:
                log.exception("model %s: a finish hook failed; the answer stands", self.model)

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
