"""Anthropic's Messages API, ``POST /v1/messages``, over the same pipeline as OpenAI chat.

The request goes through ``InferenceService.chat`` like ``/v1/chat/completions`` (cache, the
router with model ``auto``, stats); only the wire shapes differ: Anthropic's request fields,
its message object, its named SSE events, and its error JSON
``{"type": "error", "error": {"type", "message"}}``, which this route answers with for every
failure (validation included) so the ``anthropic`` SDK raises its own typed errors.

``x-api-key`` and ``anthropic-version`` are accepted and ignored (the socket's access is the
peer's uid; on TCP, pass the bearer token as the SDK's ``auth_token``). Tool use is refused
with a 400 for now, as are image and document blocks and a final assistant turn (prefill).
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated, Any, Literal

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import Field, ValidationError, field_validator

from edgeinfer.engine.base import TokenLogprob
from edgeinfer.errors import EdgeInferError, InvalidRequest
from edgeinfer.server.auth import identity
from edgeinfer.server.openai_shapes import edgeinfer_of, internal_error
from edgeinfer.server.schemas import EdgeInferOptions, StrictModel, sampling_of
from edgeinfer.service import GenerateOptions, Generation, InferenceService

log = logging.getLogger("edgeinfer.server")

TOOLS_REFUSED = "tools on /v1/messages are not supported yet"
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


class TextBlock(StrictModel):
    type: Literal["text"]
    text: str
    cache_control: dict[str, Any] | None = None  # Anthropic's prompt caching hint: ignored
    citations: list[dict[str, Any]] | None = None


def _check_blocks(value: Any) -> Any:
    """A clear 400 for block types edgeinfer does not take (before pydantic's union noise)."""
    if isinstance(value, list):
        for block in value:
            kind = block.get("type") if isinstance(block, dict) else None
            if kind in ("tool_use", "tool_result", "server_tool_use"):
                raise ValueError(TOOLS_REFUSED)
            if kind != "text":
                raise ValueError(f"content blocks of type {kind!r} are not supported (only text)")
    return value


class Message(StrictModel):
    role: Literal["user", "assistant"]
    content: str | list[TextBlock]

    _blocks = field_validator("content", mode="before")(_check_blocks)

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(block.text for block in self.content)


class Metadata(StrictModel):
    user_id: str | None = None


class MessagesRequest(StrictModel):
    model: str
    max_tokens: Annotated[int, Field(ge=1, le=1 << 20)]
    messages: Annotated[list[Message], Field(min_length=1)]
    system: str | list[TextBlock] | None = None
    temperature: Annotated[float, Field(ge=0.0, le=1.0)] | None = None
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] | None = None
    top_k: Annotated[int, Field(ge=0)] | None = None
    stop_sequences: Annotated[list[str], Field(max_length=4)] | None = None
    stream: bool = False
    metadata: Metadata | None = None
    tools: list[Any] | None = None
    tool_choice: Any = None
    edgeinfer: EdgeInferOptions | None = None  # edgeinfer's own options, as on OpenAI chat

    _system_blocks = field_validator("system", mode="before")(_check_blocks)

    def conversation(self) -> list[dict[str, str]]:
        if self.tools or self.tool_choice is not None:
            raise InvalidRequest(TOOLS_REFUSED, param="tools")
        if self.messages[-1].role == "assistant":
            raise InvalidRequest(
                "a final assistant turn (prefill) is not supported yet", param="messages"
            )
        convo = [{"role": m.role, "content": m.text()} for m in self.messages]
        system = self.system
        if isinstance(system, list):
            system = "".join(block.text for block in system)
        return [{"role": "system", "content": system}, *convo] if system else convo

    def options(self, who: str) -> GenerateOptions:
        given = {"temperature": self.temperature, "top_p": self.top_p, "top_k": self.top_k}
        left_out = {"min_p", "repeat_penalty", "presence_penalty", "frequency_penalty"}
        ext = self.edgeinfer or EdgeInferOptions()
        return GenerateOptions(
            max_tokens=self.max_tokens,
            stop=tuple(self.stop_sequences or ()),
            sampling=sampling_of(given),
            default_sampling=frozenset({n for n, v in given.items() if v is None} | left_out),
            identity=who,
            timeout=ext.timeout,
            cache=ext.cache,
            cache_threshold=ext.cache_threshold,
            route=ext.route,
            min_quality=ext.min_quality,
            max_cost=ext.max_cost,
            request_type=ext.request_type,
            continue_on_length=ext.continue_on_length,
            compress=ext.compress,
            context_budget=ext.context_budget,
        )


def _validation_error(exc: ValidationError) -> InvalidRequest:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err.get("loc", ()) if not str(p).startswith(("list[", "str")))
    msg = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
    if err.get("type") == "extra_forbidden":
        msg = "unknown or unsupported field"
    elif err.get("type") == "missing":
        msg = "required field is missing"
    text = f"{loc}: {msg}" if loc else msg
    return InvalidRequest(text.encode("utf-8", "backslashreplace").decode(), param=loc or None)


def _usage(gen: Generation) -> dict[str, int]:
    assert gen.result is not None
    u = gen.result.usage
    return {
        "input_tokens": u.prompt_tokens,
        "output_tokens": u.completion_tokens,
        "cache_read_input_tokens": u.cached_tokens,
    }


def _stop(gen: Generation) -> tuple[str, str | None]:
    assert gen.result is not None
    if gen.result.stop_sequence is not None:
        return "stop_sequence", gen.result.stop_sequence
    return _STOP_REASONS.get(gen.result.reason, "end_turn"), None


def _message(mid: str, gen: Generation, text: str | None) -> dict[str, Any]:
    """The message object; ``text`` None: the stream's opening one (no content yet)."""
    done = text is not None
    reason, sequence = _stop(gen) if done else (None, None)
    usage = _usage(gen) if done else {"input_tokens": gen.prompt_tokens, "output_tokens": 0}
    return {
        "id": mid,
        "type": "message",
        "role": "assistant",
        "model": gen.model,
        "content": [{"type": "text", "text": text}] if done else [],
        "stop_reason": reason,
        "stop_sequence": sequence,
        "usage": usage,
        "edgeinfer": edgeinfer_of(gen),
    }


def _event(name: str, data: dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: {json.dumps({'type': name, **data})}\n\n".encode()


async def _events(gen: Generation, mid: str) -> AsyncIterator[bytes]:
    """Anthropic's stream: message_start, one text block's deltas, message_delta, message_stop."""
    try:
        yield _event("message_start", {"message": _message(mid, gen, None)})
        block = {"type": "text", "text": ""}
        yield _event("content_block_start", {"index": 0, "content_block": block})
        yield _event("ping", {})
        async for delta in gen:
            if delta.text:
                text_delta = {"type": "text_delta", "text": delta.text}
                yield _event("content_block_delta", {"index": 0, "delta": text_delta})
        yield _event("content_block_stop", {"index": 0})
        reason, sequence = _stop(gen)
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
            try:
                body = MessagesRequest.model_validate_json(await request.body())
            except ValidationError as exc:
                if exc.errors()[0].get("type") == "json_invalid":
                    raise InvalidRequest("the request body is not valid JSON") from None
                raise _validation_error(exc) from None
            convo = body.conversation()
            gen = await service.chat(body.model, convo, body.options(identity(request.scope)))
            mid = "msg_" + uuid.uuid4().hex
            if body.stream:
                headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
                stream = _events(gen, mid)
                return StreamingResponse(stream, media_type="text/event-stream", headers=headers)
            answer = await collect(request, gen)
            if answer is None:
                return Response(status_code=499)
            return JSONResponse(_message(mid, gen, answer[0]))
        except EdgeInferError as exc:
            return anthropic_error(exc)
        except Exception as exc:
            log.exception("a /v1/messages request failed")
            return anthropic_error(internal_error(exc))
