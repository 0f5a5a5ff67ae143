"""What flows between the event loop and a runner: the request, and the events it emits."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from edgeinfer.core.values import Event, Finished, Sampling, Usage


@dataclass(eq=False)
class GenRequest:
    """A tokenized generation request, handed to a runner."""

    prompt: list[int]
    sampling: Sampling
    max_tokens: int
    emit: Callable[[Event], None]
    stop: tuple[str, ...] = ()
    logprobs: int | None = None  # None: off; n: the sampled token's logprob and the top n
    logprob_tokens: int | None = None  # None: every token; n: only the first n
    deadline: float | None = None  # monotonic seconds
    # only the whole answer is read: text comes in one Delta at the end, not one per token
    # (deltas carrying logprobs still come as generated; a cascade judges a draft's head)
    whole: bool = False
    cancelled: threading.Event = field(default_factory=threading.Event)
    submitted: float = field(default_factory=time.monotonic)
    # set by a runner that must forward a cancel (a runner process); called once, any thread
    on_cancel: Callable[[], None] | None = None

    def cancel(self) -> None:
        """Called from any thread (client hung up); the slot is freed within one step."""
        if not self.cancelled.is_set():
            self.cancelled.set()
            if self.on_cancel is not None:
                self.on_cancel()


def cancelled_before_start(req: GenRequest) -> Finished:
    """The end of a request cancelled before any of it ran (queued, or awaiting a restart)."""
    return Finished("cancelled", Usage(len(req.prompt), 0, 0, 0.0, 0.0))
