"""Output-length control's second half: an answer cut at ``max_tokens`` goes on where it
stopped, when the caller opted in (``edgeinfer.continue_on_length``).

Each round re-submits the prompt plus the answer so far. The slot still holds their KV, so
prefix reuse evaluates only the last token or two instead of the whole conversation; each
round's reuse is reported in ``edgeinfer.continued``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

from edgeinfer.core.generation import Generation
from edgeinfer.core.values import Event, Failed, Finished, Usage
from edgeinfer.errors import EdgeInferError

log = logging.getLogger("edgeinfer.service.continuation")

Restart = Callable[[str], Awaitable[Generation]]  # the answer so far -> the next round


def continuing(
    first: Generation,
    restart: Restart,
    *,
    rounds: int,
    hold: AbstractContextManager[object] | None = None,
    prompt: dict[str, Any] | None = None,
) -> Generation:
    """One answer made of ``first`` and up to ``rounds`` continuations, streamed as one.

    ``prompt`` is the prompt layer's report for the answer. ``hold`` is kept for the whole
    answer (the runner's hold, so a reload cannot retire it between rounds); usage adds up the
    rounds' completion tokens over the first prompt. The answer's deadline is the request's:
    its timeout bounds all rounds together.
    Any failure, expected or not, reaches the reader as an error: a task that died silently
    would leave the client waiting.
    """
    queue: asyncio.Queue[Event] = asyncio.Queue()
    current = [first]
    continued: list[dict[str, int]] = []  # the answer's report, filled as each round ends

    def cancel() -> None:
        current[0].cancel()
        task.cancel()

    out = Generation(
        first.model,
        first.digest,
        queue,
        prompt_tokens=first.prompt_tokens,
        cancel=cancel,
        deadline=first.deadline,
        prompt=prompt,
        continued=continued,
    )
    started = time.monotonic()

    async def run() -> None:
        text: list[str] = []
        gen, done, completion = first, None, 0
        for n in range(rounds + 1):
            async for delta in gen:
                text.append(delta.text)
                queue.put_nowait(delta)
            assert gen.result is not None
            done, completion = gen.result, completion + gen.result.usage.completion_tokens
            if n:
                u = done.usage
                continued.append(
                    {"cached_tokens": u.cached_tokens, "completion_tokens": u.completion_tokens}
                )
            if done.reason != "length" or n == rounds:
                break
            gen = current[0] = await restart("".join(text))
        assert done is not None and first.result is not None
        u = first.result.usage
        usage = Usage(
            u.prompt_tokens, completion, u.cached_tokens, u.ttft_s, time.monotonic() - started
        )
        queue.put_nowait(Finished(done.reason, usage))

    async def held() -> None:
        try:
            with hold or nullcontext():
                await run()
        except EdgeInferError as exc:
            queue.put_nowait(Failed(exc))
        except Exception as exc:
            log.exception("model %s: continuing an answer failed", first.model)
            error = EdgeInferError(
                f"continuing the answer of model {first.model!r} failed:"
                f" {type(exc).__name__}: {exc} (the daemon's log has the details)"
            )
            queue.put_nowait(Failed(error))

    task = asyncio.create_task(held())
    return out
