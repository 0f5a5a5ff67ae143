"""The FastAPI app: OpenAI-compatible routes plus edgeinfer's native ones.

Errors reach the wire in exactly one place (the handlers below): every ``EdgeInferError``
becomes OpenAI error JSON with its stable code and HTTP status; validation failures become
400 ``invalid_request_error`` naming the field.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from edgeinfer import __version__
from edgeinfer.engine.base import TokenLogprob
from edgeinfer.errors import Busy, EdgeInferError, InvalidRequest, ModelUnavailable
from edgeinfer.server.limits import BodyLimit
from edgeinfer.server.schemas import ChatCompletionRequest, CompletionRequest, EmbeddingRequest
from edgeinfer.service import Generation, InferenceService
from edgeinfer.stats import CONTENT_TYPE as METRICS_CONTENT_TYPE
from edgeinfer.stats import Metrics

if TYPE_CHECKING:
    from edgeinfer.server.admin import Operations


def error_response(exc: EdgeInferError) -> JSONResponse:
    headers = {"Retry-After": str(max(1, round(exc.retry_after)))} if isinstance(exc, Busy) else {}
    return JSONResponse(exc.to_openai(), status_code=exc.status, headers=headers)


_TYPE_TAGS = {"str", "int", "float", "bool", "list", "dict", "none"}


def _is_type_tag(step: str) -> bool:
    return step in _TYPE_TAGS or "[" in step or step.startswith(("function-", "constrained-"))


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    err = exc.errors()[0]
    # Union members add their type as a location step ("stop.str"); the field is what counts.
    loc = [str(p) for p in err.get("loc", ()) if p != "body" and not _is_type_tag(str(p))]
    if err.get("type") == "json_invalid":
        return "the request body is not valid JSON", None
    field = ".".join(loc) or None
    msg = err.get("msg", "invalid value")
    if err.get("type") == "extra_forbidden":
        msg = "unknown or unsupported field"
    elif err.get("type") == "missing":
        msg = "required field is missing"
    return (f"{field}: {msg}" if field else msg), field


def _usage(gen: Generation) -> dict[str, Any]:
    assert gen.result is not None
    u = gen.result.usage
    return {
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.prompt_tokens + u.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": u.cached_tokens},
    }


def _edgeinfer(gen: Generation) -> dict[str, Any]:
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


class _Shape:
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
            "logprobs": _logprobs(logprobs) if gen.wants_logprobs else None,
        }
        if self.chat:
            choice["message"] = {"role": "assistant", "content": text}
        else:
            choice["text"] = text
        return {
            **self._base(gen, self.object),
            "choices": [choice],
            "usage": _usage(gen),
            "edgeinfer": _edgeinfer(gen),
        }

    def chunk(
        self,
        gen: Generation,
        text: str | None,
        finish: str | None,
        logprobs: tuple[TokenLogprob, ...] = (),
    ) -> dict[str, Any]:
        lp = _logprobs(logprobs) if gen.wants_logprobs and text is not None else None
        choice: dict[str, Any] = {"index": 0, "finish_reason": finish, "logprobs": lp}
        if self.chat:
            choice["delta"] = {} if text is None else {"content": text}
        else:
            choice["text"] = text or ""
        return {**self._base(gen, self.chunk_object), "choices": [choice]}


def _token(piece: bytes, logprob: float) -> dict[str, Any]:
    return {"token": piece.decode("utf-8", "replace"), "logprob": logprob, "bytes": list(piece)}


def _logprobs(tokens: list[TokenLogprob] | tuple[TokenLogprob, ...]) -> dict[str, Any]:
    """OpenAI's chat ``logprobs`` object: one entry per generated token."""
    return {
        "content": [
            {**_token(t.piece, t.logprob), "top_logprobs": [_token(p, lp) for p, lp in t.top]}
            for t in tokens
        ]
    }


def _sse(data: dict[str, Any] | str) -> bytes:
    payload = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return f"data: {payload}\n\n".encode()


async def _stream(gen: Generation, shape: _Shape, include_usage: bool) -> AsyncIterator[bytes]:
    try:
        if shape.chat:
            first = shape.chunk(gen, None, None)
            first["choices"][0]["delta"] = {"role": "assistant", "content": ""}
            yield _sse(first)
        async for delta in gen:
            yield _sse(shape.chunk(gen, delta.text, None, delta.logprobs))
        assert gen.result is not None
        last = shape.chunk(gen, None, gen.result.reason)
        last["edgeinfer"] = _edgeinfer(gen)
        if include_usage:
            yield _sse(last)
            yield _sse({**shape.chunk(gen, None, None), "choices": [], "usage": _usage(gen)})
        else:
            yield _sse({**last, "usage": _usage(gen)})
        yield _sse("[DONE]")
    except EdgeInferError as exc:
        # Headers are gone already: report the error in-band, the way OpenAI streams do.
        yield _sse(exc.to_openai())
    finally:
        gen.cancel()  # no-op when finished; frees the slot when the client hung up


async def _until_disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _collect(request: Request, gen: Generation) -> tuple[str, list[TokenLogprob]] | None:
    """The whole answer, or ``None`` when the client hung up first (its slot is then freed)."""
    answer = asyncio.ensure_future(gen.collect())
    watcher = asyncio.ensure_future(_until_disconnect(request))
    try:
        await asyncio.wait({answer, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if answer.done():
        return answer.result()
    gen.cancel()
    answer.cancel()
    return None


async def _respond(
    request: Request, start: Awaitable[Generation], shape: _Shape, stream: bool, usage: bool
) -> Response:
    gen = await start
    if stream:
        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        return StreamingResponse(
            _stream(gen, shape, usage), media_type="text/event-stream", headers=headers
        )
    answer = await _collect(request, gen)
    if answer is None:
        return Response(status_code=499)
    return JSONResponse(shape.body(gen, *answer))


_FEED_INTERVAL = (0.1, 60.0)


def _feed_interval(request: Request) -> float:
    """``?interval=`` seconds between two ``/stats`` events (default 1)."""
    raw = request.query_params.get("interval", "1")
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    low, high = _FEED_INTERVAL
    if not low <= value <= high:  # also refuses NaN
        raise InvalidRequest(f"interval: a number of seconds in [{low}, {high}]", param="interval")
    return value


async def _stats_feed(
    snapshot: Callable[[], dict[str, Any]], interval: float, stopping: asyncio.Event
) -> AsyncIterator[bytes]:
    """One ``/stats`` snapshot per ``interval`` until the daemon stops. A client that hangs up
    ends it at the next write (uvicorn raises there), so an idle feed costs one snapshot a tick."""
    while not stopping.is_set():
        snap = await asyncio.to_thread(snapshot)
        yield _sse({"time": round(time.time(), 3), **snap})
        try:
            await asyncio.wait_for(stopping.wait(), interval)
        except TimeoutError:
            pass


def _relay_stop_signals(stopping: asyncio.Event) -> None:
    """Set ``stopping`` on SIGINT/SIGTERM, then let uvicorn's own handler run.

    uvicorn drains open responses *before* the lifespan shutdown, so an endless ``/stats``
    feed would hold every shutdown for the whole graceful timeout; the feed ends on this event
    instead. uvicorn restores its saved handlers on exit, which drops this wrapper with it.
    """
    if threading.current_thread() is not threading.main_thread():
        return  # only the main thread owns signals (and only there does uvicorn install any)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        previous = signal.getsignal(sig)
        if not callable(previous):
            continue

        def relay(signum: int, frame: Any, previous: Callable[[int, Any], Any] = previous) -> None:
            loop.call_soon_threadsafe(stopping.set)
            previous(signum, frame)

        signal.signal(sig, relay)


def create_app(
    service: InferenceService,
    *,
    metrics: Metrics | None = None,
    on_shutdown: Callable[[], None] | None = None,
    max_body_bytes: int = 8 << 20,
    admin: Operations | None = None,
) -> FastAPI:
    """The ASGI app over ``service``; ``on_shutdown`` runs after the server stopped accepting.
    ``admin`` adds config reload and model load/unload, and their state in /health and /stats."""

    def snapshot() -> dict[str, Any]:
        snap = service.snapshot()
        return snap if admin is None else {**snap, **admin.state()}

    metrics = metrics or Metrics()
    metrics.watch(snapshot)
    stopping = asyncio.Event()  # ends the live /stats feeds when the daemon stops

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        _relay_stop_signals(stopping)
        async with admin.running() if admin is not None else contextlib.nullcontext():
            yield
        stopping.set()
        if on_shutdown is not None:
            await asyncio.to_thread(on_shutdown)

    app = FastAPI(title="edgeinfer", version=__version__, lifespan=lifespan)
    if admin is not None:
        admin.mount(app)
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    started = time.time()

    @app.exception_handler(EdgeInferError)
    async def _edgeinfer_error(_: Request, exc: EdgeInferError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        message, field = _validation_message(exc)
        return error_response(InvalidRequest(message, param=field))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        err = InvalidRequest(str(exc.detail))
        err.status = exc.status_code
        err.code = "not_found" if exc.status_code == 404 else err.code
        return error_response(err)

    @app.post("/v1/chat/completions", response_model=None)
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
        messages = [{"role": m.role, "content": m.text()} for m in body.messages]
        start = service.chat(body.model, messages, body.options())
        usage = bool(body.stream_options and body.stream_options.include_usage)
        return await _respond(request, start, _Shape(chat=True), body.stream, usage)

    @app.post("/v1/completions", response_model=None)
    async def completions(body: CompletionRequest, request: Request) -> Response:
        start = service.complete(body.model, body.prompt, body.options())
        usage = bool(body.stream_options and body.stream_options.include_usage)
        return await _respond(request, start, _Shape(chat=False), body.stream, usage)

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        data = [
            {
                "id": m.name,
                "object": "model",
                "created": int(started),
                "owned_by": "edgeinfer",
                "edgeinfer": {"status": m.status(), "reason": m.reason(), "quant": m.spec.quant},
            }
            for m in service.pool.models()
        ]
        data += [
            {
                "id": r.name,
                "object": "model",
                "created": int(started),
                "owned_by": "remote",
                "edgeinfer": {"status": "remote", "reason": None, "url": r.spec.url},
            }
            for r in service.remotes.values()
        ]
        auto = {"status": "router", "reason": None, "tiers": service.router.tier_names()}
        data.append(
            {
                "id": "auto",
                "object": "model",
                "created": int(started),
                "owned_by": "edgeinfer",
                "edgeinfer": auto,
            }
        )
        return {"object": "list", "data": data}

    @app.post("/v1/embeddings")
    async def embeddings(body: EmbeddingRequest) -> dict[str, Any]:
        if service.cache is None:
            raise ModelUnavailable("the embedding model is not loaded (see the daemon's log)")
        embedder = service.cache.embedder
        texts = body.texts()
        vectors = await asyncio.to_thread(embedder.embed, texts)
        tokens = sum(await asyncio.to_thread(embedder.token_counts, texts))
        return {
            "object": "list",
            "model": embedder.name,
            "data": [
                {"object": "embedding", "index": i, "embedding": [float(x) for x in vec]}
                for i, vec in enumerate(vectors)
            ],
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }

    @app.get("/health")
    async def health() -> dict[str, Any]:
        models = {
            m.name: {"status": m.status(), "reason": m.reason()} for m in service.pool.models()
        }
        ready = any(m["status"] == "ready" for m in models.values())
        return {
            "status": "ok" if ready else "degraded",
            "version": __version__,
            "uptime_s": round(time.time() - started, 1),
            "models": models,
            **(admin.state() if admin is not None else {}),
        }

    @app.get("/stats", response_model=None)
    async def stats(request: Request) -> dict[str, Any] | Response:
        """The JSON snapshot, or the live feed for ``Accept: text/event-stream``."""
        if "text/event-stream" in request.headers.get("accept", ""):
            return await stats_stream(request)
        return await asyncio.to_thread(snapshot)

    # Out of the OpenAPI schema: a fuzzer reading an endless body would never return.
    @app.get("/stats/stream", include_in_schema=False)
    async def stats_stream(request: Request) -> StreamingResponse:
        feed = _stats_feed(snapshot, _feed_interval(request), stopping)
        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        return StreamingResponse(feed, media_type="text/event-stream", headers=headers)

    @app.get("/metrics")
    async def prometheus() -> Response:
        body = await asyncio.to_thread(metrics.text)
        return Response(body, media_type=METRICS_CONTENT_TYPE)

    return app
