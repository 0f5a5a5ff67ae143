"""An answer in flight, as the service hands it to the server.

A generation looks the same whether it came from a local runner, a remote tier, the cache, or a
cascade's kept draft. It is built once: a layer that adds to it (the router's route report, the
pipeline's cache store) derives a new one over the same stream (:meth:`Generation.derive`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, Callable, Sequence
from typing import Any

from edgeinfer.core.values import Delta, Event, Finished, TokenLogprob
from edgeinfer.errors import RequestTimeout

log = logging.getLogger("edgeinfer.core.generation")

FinishHook = Callable[[str, Finished], None]


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

    What it reports besides the text (``cache``, ``route``, ``prompt``, ``continued``) is set
    when it is built; :meth:`derive` makes a new one over the same stream with more of it.
    ``continued`` is the continuation's own list, filled as its rounds finish.
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
        on_finish: FinishHook | None = None,
        deadline: float | None = None,
        route: dict[str, Any] | None = None,
        prompt: dict[str, Any] | None = None,
        continued: list[dict[str, int]] | None = None,
    ) -> None:
        self.model = model
        self.deadline = deadline
        self.digest = digest
        self.prompt_tokens = prompt_tokens
        self.wants_logprobs = wants_logprobs
        self.cache = cache or {"layer": None, "similarity": None}
        self.route = route  # the router's report: tiers, confidence, why
        self.prompt = prompt  # the prompt layer's report: tokens removed
        self.continued = continued if continued is not None else []  # rounds past max_tokens
        self.created = int(time.time())
        self.result: Finished | None = None
        self._queue = queue
        self._cancel = cancel
        self._hooks: tuple[FinishHook, ...] = (on_finish,) if on_finish else ()
        self._text: list[str] = []
        self._unread: list[Delta] = []

    def derive(
        self,
        *,
        on_finish: FinishHook | None = None,
        route: dict[str, Any] | None = None,
        prompt: dict[str, Any] | None = None,
        head: Sequence[Delta] = (),
        wants_logprobs: bool | None = None,
    ) -> Generation:
        """A new generation over this one's stream, with another finish hook (run after this
        one's), a route or prompt report, or ``head``: deltas an earlier reader took (a
        cascade's judged draft head), read first and counted toward the answer. Read the new
        one from then on; this one must not be iterated again."""
        out = Generation(
            self.model,
            self.digest,
            self._queue,
            prompt_tokens=self.prompt_tokens,
            cancel=self._cancel,
            wants_logprobs=self.wants_logprobs if wants_logprobs is None else wants_logprobs,
            cache=self.cache,
            deadline=self.deadline,
            route=route if route is not None else self.route,
            prompt=prompt if prompt is not None else self.prompt,
            continued=self.continued,
        )
        out._hooks = self._hooks + ((on_finish,) if on_finish else ())
        out._unread = [*self._unread, *head]
        out._text = list(self._text)
        out.result = self.result
        return out

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
        cache: dict[str, Any] | None = None,
        route: dict[str, Any] | None = None,
    ) -> Generation:
        """An answer already generated in full (a cache hit, a cascade's kept draft),
        replayed as a stream."""
        queue: asyncio.Queue[Event] = asyncio.Queue()
        queue.put_nowait(Delta(text, logprobs if wants_logprobs else ()))
        queue.put_nowait(done)
        return cls(
            model,
            digest,
            queue,
            prompt_tokens=done.usage.prompt_tokens,
            wants_logprobs=wants_logprobs,
            cache=cache,
            route=route,
        )

    def unread(self, delta: Delta) -> None:
        """Hand back a delta the reader took to look at (the server's peek at the first one):
        the next read gets it first. Its text already counts toward the answer."""
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
