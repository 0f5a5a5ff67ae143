"""The Ollama API (``/api/...``) on the daemon's socket, beside the OpenAI routes.

Chat and generate go through the same pipeline as ``/v1/chat/completions`` (the response
cache, ``model: "auto"`` routing, the prompt layer, stats); a raw generate goes where
``/v1/completions`` goes. Streams are NDJSON, one object a line, as Ollama sends them, and
end with ``done: true`` and the timings in nanoseconds; an error after the first line is an
``{"error": ...}`` line. Embeddings come from the embedder behind ``/v1/embeddings``. The
model routes (tags, show, ps, pull) live in :mod:`edgeinfer.server.ollama_models`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable
from datetime import UTC, datetime
from typing import Any

import numpy as np
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse

from edgeinfer import __version__
from edgeinfer.core.embedding import Embedder
from edgeinfer.core.generation import Generation
from edgeinfer.errors import (
    EdgeInferError,
    InvalidRequest,
    ModelNotFound,
    ModelUnavailable,
)
from edgeinfer.server.auth import identity
from edgeinfer.server.ollama_models import StoreFactory, add_model_routes, tagged
from edgeinfer.server.ollama_schemas import (
    ChatRequest,
    EmbeddingsRequest,
    EmbedRequest,
    GenerateRequest,
    KeepAlive,
    OllamaRoute,
    model_name,
)
from edgeinfer.server.openai_shapes import edgeinfer_of, internal_error
from edgeinfer.service.pipeline import InferenceService

log = logging.getLogger("edgeinfer.server")

NDJSON = "application/x-ndjson"


def now_iso() -> str:
    """Ollama's ``created_at``: RFC 3339 in UTC."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def ndjson(obj: dict[str, Any]) -> bytes:
    return (json.dumps(obj, ensure_ascii=False, separators=(",", ":")) + "\n").encode()


def _ns(seconds: float) -> int:
    return max(0, round(seconds * 1e9))


class Reply:
    """The lines of one chat (``message``) or generate (``response``) answer."""

    def __init__(self, chat: bool) -> None:
        self.chat = chat
        self.started = time.monotonic()
        self.ready = self.started  # when the service handed over the generation

    def part(self, model: str, text: str) -> dict[str, Any]:
        body: dict[str, Any] = {"model": tagged(model), "created_at": now_iso()}
        if self.chat:
            body["message"] = {"role": "assistant", "content": text}
        else:
            body["response"] = text
        return {**body, "done": False}

    def final(self, gen: Generation, text: str) -> dict[str, Any]:
        """The last line: ``done``, why, token counts and durations (ns). ``load_duration`` is
        the time before the model's runner had the request (a model loading, the cache lookup,
        tokenizing); prompt evaluation runs until the first token, evaluation after it."""
        assert gen.result is not None
        usage = gen.result.usage
        return {
            **self.part(gen.model, text),
            "done": True,
            "done_reason": gen.result.reason,
            "total_duration": _ns(time.monotonic() - self.started),
            "load_duration": _ns(self.ready - self.started),
            "prompt_eval_count": usage.prompt_tokens,
            "prompt_eval_duration": _ns(usage.ttft_s),
            "eval_count": usage.completion_tokens,
            "eval_duration": _ns(usage.total_s - usage.ttft_s),
            "edgeinfer": edgeinfer_of(gen),
        }


async def _lines(gen: Generation, reply: Reply) -> AsyncIterator[bytes]:
    try:
        async for delta in gen:
            if delta.text:
                yield ndjson(reply.part(gen.model, delta.text))
        yield ndjson(reply.final(gen, ""))
    except EdgeInferError as exc:  # the status line is gone: the error goes in-band
        yield ndjson({"error": exc.message})
    except Exception as exc:
        log.exception("streaming an Ollama response failed")
        yield ndjson({"error": internal_error(exc).message})
    finally:
        gen.cancel()  # no-op when finished; frees the slot when the client hung up


async def _until_disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _respond(
    request: Request, start: Awaitable[Generation], reply: Reply, stream: bool
) -> Response:
    gen = await start
    reply.ready = time.monotonic()
    if stream:
        return StreamingResponse(_lines(gen, reply), media_type=NDJSON)
    answer = asyncio.ensure_future(gen.text())
    watcher = asyncio.ensure_future(_until_disconnect(request))
    try:
        await asyncio.wait({answer, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if not answer.done():  # the client hung up: free its slot
        gen.cancel()
        answer.cancel()
        return Response(status_code=499)
    return JSONResponse(reply.final(gen, answer.result()))


def _unloads(keep_alive: KeepAlive) -> bool:
    """Whether ``keep_alive`` is zero: ``0``, ``"0"``, ``"0s"``, ``"0m"``..."""
    if isinstance(keep_alive, str):
        number = keep_alive.strip().rstrip("nsuµmh")
        try:
            return bool(number) and float(number) == 0
        except ValueError:
            return False
    return keep_alive == 0 and keep_alive is not None


def ollama_router(service: InferenceService, store: StoreFactory | None = None) -> APIRouter:
    """Every ``/api`` route; ``store`` (the model store as the config in force has it) serves
    file sizes, digests, GGUF metadata and ``/api/pull``."""
    router = APIRouter(route_class=OllamaRoute)

    async def load_or_unload(name: str, keep_alive: KeepAlive, reply: Reply) -> Response:
        """An empty prompt loads the model, and with ``keep_alive: 0`` unloads it (Ollama)."""
        if service.router.wants(name) or name in service.remotes:
            reason = "load"  # nothing of ours to load: a tier is picked, or remote, per request
        elif _unloads(keep_alive):
            why = "unloaded by request (keep_alive 0)"
            await asyncio.to_thread(service.pool.unload, name, why)
            reason = "unload"
        else:
            await service.pool.acquire(name)  # waits for an on-demand load
            reason = "load"
        body = {**reply.part(name, ""), "done": True, "done_reason": reason}
        return JSONResponse(body)

    @router.post("/api/chat", response_model=None)
    async def chat(body: ChatRequest, request: Request) -> Response:
        reply = Reply(chat=True)
        name = model_name(body.model)
        options = body.generate_options(identity(request.scope))
        if not body.messages:
            return await load_or_unload(name, body.keep_alive, reply)
        messages = [{"role": m.role, "content": m.content} for m in body.messages]
        return await _respond(request, service.chat(name, messages, options), reply, body.stream)

    @router.post("/api/generate", response_model=None)
    async def generate(body: GenerateRequest, request: Request) -> Response:
        reply = Reply(chat=False)
        name = model_name(body.model)
        options = body.generate_options(identity(request.scope))
        if not body.prompt:
            if body.system:
                raise InvalidRequest("prompt is required with a system prompt", param="prompt")
            return await load_or_unload(name, body.keep_alive, reply)
        if body.raw:
            if body.system:
                raise InvalidRequest("system does not apply to a raw prompt", param="system")
            start = service.complete(name, body.prompt, options)
        else:
            start = service.chat(name, body.messages(), options)
        return await _respond(request, start, reply, body.stream)

    def embedder(model: str) -> Embedder:
        """The daemon's one embedder, asked for by its name or Ollama's (``all-minilm``)."""
        found = service.embedder
        if found is None:
            raise ModelUnavailable("the embedding model is not loaded (see the daemon's log)")
        name = model_name(model).lower()
        if name.startswith("all-minilm") or name == found.name.lower():
            return found
        if name in {m.name for m in service.pool.models()}:
            raise InvalidRequest(
                f"model {name!r} does not embed here; edgeinfer embeds with {found.name}"
                " (model all-minilm)",
                param="model",
            )
        raise ModelNotFound(
            f"embedding model {model!r} not found; edgeinfer embeds with {found.name}"
            " (model all-minilm)",
            param="model",
        )

    async def vectors(model: Embedder, texts: list[str]) -> tuple[np.ndarray[Any, Any], int]:
        rows = await asyncio.to_thread(model.embed, texts)
        tokens = sum(await asyncio.to_thread(model.token_counts, texts))
        return rows, tokens

    @router.post("/api/embed")
    async def embed(body: EmbedRequest) -> dict[str, Any]:
        started = time.monotonic()
        model = embedder(body.model)
        rows, tokens = await vectors(model, body.texts())
        if body.dimensions is not None:
            if body.dimensions > rows.shape[1]:
                raise InvalidRequest(
                    f"dimensions is {body.dimensions}; {model.name} has {rows.shape[1]}",
                    param="dimensions",
                )
            rows = rows[:, : body.dimensions]  # truncated, then back to unit length
            rows = rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)
        return {
            "model": tagged(model.name),
            "embeddings": [[float(x) for x in row] for row in rows],
            "total_duration": _ns(time.monotonic() - started),
            "load_duration": 0,
            "prompt_eval_count": tokens,
        }

    @router.post("/api/embeddings")
    async def embeddings(body: EmbeddingsRequest) -> dict[str, Any]:
        """The older single-text route."""
        rows, _ = await vectors(embedder(body.model), [body.prompt])
        return {"embedding": [float(x) for x in rows[0]]}

    @router.get("/api/version")
    async def version() -> dict[str, Any]:
        return {"version": __version__}

    add_model_routes(router, service, store)

    @router.api_route(
        "/api/{rest:path}",
        methods=["GET", "POST", "PUT", "DELETE", "HEAD"],
        include_in_schema=False,
    )
    async def unsupported(rest: str, request: Request) -> JSONResponse:
        """Ollama routes edgeinfer does not implement (create, copy, delete, push, blobs)."""
        error = f"{request.method} /api/{rest} is not part of edgeinfer's Ollama API"
        return JSONResponse({"error": error}, status_code=404)

    return router
