"""No request waits forever: an unexpected exception in a continuation ends its answer with an
error (logged with its traceback), and a generation nobody feeds fails at its deadline.

Scripted generations stand in for runners here: what is under test is the waiting, not a model.
"""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from edgeinfer.core.generation import DEADLINE_GRACE_S, Generation
from edgeinfer.core.values import Delta, Event, Finished, Usage
from edgeinfer.errors import EdgeInferError, RequestTimeout
from edgeinfer.service.continuation import continuing

WAIT = 5.0  # far longer than any of these takes when it works; a hang fails at this bound


def _cut(text: str) -> Generation:
    """A generation that answers ``text`` and stops at max_tokens."""
    queue: asyncio.Queue[Event] = asyncio.Queue()
    queue.put_nowait(Delta(text))
    queue.put_nowait(Finished("length", Usage(5, 1, 0, 0.01, 0.02)))
    return Generation("m", None, queue, prompt_tokens=5)


def test_a_continuation_that_fails_unexpectedly_ends_the_answer(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def restart(so_far: str) -> Generation:
        raise RuntimeError("tokenizer blew up")

    async def go() -> list[str]:
        gen = continuing(_cut("Once"), restart, rounds=2)
        seen: list[str] = []
        with pytest.raises(EdgeInferError) as err:
            async for delta in gen:
                seen.append(delta.text)
        assert "RuntimeError" in err.value.message and err.value.status == 500
        return seen

    with caplog.at_level(logging.ERROR):
        assert asyncio.run(asyncio.wait_for(go(), WAIT)) == ["Once"]
    assert any(r.exc_info and "tokenizer blew up" in str(r.exc_info[1]) for r in caplog.records)


def test_a_generation_nobody_feeds_fails_at_its_deadline() -> None:
    cancelled: list[bool] = []

    async def go() -> float:
        queue: asyncio.Queue[Event] = asyncio.Queue()
        started = time.monotonic()
        gen = Generation(
            "m",
            None,
            queue,
            prompt_tokens=1,
            cancel=lambda: cancelled.append(True),
            deadline=started + 0.2,
        )
        with pytest.raises(RequestTimeout):
            await gen.text()
        return time.monotonic() - started

    elapsed = asyncio.run(asyncio.wait_for(go(), WAIT))
    assert 0.15 < elapsed < 0.2 + DEADLINE_GRACE_S + 1.0
    assert cancelled  # the slot (or the remote call) is freed, not left running


def test_events_already_queued_are_read_past_the_deadline() -> None:
    """A runner's own timeout error, queued just before the deadline, is what the client gets."""

    async def go() -> str:
        queue: asyncio.Queue[Event] = asyncio.Queue()
        queue.put_nowait(Delta("late but here"))
        queue.put_nowait(Finished("stop", Usage(1, 1, 0, 0.0, 0.0)))
        gen = Generation("m", None, queue, prompt_tokens=1, deadline=time.monotonic() - 1)
        return await gen.text()

    assert asyncio.run(asyncio.wait_for(go(), WAIT)) == "late but here"


def test_a_failing_finish_hook_is_logged_and_the_answer_stands(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken(text: str, done: Finished) -> None:
        raise OSError("disk full")

    async def go() -> str:
        queue: asyncio.Queue[Event] = asyncio.Queue()
        queue.put_nowait(Delta("fine"))
        queue.put_nowait(Finished("stop", Usage(1, 1, 0, 0.0, 0.0)))
        return await Generation("m", None, queue, prompt_tokens=1, on_finish=broken).text()

    with caplog.at_level(logging.ERROR):
        assert asyncio.run(asyncio.wait_for(go(), WAIT)) == "fine"
    assert any(r.exc_info and "disk full" in str(r.exc_info[1]) for r in caplog.records)
