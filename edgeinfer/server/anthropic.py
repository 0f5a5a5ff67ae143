"""Anthropic's Messages API, ``POST /v1/messages``, over the same pipeline as OpenAI chat.

The request goes through ``InferenceService.chat`` like ``/v1/chat/completions`` (cache, the
router with model ``auto``, stats); only the wire shapes differ: Anthropic's request fields,
its message object, its named SSE events, and its error JSON
``{"type": "error", "error": {"type", "message"}}``, which this route answers with for every
failure (validation included) so the ``anthropic`` SDK raises its own typed errors.

``x-api-key`` and ``anthropic-version`` are accepted and ignored (the socket's access is the
peer's uid; on TCP, pass the bearer token as the SDK's ``auth_token``). Tool use maps onto
OpenAI chat's tool calling (server/anthropic_schemas.py for the request): a call in the answer
is a ``tool_use`` block (id ``toolu_...``, ``input`` an object) with ``stop_reason:
"tool_use"``; a stream sends text until a call may begin (openai_shapes.ToolStream holds the
rest back), then each call as its own block whose input comes in one ``input_json_delta``.
Image and document blocks and a final assistant turn (prefill) are refused with a 400.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from edgeinfer.core.generation import Generation
from edgeinfer.core.options import ToolSpec
from edgeinfer.core.values import TokenLogprob
from edgeinfer.errors import EdgeInferError
from edgeinfer.prompt.tools import ToolCall, parse_calls
from edgeinfer.server.anthropic_schemas import parse_request
from edgeinfer.server.auth import identity
from edgeinfer.server.openai_shapes import ToolStream, edgeinfer_of, internal_error
from edgeinfer.service.pipeline import InferenceService

log = logging.getLogger("edgeinfer.server")

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    422: "invalid_request_error",
    429: "rate_limit_error",
    503: "overloaded_error",
}
_STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "cancelled": "end_turn"}


def anthropic_error(exc: EdgeInferError) -> JSONResponse:
    """``exc`` as Anthropic's error JSON, with edgeinfer's HTTP status (and Retry-After)."""
    headers = {}
    retry_after = getattr(exc, "retry_after", None)
    if isinstance(retry_after, int | float):
        headers["Retry-After"] = str(max(1, round(retry_after)))
    return JSONResponse(error_body(exc), status_code=exc.status, headers=headers)


def error_body(exc: EdgeInferError) -> dict[str, Any]:
    kind = _ERROR_TYPES.get(exc.status, "api_error")
    return {"type": "error", "error": {"type": kind, "message": exc.message}}


def _usage(gen: Generation) -> dict[str, int]:
    assert gen.result is not None
    u = gen.result.usage
    return {
        "input_tokens": u.prompt_tokens,
        "output_tokens": u.completion_tokens,
        "cache_read_input_tokens": u.cached_tokens,
    }


def _stop(gen: Generation, called: bool) -> tuple[str, str | None]:
    assert gen.result is not None
    if called and gen.result.reason != "length":  # max_tokens still says the answer was cut
        return "tool_use", None
    if gen.result.stop_sequence is not None:
        return "stop_sequence", gen.result.stop_sequence
    return _STOP_REASONS.get(gen.result.reason, "end_turn"), None


def _taken(spec: ToolSpec | None, calls: list[ToolCall]) -> list[ToolCall]:
    """The calls the answer holds: one at most with ``disable_parallel_tool_use``."""
    return calls if spec is None or spec.parallel else calls[:1]


def tool_use(call: ToolCall, *, opening: bool = False) -> dict[str, Any]:
    """``call`` as a ``tool_use`` block; ``opening``: a stream's, whose input comes as deltas."""
    return {
        "type": "tool_use",
        "id": "toolu_" + call.id.removeprefix("call_"),
        "name": call.name,
        "input": {} if opening else json.loads(call.arguments),
    }


def content_of(text: str, spec: ToolSpec | None) -> list[dict[str, Any]]:
    """A whole answer's content blocks: its text, or the text before its calls and the calls."""
    calls: list[ToolCall] = []
    if spec is not None and spec.offered:
        content, calls = parse_calls(text, spec.names())
    if not calls:
        return [{"type": "text", "text": text}]
    head = [{"type": "text", "text": content}] if content else []
    return head + [tool_use(c) for c in _taken(spec, calls)]


def _message(mid: str, gen: Generation, content: list[dict[str, Any]] | None) -> dict[str, Any]:
    """The message object; ``content`` None: the stream's opening one (no content yet)."""
    done = content is not None
    called = any(block["type"] == "tool_use" for block in content or ())
    reason, sequence = _stop(gen, called) if done else (None, None)
    usage = _usage(gen) if done else {"input_tokens": gen.prompt_tokens, "output_tokens": 0}
    return {
        "id": mid,
        "type": "message",
        "role": "assistant",
        "model": gen.model,
        "content": content or [],
        "stop_reason": reason,
        "stop_sequence": sequence,
        "usage": usage,
        "edgeinfer": edgeinfer_of(gen),
    }


def _event(name: str, data: dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: {json.dumps({'type': name, **data})}\n\n".encode()


class _Blocks:
    """A streamed answer's content blocks as events: text in a block opened on demand, each
    call in a block of its own; a ping after the first block's start, where Anthropic sends it."""

    def __init__(self) -> None:
        self.count = 0
        self.text_open = False
        self.called = False

    def _start(self, block: dict[str, Any]) -> list[bytes]:
        events = [_event("content_block_start", {"index": self.count, "content_block": block})]
        if self.count == 0:
            events.append(_event("ping", {}))
        self.count += 1
        return events

    def _delta(self, delta: dict[str, Any]) -> bytes:
        return _event("content_block_delta", {"index": self.count - 1, "delta": delta})

    def text(self, piece: str) -> list[bytes]:
        events = [] if self.text_open else self._start({"type": "text", "text": ""})
        self.text_open = True
        if piece:
            events.append(self._delta({"type": "text_delta", "text": piece}))
        return events

    def close(self) -> list[bytes]:
        """Ends the text block, if one is open."""
        if not self.text_open:
            return []
        self.text_open = False
        return [_event("content_block_stop", {"index": self.count - 1})]

    def call(self, call: ToolCall) -> list[bytes]:
        events = [*self.close(), *self._start(tool_use(call, opening=True))]
        events.append(self._delta({"type": "input_json_delta", "partial_json": call.arguments}))
        events.append(_event("content_block_stop", {"index": self.count - 1}))
        self.called = True
        return events

    def finish(self, rest: str, calls: Sequence[ToolCall]) -> list[bytes]:
        """The held-back text and the calls, once the answer is complete; every message has
        a block (an empty text one at least)."""
        events = self.text(rest) if rest or not (calls or self.count) else []
        for call in calls:
            events += self.call(call)
        return events + self.close()


async def _events(gen: Generation, mid: str, spec: ToolSpec | None) -> AsyncIterator[bytes]:
    """Anthropic's stream: message_start, the content blocks' events, message_delta,
    message_stop. With tools offered, text that may be a call is held back (ToolStream)."""
    held = ToolStream(spec.names()) if spec is not None and spec.offered else None
    blocks = _Blocks()
    try:
        yield _event("message_start", {"message": _message(mid, gen, None)})
        for event in blocks.text("") if held is None else ():
            yield event  # no tools: the text block opens at once
        async for delta in gen:
            piece = delta.text if held is None else held.feed(delta.text)
            for event in blocks.text(piece) if piece else ():
                yield event
        rest, calls = held.settle() if held is not None else ("", [])
        for event in blocks.finish(rest, _taken(spec, calls)):
            yield event
        reason, sequence = _stop(gen, blocks.called)
        yield _event(
            "message_delta",
            {
                "delta": {"stop_reason": reason, "stop_sequence": sequence},
                "usage": {"output_tokens": _usage(gen)["output_tokens"]},
                "edgeinfer": edgeinfer_of(gen),
            },
        )
        yield _event("message_stop", {})
    except EdgeInferError as exc:  # headers are gone: Anthropic's in-band error event
        yield _event("error", {"error": error_body(exc)["error"]})
    except Exception as exc:
        log.exception("streaming a message failed")
        yield _event("error", {"error": error_body(internal_error(exc))["error"]})
    finally:
        gen.cancel()


Collect = Callable[[Request, Generation], Awaitable[tuple[str, list[TokenLogprob]] | None]]


def add_messages_route(app: FastAPI, service: InferenceService, collect: Collect) -> None:
    """Register ``POST /v1/messages``; ``collect(request, gen)`` is the app's disconnect-aware
    wait for a whole answer (``None`` when the client hung up)."""

    @app.post("/v1/messages", response_model=None, tags=["anthropic"])
    async def messages(request: Request) -> Response:
        try:
            body = parse_request(await request.body())
            convo = body.conversation()
            options = body.options(identity(request.scope))
            gen = await service.chat(body.model, convo, options)
            mid = "msg_" + uuid.uuid4().hex
            if body.stream:
                headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
                stream = _events(gen, mid, options.tools)
                return StreamingResponse(stream, media_type="text/event-stream", headers=headers)
            answer = await collect(request, gen)
            if answer is None:
                return Response(status_code=499)
            return JSONResponse(_message(mid, gen, content_of(answer[0], options.tools)))
        except EdgeInferError as exc:
            return anthropic_error(exc)
        except Exception as exc:
            log.exception("a /v1/messages request failed")
            return anthropic_error(internal_error(exc))
