"""Output-length control's second half: an answer cut at ``max_tokens`` goes on where it
stopped, when the caller opted in (``edgeinfer.continue_on_length``).

Each round re-submits the prompt plus the answer so far. The slot still holds their KV, so
prefix reuse evaluates only the last token or two instead of the whole conversation; each
round's reuse is reported in ``edgeinfer.continued``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager, nullcontext

from edgeinfer.errors import EdgeInferError
from edgeinfer.generation import Generation
from edgeinfer.pool.events import Event, Failed, Finished, Usage

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
    between rounds); usage adds up the rounds' completion tokens over the first prompt.
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
    )
    started = time.monotonic()

    async def run() -> None:
        text: list[str] = []
        gen, done, completion = first, None, 0
        for n in range(rounds + 1):
            try:
                async for delta in gen:
                    text.append(delta.text)
                    queue.put_nowait(delta)
            except EdgeInferError as exc:
                queue.put_nowait(Failed(exc))
                return
            assert gen.result is not None
            done, completion = gen.result, completion + gen.result.usage.completion_tokens
            if n:
                u = done.usage
                out.continued.append(
                    {"cached_tokens": u.cached_tokens, "completion_tokens": u.completion_tokens}
                )
            if done.reason != "length" or n == rounds:
                break
            try:
                gen = current[0] = await restart("".join(text))
            except EdgeInferError as exc:
                queue.put_nowait(Failed(exc))
                return
        assert done is not None and first.result is not None
        u = first.result.usage
        usage = Usage(
            u.prompt_tokens, completion, u.cached_tokens, u.ttft_s, time.monotonic() - started
        )
        queue.put_nowait(Finished(done.reason, usage))

    async def held() -> None:
        with hold or nullcontext():
            await run()

    task = asyncio.create_task(held())
    return out
