"""OpenAI's response shapes: chat and text completion bodies, SSE chunks, usage, logprobs.

``server/app.py`` routes requests to the service and answers with these; a stream's errors are
reported in-band, the way OpenAI streams do, since its headers are gone by then.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

from edgeinfer.core.generation import Generation
from edgeinfer.core.values import Delta, TokenLogprob
from edgeinfer.errors import EdgeInferError
from edgeinfer.prompt.tools import ToolCall, call_start, find_calls, parse_calls
from edgeinfer.server.feed import sse

log = logging.getLogger("edgeinfer.server")


def usage_of(*gens: Generation) -> dict[str, Any]:
    """Usage of one answer, or summed over the choices of ``n > 1`` (each its own sequence)."""
    prompt = completion = cached = 0
    for gen in gens:
        assert gen.result is not None
        u = gen.result.usage
        prompt += u.prompt_tokens
        completion += u.completion_tokens
        cached += u.cached_tokens
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
    }


def edgeinfer_all(gens: Sequence[Generation]) -> dict[str, Any]:
    """The ``edgeinfer`` object: the first choice's, plus each choice's own when ``n > 1``."""
    info = edgeinfer_of(gens[0])
    if len(gens) > 1:
        info["choices"] = [edgeinfer_of(g) for g in gens]
    return info


def edgeinfer_of(gen: Generation) -> dict[str, Any]:
    """What edgeinfer did for this request; later layers add their entries."""
    info: dict[str, Any] = {"model": gen.model, "model_sha256": gen.digest, "cache": gen.cache}
    if gen.route is not None:
        info["route"] = gen.route
    if gen.prompt is not None:
        info["prompt"] = gen.prompt
    if gen.continued:
        info["continued"] = gen.continued
    if gen.result is not None:
        u = gen.result.usage
        info["cached_tokens"] = u.cached_tokens
        info["timings"] = {
            "ttft_ms": round(u.ttft_s * 1000, 1),
            "total_ms": round(u.total_s * 1000, 1),
        }
    return info


class Shape:
    """The two OpenAI object shapes (chat vs text completion) for bodies and SSE chunks."""

    def __init__(self, chat: bool, tools: Sequence[str] | None = None) -> None:
        self.chat = chat
        self.tools = list(tools) if tools else None  # offered tools' names: parse for calls
        self.object = "chat.completion" if chat else "text_completion"
        self.chunk_object = "chat.completion.chunk" if chat else "text_completion"
        self.id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex

    def _base(self, gen: Generation, obj: str) -> dict[str, Any]:
        return {"id": self.id, "object": obj, "created": gen.created, "model": gen.model}

    def choice(
        self, index: int, gen: Generation, text: str, logprobs: list[TokenLogprob]
    ) -> dict[str, Any]:
        assert gen.result is not None
        choice: dict[str, Any] = {
            "index": index,
            "finish_reason": gen.result.reason,
            "logprobs": logprobs_of(logprobs) if gen.wants_logprobs else None,
        }
        if not self.chat:
            choice["text"] = text
            return choice
        message: dict[str, Any] = {"role": "assistant", "content": text}
        if self.tools is not None:
            content, calls = parse_calls(text, self.tools)
            if calls:
                message["content"] = content
                message["tool_calls"] = [c.as_openai() for c in calls]
                if gen.result.reason == "stop":  # "length" still says the answer was cut
                    choice["finish_reason"] = "tool_calls"
        choice["message"] = message
        return choice

    def body(self, answers: Sequence[tuple[Generation, str, list[TokenLogprob]]]) -> dict[str, Any]:
        gens = [gen for gen, _, _ in answers]
        return {
            **self._base(gens[0], self.object),
            "choices": [self.choice(i, *answer) for i, answer in enumerate(answers)],
            "usage": usage_of(*gens),
            "edgeinfer": edgeinfer_all(gens),
        }

    def chunk(
        self,
        gen: Generation,
        text: str | None,
        finish: str | None,
        logprobs: tuple[TokenLogprob, ...] = (),
        *,
        index: int = 0,
        delta: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        lp = logprobs_of(logprobs) if gen.wants_logprobs and text is not None else None
        choice: dict[str, Any] = {"index": index, "finish_reason": finish, "logprobs": lp}
        if self.chat:
            choice["delta"] = (
                delta if delta is not None else {} if text is None else {"content": text}
            )
        else:
            choice["text"] = text or ""
        return {**self._base(gen, self.chunk_object), "choices": [choice]}


def token_of(piece: bytes, logprob: float) -> dict[str, Any]:
    return {"token": piece.decode("utf-8", "replace"), "logprob": logprob, "bytes": list(piece)}


def logprobs_of(tokens: list[TokenLogprob] | tuple[TokenLogprob, ...]) -> dict[str, Any]:
    """OpenAI's chat ``logprobs`` object: one entry per generated token."""
    return {
        "content": [
            {**token_of(t.piece, t.logprob), "top_logprobs": [token_of(p, lp) for p, lp in t.top]}
            for t in tokens
        ]
    }


async def sse_stream(
    gens: Sequence[Generation], shape: Shape, include_usage: bool
) -> AsyncIterator[bytes]:
    """The SSE body of one or more choices (``n``); their chunks interleave, each with its
    ``index``. With tools offered, text that may be a call is held back and sent as
    ``delta.tool_calls`` chunks once the choice is complete."""
    pending: asyncio.Queue[tuple[int, Delta | None | Exception]] = asyncio.Queue()

    async def pump(index: int, gen: Generation) -> None:
        try:
            async for delta in gen:
                await pending.put((index, delta))
            await pending.put((index, None))
        except Exception as exc:
            await pending.put((index, exc))

    pumps = [asyncio.ensure_future(pump(i, g)) for i, g in enumerate(gens)]
    try:
        if shape.chat:
            for i, gen in enumerate(gens):
                yield sse(shape.chunk(gen, None, None, index=i, delta=_ROLE))
        held = [ToolStream(shape.tools) if shape.tools is not None else None for _ in gens]
        left = len(gens)
        while left:
            i, item = await pending.get()
            gen, tools = gens[i], held[i]
            if isinstance(item, Exception):
                raise item
            if item is not None:
                text = item.text if tools is None else tools.feed(item.text)
                if text or tools is None:
                    lp = item.logprobs if tools is None else ()
                    yield sse(shape.chunk(gen, text, None, lp, index=i))
                continue
            left -= 1
            assert gen.result is not None
            reason: str = gen.result.reason
            if tools is not None:
                for chunk in tools.finish(shape, gen, i):
                    yield sse(chunk)
                reason = "tool_calls" if tools.calls and reason == "stop" else reason
            last = shape.chunk(gen, None, reason, index=i)
            if left:
                yield sse(last)
                continue
            last["edgeinfer"] = edgeinfer_all(gens)
            if include_usage:
                yield sse(last)
                yield sse({**shape.chunk(gen, None, None), "choices": [], "usage": usage_of(*gens)})
            else:
                yield sse({**last, "usage": usage_of(*gens)})
        yield sse("[DONE]")
    except EdgeInferError as exc:
        # Headers are gone already: report the error in-band, the way OpenAI streams do.
        yield sse(exc.to_openai())
    except Exception as exc:  # a bug must end the stream with an error, not a cut connection
        log.exception("streaming a response failed")
        yield sse(internal_error(exc).to_openai())
    finally:
        for task in pumps:
            task.cancel()
        for gen in gens:
            gen.cancel()  # no-op when finished; frees the slot when the client hung up


_ROLE = {"role": "assistant", "content": ""}


class ToolStream:
    """One streamed choice with tools offered: content passes through until it may be a call
    (prompt.tools.call_start); the rest is parsed when the choice completes."""

    def __init__(self, names: Sequence[str]) -> None:
        self.names = names
        self.text = ""
        self.sent = 0
        self.stopped = False
        self.calls: list[ToolCall] = []

    def feed(self, delta: str) -> str:
        """What of the text so far can be sent as content now."""
        self.text += delta
        if self.stopped:
            return ""
        start, self.stopped = call_start(self.text, self.sent)
        out = self.text[self.sent : start]
        self.sent = max(self.sent, start)
        return out

    def settle(self) -> tuple[str, list[ToolCall]]:
        """Once the choice is complete: the content still held back, and the calls (the
        Anthropic route shapes these its own way)."""
        first, self.calls = find_calls(self.text, self.names)
        if not self.calls:
            return self.text[self.sent :], []
        return self.text[self.sent : max(first, self.sent)], self.calls

    def finish(self, shape: Shape, gen: Generation, index: int) -> list[dict[str, Any]]:
        """The chunks that complete the choice: held content, or its calls."""
        rest, _ = self.settle()
        chunks: list[dict[str, Any]] = []
        if rest:
            chunks.append(shape.chunk(gen, rest, None, index=index))
        for k, call in enumerate(self.calls):
            head = {"index": k, "id": call.id, "type": "function"}
            head["function"] = {"name": call.name, "arguments": ""}
            chunks.append(shape.chunk(gen, None, None, index=index, delta={"tool_calls": [head]}))
            args = {"index": k, "function": {"arguments": call.arguments}}
            chunks.append(shape.chunk(gen, None, None, index=index, delta={"tool_calls": [args]}))
        return chunks


def internal_error(exc: Exception) -> EdgeInferError:
    return EdgeInferError(
        f"internal error ({type(exc).__name__}); the daemon's log has the details"
    )
