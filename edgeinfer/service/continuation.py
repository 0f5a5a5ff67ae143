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

from edgeinfer.errors import EdgeInferError
from edgeinfer.pool.events import Event, Failed, Finished, Usage
from edgeinfer.service.generation import Generation

log = logging.getLogger("edgeinfer.service.continuation")

Restart = Callable[[str], Awaitable[Generation]]  # the answer so far -> the next round


def continuing(
    first: Generation,
    restart: Restart,
    *,
    rounds: int,
    on_finish: Callable[[str, Finished], None] | None = None,
    hold: AbstractContextManager[object] | None = None,
) -> Generation:
    """One answer made of ``first`` and up to ``rounds`` continuations, streamed as one.

    ``hold`` is kept for the whole answer (the runner's hold, so a reload cannot retire it
    between rounds); usage adds up the rounds' completion tokens over the first prompt. The
    answer's deadline is the first round's: the request's timeout bounds all rounds together.
    Any failure, expected or not, reaches the reader as an error: a task that died silently
    would leave the client waiting.
    """
    queue: asyncio.Queue[Event] = asyncio.Queue()
    current = [first]

    def cancel() -> None:
        current[0].cancel()
        task.cancel()

    out = Generation(
        first.model,
        first.digest,
        queue,
        prompt_tokens=first.prompt_tokens,
        cancel=cancel,
        on_finish=on_finish,
        deadline=first.deadline,
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
                out.continued.append(
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
