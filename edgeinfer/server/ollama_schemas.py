"""The Ollama API's requests and errors, mapped onto edgeinfer's options.

Field names and defaults are Ollama's (``options.num_predict``, ``format``, ``keep_alive``;
temperature 0.8, top_k 40, top_p 0.9, repeat_penalty 1.1 over the last 64 tokens). As on the
OpenAI routes, a field edgeinfer cannot honour is refused with a 400 naming it, never ignored,
with one exception: the load-time options (``num_ctx``, ``num_gpu``, ``num_thread``, ...) are
accepted and left to the model's entry in models.toml, which the daemon loaded it with.

Errors are Ollama's ``{"error": "..."}`` with edgeinfer's HTTP status: :class:`OllamaRoute`
catches them for every ``/api`` route, validation failures included.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Coroutine
from typing import Annotated, Any, Literal

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import Field, field_validator

from edgeinfer.core.options import GenerateOptions
from edgeinfer.core.values import Sampling
from edgeinfer.errors import Busy, EdgeInferError, InvalidRequest
from edgeinfer.server.schemas import StrictModel

log = logging.getLogger("edgeinfer.server")

PENALTY_WINDOW = 64
"""The engine's fixed repeat-penalty window (Ollama's ``repeat_last_n`` default)."""


def ollama_error(exc: EdgeInferError) -> JSONResponse:
    headers = {"Retry-After": str(max(1, round(exc.retry_after)))} if isinstance(exc, Busy) else {}
    return JSONResponse({"error": exc.message}, status_code=exc.status, headers=headers)


_TYPE_TAGS = {"str", "int", "float", "bool", "list", "dict", "none"}


def _is_type_tag(step: str) -> bool:
    """Union members add their type as a location step (``format.dict[str,any]``)."""
    return step in _TYPE_TAGS or "[" in step or step.startswith(("function-", "constrained-"))


def _validation_text(exc: RequestValidationError) -> str:
    err = exc.errors()[0]
    if err.get("type") == "json_invalid":
        return "the request body is not valid JSON"
    steps = [str(p) for p in err.get("loc", ()) if p != "body"]
    field = ".".join(s for s in steps if not _is_type_tag(s))
    msg = str(err.get("msg", "invalid value"))
    if err.get("type") == "extra_forbidden":
        msg = "unknown or unsupported field"
    elif err.get("type") == "missing":
        msg = "required field is missing"
    text = f"{field}: {msg}" if field else msg
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


class OllamaRoute(APIRoute):
    """A route whose errors leave as Ollama's ``{"error": "..."}``, with the right status."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            # Ollama reads every body as JSON: its own examples post with `curl -d`, which
            # labels the body application/x-www-form-urlencoded.
            headers = [(k, v) for k, v in request.scope["headers"] if k != b"content-type"]
            scope = {**request.scope, "headers": [*headers, (b"content-type", b"application/json")]}
            try:
                return await handler(Request(scope, request.receive))
            except RequestValidationError as exc:
                return ollama_error(InvalidRequest(_validation_text(exc)))
            except EdgeInferError as exc:
                return ollama_error(exc)
            except Exception:  # a bug: Ollama's shape too, with the traceback in the log
                log.exception("an Ollama API request failed")
                message = "internal error; the daemon's log has the details"
                return ollama_error(EdgeInferError(message))

        return route


def model_name(name: str) -> str:
    """Ollama's ``NAME:latest`` is edgeinfer's ``NAME``; an empty name is refused."""
    name = name.strip()
    if not name:
        raise InvalidRequest("model is required", param="model")
    return name.removesuffix(":latest")


KeepAlive = str | int | float | None


class Options(StrictModel):
    """Ollama's ``options``: sampling applied per request, load-time settings accepted."""

    temperature: Annotated[float, Field(ge=0.0, le=2.0)] = 0.8
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] = 0.9
    top_k: Annotated[int, Field(ge=0, le=1 << 20)] = 40  # past it ctypes wraps the int
    min_p: Annotated[float, Field(ge=0.0, le=1.0)] = 0.0
    num_predict: Annotated[int, Field(ge=-2, le=1 << 20)] | None = None
    stop: Annotated[list[str], Field(max_length=4)] | None = None
    seed: int | None = None
    repeat_penalty: Annotated[float, Field(gt=0.0, le=10.0)] = 1.1
    presence_penalty: Annotated[float, Field(ge=-2.0, le=2.0)] = 0.0
    frequency_penalty: Annotated[float, Field(ge=-2.0, le=2.0)] = 0.0
    repeat_last_n: int = PENALTY_WINDOW
    # load-time settings: the daemon loaded the model with its models.toml entry
    num_ctx: int | None = None
    num_batch: int | None = None
    num_gpu: int | None = None
    main_gpu: int | None = None
    num_thread: int | None = None
    num_keep: int | None = None
    numa: bool | None = None
    low_vram: bool | None = None
    f16_kv: bool | None = None
    vocab_only: bool | None = None
    use_mmap: bool | None = None
    use_mlock: bool | None = None

    @field_validator("repeat_last_n", mode="before")
    @classmethod
    def _window(cls, value: Any) -> Any:
        if value != PENALTY_WINDOW:
            raise ValueError(f"edgeinfer penalises repeats over the last {PENALTY_WINDOW} tokens")
        return value


Format = Literal["", "json"] | dict[str, Any] | None


class _Generating(StrictModel):
    model: str
    format: Format = None
    options: Options | None = None
    stream: bool = True
    keep_alive: KeepAlive = None
    think: Literal[False] | None = None
    logprobs: Literal[False] | None = None

    def generate_options(self, identity: str) -> GenerateOptions:
        opts = self.options or Options()
        max_tokens = opts.num_predict if opts.num_predict and opts.num_predict > 0 else None
        kind, schema = None, None
        if self.format == "json":
            kind = "json_object"
        elif isinstance(self.format, dict):
            kind, schema = "json_schema", json.dumps(self.format)
        seed = opts.seed if opts.seed is not None and opts.seed >= 0 else None
        return GenerateOptions(
            max_tokens=max_tokens,
            stop=tuple(opts.stop or ()),
            response_format=kind,
            json_schema=schema,
            identity=identity,
            stream=self.stream,
            sampling=Sampling(
                temperature=opts.temperature,
                top_p=opts.top_p,
                top_k=opts.top_k,
                min_p=opts.min_p,
                seed=seed,
                repeat_penalty=opts.repeat_penalty,
                presence_penalty=opts.presence_penalty,
                frequency_penalty=opts.frequency_penalty,
            ),
        )


class ChatMessage(StrictModel):
    role: Literal["system", "user", "assistant"]
    content: str = ""


class ChatRequest(_Generating):
    messages: list[ChatMessage] = Field(default_factory=list)
    tools: Annotated[list[Any], Field(max_length=0)] | None = None


class GenerateRequest(_Generating):
    prompt: str = ""
    system: str | None = None
    raw: bool = False
    context: Annotated[list[int], Field(max_length=0)] | None = None
    images: Annotated[list[str], Field(max_length=0)] | None = None

    def messages(self) -> list[dict[str, str]]:
        system = [{"role": "system", "content": self.system}] if self.system else []
        return [*system, {"role": "user", "content": self.prompt}]


class EmbedRequest(StrictModel):
    model: str
    input: str | Annotated[list[str], Field(min_length=1, max_length=2048)]
    truncate: Literal[True] | None = None
    dimensions: Annotated[int, Field(ge=1)] | None = None
    options: Options | None = None
    keep_alive: KeepAlive = None

    def texts(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else list(self.input)


class EmbeddingsRequest(StrictModel):
    model: str
    prompt: str
    options: Options | None = None
    keep_alive: KeepAlive = None


class ModelRequest(StrictModel):
    """``model``, or ``name`` as older Ollama clients send it."""

    model: str = ""
    name: str = ""
    verbose: bool | None = None

    def target(self) -> str:
        return model_name(self.model or self.name)


class PullRequest(ModelRequest):
    insecure: Literal[False] | None = None
    stream: bool = True
