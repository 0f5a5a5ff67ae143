"""The FastAPI app: OpenAI-compatible routes plus edgeinfer's native ones.

Errors reach the wire in exactly one place (the handlers below): every ``EdgeInferError``
becomes OpenAI error JSON with its stable code and HTTP status; validation failures become
400 ``invalid_request_error`` naming the field.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from edgeinfer import __version__
from edgeinfer.core.generation import Generation
from edgeinfer.core.values import TokenLogprob
from edgeinfer.errors import Busy, EdgeInferError, InvalidRequest
from edgeinfer.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from edgeinfer.metrics import Metrics
from edgeinfer.server.anthropic import add_messages_route
from edgeinfer.server.auth import identity
from edgeinfer.server.embeddings import add_embeddings_route
from edgeinfer.server.feed import StatsFeeds
from edgeinfer.server.limits import BodyLimit
from edgeinfer.server.ollama import ollama_router
from edgeinfer.server.ollama_models import StoreFactory
from edgeinfer.server.openai_shapes import (
    Shape,
    internal_error,
    sse_stream,
)
from edgeinfer.server.schemas import ChatCompletionRequest, CompletionRequest
from edgeinfer.service.pipeline import InferenceService, ServedModel

log = logging.getLogger("edgeinfer.server")

if TYPE_CHECKING:
    from edgeinfer.server.admin import Operations


def error_response(exc: EdgeInferError) -> JSONResponse:
    headers = {"Retry-After": str(max(1, round(exc.retry_after)))} if isinstance(exc, Busy) else {}
    return JSONResponse(exc.to_openai(), status_code=exc.status, headers=headers)


_TYPE_TAGS = {"str", "int", "float", "bool", "list", "dict", "none"}


def _is_type_tag(step: str) -> bool:
    return step in _TYPE_TAGS or "[" in step or step.startswith(("function-", "constrained-"))


def _wire_text(text: str) -> str:
    """``text`` as it can be encoded into the error JSON: a lone surrogate (from a JSON key
    such as ``"\\ud800"``) becomes its escape instead of failing the response with a 500."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    errors = exc.errors()
    # A union reports each member's complaint: a list of 5 stop strings is "not a valid
    # string" and "at most 4 items"; the member of the input's own type says what is wrong.
    same_field = [e for e in errors if _error_loc(e) == _error_loc(errors[0])]
    err = next((e for e in same_field if not str(e.get("type", "")).endswith("_type")), errors[0])
    loc = _error_loc(err)
    if err.get("type") == "json_invalid":
        return "the request body is not valid JSON", None
    field = ".".join(loc) or None
    msg = _wire_text(str(err.get("msg", "invalid value")))
    if err.get("type") == "extra_forbidden":
        msg = "unknown or unsupported field"
    elif err.get("type") == "missing":
        msg = "required field is missing"
    return (f"{field}: {msg}" if field else msg), field


def _error_loc(err: Any) -> list[str]:
    """An error's field path; union members add their type as a step ("stop.str"), dropped."""
    steps = (str(p) for p in err.get("loc", ()) if p != "body" and not _is_type_tag(str(p)))
    return [_wire_text(step) for step in steps]


async def _until_disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _collect_one(request: Request, gen: Generation) -> tuple[str, list[TokenLogprob]] | None:
    """One answer (``/v1/messages``), or ``None`` when the client hung up first."""
    answers = await _collect(request, [gen])
    return None if answers is None else (answers[0][1], answers[0][2])


async def _collect(
    request: Request, gens: Sequence[Generation]
) -> list[tuple[Generation, str, list[TokenLogprob]]] | None:
    """Every choice's whole answer, or ``None`` when the client hung up first (their slots are
    then freed)."""

    async def one(gen: Generation) -> tuple[Generation, str, list[TokenLogprob]]:
        return (gen, *await gen.collect())

    answer: asyncio.Future[list[tuple[Generation, str, list[TokenLogprob]]]]
    answer = asyncio.ensure_future(asyncio.gather(*(one(g) for g in gens)))
    # read by the callback too, so an error no one waits for any more (the handler was
    # cancelled at shutdown) is not logged as "never retrieved"
    answer.add_done_callback(lambda f: f.cancelled() or f.exception())
    watcher = asyncio.ensure_future(_until_disconnect(request))
    try:
        waited: set[asyncio.Future[Any]] = {answer, watcher}
        await asyncio.wait(waited, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if answer.done():
        return list(answer.result())
    for gen in gens:
        gen.cancel()
    answer.cancel()
    return None


async def _prefilled(gen: Generation) -> None:
    """Wait for ``gen``'s first token (its prompt is in the KV cache then), and hand it back."""
    reader = gen.__aiter__()
    try:
        gen.unread(await anext(reader))
    except StopAsyncIteration:
        pass
    finally:
        await reader.aclose()


async def _start_all(start: Callable[[], Awaitable[Generation]], n: int) -> list[Generation]:
    """``n`` generations of one request. The others start once the first has prefilled, so
    the runner copies the prompt's KV from its slot instead of computing it again."""
    first = await start()
    gens = [first]
    try:
        if n > 1:
            await _prefilled(first)
            for _ in range(n - 1):
                gens.append(await start())
    except BaseException:
        for gen in gens:
            gen.cancel()
        raise
    return gens


async def _respond(
    request: Request,
    start: Callable[[], Awaitable[Generation]],
    shape: Shape,
    stream: bool,
    usage: bool,
    n: int = 1,
) -> Response:
    gens = await _start_all(start, n)
    if stream:
        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        return StreamingResponse(
            sse_stream(gens, shape, usage), media_type="text/event-stream", headers=headers
        )
    answers = await _collect(request, gens)
    if answers is None:
        return Response(status_code=499)
    return JSONResponse(shape.body(answers))


def _choices(service: InferenceService, model: str | None, n: int) -> None:
    limit, whose = service.max_choices(model)
    if n > limit:
        raise InvalidRequest(
            f"n is {n}; model {whose} generates at most {limit} choices at once", param="n"
        )


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


def health_row(model: ServedModel) -> dict[str, Any]:
    """A model's line in /health: status and reason; for a runner process, its restarts."""
    row: dict[str, Any] = {"status": model.status(), "reason": model.reason()}
    if model.not_applied is not None:  # ready on its previous settings; the change failed
        row["not_applied"] = model.not_applied
    if model.runner is not None:
        process = model.runner.snapshot().get("runner")
        if process is not None:
            row["restarts"] = process["restarts"]
            row["last_crash"] = process["last_crash"]
    return row


def create_app(
    service: InferenceService,
    *,
    metrics: Metrics | None = None,
    on_shutdown: Callable[[], None] | None = None,
    max_body_bytes: int = 8 << 20,
    admin: Operations | None = None,
    store: StoreFactory | None = None,
) -> FastAPI:
    """The ASGI app over ``service``; ``on_shutdown`` runs after the server stopped accepting.
    ``admin`` adds config reload and model load/unload, and their state in /health and /stats;
    ``store`` gives the Ollama routes model files and ``/api/pull``."""

    def snapshot() -> dict[str, Any]:
        snap = service.snapshot()
        return snap if admin is None else {**snap, **admin.state()}

    metrics = metrics or Metrics()
    metrics.watch(snapshot)
    stopping = asyncio.Event()  # ends the live /stats feeds when the daemon stops
    feeds = StatsFeeds(snapshot, stopping)

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
    app.include_router(ollama_router(service, store))  # the Ollama API, /api/...
    started = time.time()

    @app.exception_handler(EdgeInferError)
    async def _edgeinfer_error(_: Request, exc: EdgeInferError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        # Starlette logs the traceback too; the client gets OpenAI error JSON, not plain text
        return error_response(internal_error(exc))

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
        messages = [m.as_dict() for m in body.messages]
        options = replace(body.options(), identity=identity(request.scope))
        _choices(service, body.model, body.n)
        if body.n > 1:
            options = replace(options, cache="off")  # only single answers are cached
        tools = options.tools.names() if options.tools and options.tools.offered else None
        usage = bool(body.stream_options and body.stream_options.include_usage)
        return await _respond(
            request,
            lambda: service.chat(body.model, messages, options),
            Shape(chat=True, tools=tools),
            body.stream,
            usage,
            body.n,
        )

    add_messages_route(app, service, _collect_one)

    @app.post("/v1/completions", response_model=None)
    async def completions(body: CompletionRequest, request: Request) -> Response:
        options = body.options()
        _choices(service, body.model, body.n)
        usage = bool(body.stream_options and body.stream_options.include_usage)
        return await _respond(
            request,
            lambda: service.complete(body.model, body.prompt, options),
            Shape(chat=False),
            body.stream,
            usage,
            body.n,
        )

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

    add_embeddings_route(app, service)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        models = {m.name: health_row(m) for m in service.pool.models()}
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
        feed = feeds.open(request)  # Busy (503, Retry-After) past the subscriber cap
        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        return StreamingResponse(feed, media_type="text/event-stream", headers=headers)

    @app.get("/metrics")
    async def prometheus() -> Response:
        body = await asyncio.to_thread(metrics.text)
        return Response(body, media_type=METRICS_CONTENT_TYPE)

    return app
