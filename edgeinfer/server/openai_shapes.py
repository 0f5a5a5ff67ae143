"""OpenAI's response shapes: chat and text completion bodies, SSE chunks, usage, logprobs.

``server/app.py`` routes requests to the service and answers with these; a stream's errors are
reported in-band, the way OpenAI streams do, since its headers are gone by then.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator
from typing import Any

from edgeinfer.engine.base import TokenLogprob
from edgeinfer.errors import EdgeInferError
from edgeinfer.server.feed import sse
from edgeinfer.service import Generation

log = logging.getLogger("edgeinfer.server")


def usage_of(gen: Generation) -> dict[str, Any]:
    assert gen.result is not None
    u = gen.result.usage
    return {
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.prompt_tokens + u.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": u.cached_tokens},
    }


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

    def __init__(self, chat: bool) -> None:
        self.chat = chat
        self.object = "chat.completion" if chat else "text_completion"
        self.chunk_object = "chat.completion.chunk" if chat else "text_completion"
        self.id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex

    def _base(self, gen: Generation, obj: str) -> dict[str, Any]:
        return {"id": self.id, "object": obj, "created": gen.created, "model": gen.model}

    def body(self, gen: Generation, text: str, logprobs: list[TokenLogprob]) -> dict[str, Any]:
        assert gen.result is not None
        choice: dict[str, Any] = {
            "index": 0,
            "finish_reason": gen.result.reason,
            "logprobs": logprobs_of(logprobs) if gen.wants_logprobs else None,
        }
        if self.chat:
            choice["message"] = {"role": "assistant", "content": text}
        else:
            choice["text"] = text
        return {
            **self._base(gen, self.object),
            "choices": [choice],
            "usage": usage_of(gen),
            "edgeinfer": edgeinfer_of(gen),
        }

    def chunk(
        self,
        gen: Generation,
        text: str | None,
        finish: str | None,
        logprobs: tuple[TokenLogprob, ...] = (),
    ) -> dict[str, Any]:
        lp = logprobs_of(logprobs) if gen.wants_logprobs and text is not None else None
        choice: dict[str, Any] = {"index": 0, "finish_reason": finish, "logprobs": lp}
        if self.chat:
            choice["delta"] = {} if text is None else {"content": text}
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


async def sse_stream(gen: Generation, shape: Shape, include_usage: bool) -> AsyncIterator[bytes]:
    try:
        if shape.chat:
            first = shape.chunk(gen, None, None)
            first["choices"][0]["delta"] = {"role": "assistant", "content": ""}
            yield sse(first)
        async for delta in gen:
            yield sse(shape.chunk(gen, delta.text, None, delta.logprobs))
        assert gen.result is not None
        last = shape.chunk(gen, None, gen.result.reason)
        last["edgeinfer"] = edgeinfer_of(gen)
        if include_usage:
            yield sse(last)
            yield sse({**shape.chunk(gen, None, None), "choices": [], "usage": usage_of(gen)})
        else:
            yield sse({**last, "usage": usage_of(gen)})
        yield sse("[DONE]")
    except EdgeInferError as exc:
        # Headers are gone already: report the error in-band, the way OpenAI streams do.
        yield sse(exc.to_openai())
    except Exception as exc:  # a bug must end the stream with an error, not a cut connection
        log.exception("streaming a response failed")
        yield sse(internal_error(exc).to_openai())
    finally:
        gen.cancel()  # no-op when finished; frees the slot when the client hung up


def internal_error(exc: Exception) -> EdgeInferError:
    return EdgeInferError(
        f"internal error ({type(exc).__name__}); the daemon's log has the details"
    )
