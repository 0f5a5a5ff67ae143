"""OpenAI-compatible request schemas.

Strict: a wrong type is a 400 naming the field (no silent "5" → 5 coercion), and a field
edgeinfer does not implement is refused rather than ignored, so a caller never believes a
setting took effect when it did not.

Every string is checked for lone surrogates: JSON's ``"\\ud800"`` escape decodes to a Python
string that cannot be encoded as UTF-8, so it would pass here and fail deep inside (tokenizer,
cache key, log line) as a 500.
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from edgeinfer.core.options import GenerateOptions, ToolSpec
from edgeinfer.core.values import Sampling
from edgeinfer.errors import InvalidRequest
from edgeinfer.service.sampling import DEFAULTABLE

_MAX_TOKENS_LIMIT = 1 << 20
_SURROGATE = re.compile(r"[\ud800-\udfff]")
_TOKEN_ID = re.compile("[0-9]{1,10}")  # ASCII digits only: str.isdigit() also takes "²"
MAX_TOKEN_ID = (1 << 31) - 1
"""llama.cpp's token ids are int32; the model's own vocabulary size is checked by the service."""


def _unicode_text(value: Any) -> Any:
    """``value`` unchanged; ValueError if a string in it (dict keys too) holds a lone surrogate.

    Iterative, so a deeply nested JSON schema cannot exhaust the stack.
    """
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            if _SURROGATE.search(item):
                raise ValueError("holds a lone surrogate (\\ud800-\\udfff), which is not text")
        elif isinstance(item, dict):
            pending += item.keys()
            pending += item.values()
        elif isinstance(item, list | tuple):
            pending += item
    return value


class StrictModel(BaseModel):
    """Request bodies: unknown fields refused, no coercion, no lone surrogates anywhere (the
    OpenAI, Anthropic and Ollama routes share it)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    @field_validator("*")
    @classmethod
    def _no_surrogates(cls, value: Any) -> Any:
        return _unicode_text(value)


class TextPart(StrictModel):
    type: Literal["text"]
    text: str


class FunctionCall(StrictModel):
    name: str
    arguments: str


class ToolCallIn(StrictModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class Message(StrictModel):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    name: str | None = None
    tool_calls: Annotated[list[ToolCallIn], Field(min_length=1)] | None = None
    tool_call_id: str | None = None
    # after role and tool_calls, which its check reads; checked when absent too
    content: str | list[TextPart] | None = Field(default=None, validate_default=True)

    @field_validator("content")
    @classmethod
    def _content_given(cls, value: Any, info: ValidationInfo) -> Any:
        if value is None and not (
            info.data.get("role") == "assistant" and info.data.get("tool_calls")
        ):
            raise ValueError("required (only an assistant turn with tool_calls may omit it)")
        return value

    @model_validator(mode="after")
    def _shape(self) -> Message:
        if self.tool_calls is not None and self.role != "assistant":
            raise ValueError("only assistant messages carry tool_calls")
        if (self.role == "tool") != (self.tool_call_id is not None):
            raise ValueError("tool_call_id belongs on (and is required by) role tool messages")
        return self

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)

    def as_dict(self) -> dict[str, Any]:
        """The message as the service sees it: tool fields only when present (cache keys of
        plain chats stay what they were)."""
        out: dict[str, Any] = {"role": self.role, "content": self.text()}
        if self.tool_calls:
            out["tool_calls"] = [c.model_dump() for c in self.tool_calls]
        if self.tool_call_id is not None:
            out["tool_call_id"] = self.tool_call_id
        return out


class FunctionDef(StrictModel):
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ToolDef(StrictModel):
    type: Literal["function"]
    function: FunctionDef


class NamedFunction(StrictModel):
    name: str


class NamedToolChoice(StrictModel):
    type: Literal["function"]
    function: NamedFunction


class StreamOptions(StrictModel):
    include_usage: bool = False


class EdgeInferOptions(StrictModel):
    """edgeinfer's own per-request options (the openai SDK sends them through ``extra_body``)."""

    timeout: Annotated[float, Field(gt=0, le=86_400)] | None = None
    cache: Literal["off", "exact", "semantic"] | None = None
    cache_threshold: Annotated[float, Field(gt=0.0, le=1.0)] | None = None
    # router (model "auto")
    route: Literal["cheapest", "cascade", "best"] | None = None
    min_quality: Annotated[float, Field(ge=0.0, le=1.0)] | None = None
    max_cost: Annotated[float, Field(ge=0.0)] | None = None
    request_type: (
        Literal[
            "classification",
            "extraction",
            "summarization",
            "question_answer",
            "generation",
            "code",
        ]
        | None
    ) = None
    continue_on_length: bool = False
    # prompt layer
    compress: bool | None = None
    context_budget: Annotated[int, Field(ge=64, le=1 << 20)] | None = None

    def options(self) -> dict[str, Any]:
        """These options as :class:`GenerateOptions` keyword arguments (the same names)."""
        return self.model_dump()


class JsonSchemaFormat(StrictModel):
    name: str = "response"
    description: str | None = None
    schema_: dict[str, Any] = Field(default_factory=dict, alias="schema")
    strict: bool | None = None

    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=True)


class ResponseFormat(StrictModel):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("json_schema is required for type json_schema")
        return self


Stop = str | Annotated[list[str], Field(max_length=4)] | None


class _Sampling(StrictModel):
    model: str | None = None
    max_tokens: Annotated[int, Field(ge=1, le=_MAX_TOKENS_LIMIT)] | None = None
    # None (left out): the model's default ([models.NAME.sampling], its GGUF, then neutral)
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] | None = None
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] | None = None
    top_k: Annotated[int, Field(ge=0, le=1 << 20)] | None = None  # past it ctypes wraps the int
    min_p: Annotated[float, Field(ge=0.0, le=1.0)] | None = None
    presence_penalty: Annotated[float, Field(ge=-2.0, le=2.0)] | None = None
    frequency_penalty: Annotated[float, Field(ge=-2.0, le=2.0)] | None = None
    repeat_penalty: Annotated[float, Field(gt=0.0, le=10.0)] | None = None
    logit_bias: dict[str, Annotated[float, Field(ge=-100.0, le=100.0)]] | None = None
    seed: int | None = None
    stop: Stop = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: Annotated[int, Field(ge=1, le=64)] = 1
    user: str | None = None
    response_format: ResponseFormat | None = None
    edgeinfer: EdgeInferOptions | None = None

    @field_validator("logit_bias")
    @classmethod
    def _token_ids(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        for key in value or {}:
            if not _TOKEN_ID.fullmatch(key) or int(key) > MAX_TOKEN_ID:
                shown = key if len(key) <= 20 else f"{key[:20]}..."
                raise ValueError(f"keys must be token ids 0..{MAX_TOKEN_ID}, got {shown!r}")
        return value

    def options(self) -> GenerateOptions:
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())
        fmt = self.response_format
        kind = fmt.type if fmt is not None and fmt.type != "text" else None
        schema = None
        if fmt is not None and fmt.json_schema is not None:
            schema = json.dumps(fmt.json_schema.schema_)
        ext = self.edgeinfer or EdgeInferOptions()
        bias = {int(k): v for k, v in (self.logit_bias or {}).items()}
        return GenerateOptions(
            max_tokens=self.max_tokens,
            stop=stop,
            response_format=kind,
            json_schema=schema,
            **ext.options(),
            sampling=sampling_of(self.model_dump(include=set(DEFAULTABLE)), self.seed, bias),
            default_sampling=frozenset(n for n in DEFAULTABLE if getattr(self, n) is None),
            stream=self.stream,
        )


def sampling_of(
    fields: dict[str, Any], seed: int | None = None, logit_bias: dict[int, float] | None = None
) -> Sampling:
    """A request's :class:`Sampling`: the fields it gave; those left out (None) keep Sampling's
    neutral values until the serving model's defaults replace them."""
    given = {k: v for k, v in fields.items() if v is not None}
    return Sampling(**given, seed=seed, logit_bias=logit_bias or {})


class ChatCompletionRequest(_Sampling):
    messages: Annotated[list[Message], Field(min_length=1)]
    max_completion_tokens: Annotated[int, Field(ge=1, le=_MAX_TOKENS_LIMIT)] | None = None
    logprobs: bool = False
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    tools: Annotated[list[ToolDef], Field(max_length=128)] | None = None
    tool_choice: Literal["auto", "none", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None

    @model_validator(mode="after")
    def _consistent(self) -> ChatCompletionRequest:
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs: true")
        return self

    def tool_spec(self) -> ToolSpec | None:
        """The request's tools, checked against tool_choice (400s name the field)."""
        if self.tool_choice is not None and not self.tools:
            raise InvalidRequest("tool_choice needs tools", param="tool_choice")
        if not self.tools:
            return None
        defs = tuple(t.function.model_dump(exclude_none=True) for t in self.tools)
        names = [str(d["name"]) for d in defs]
        if len(set(names)) != len(names):
            raise InvalidRequest("tools: function names must be unique", param="tools")
        given = self.tool_choice or "auto"
        choice: str = given if isinstance(given, str) else given.function.name
        if isinstance(given, NamedToolChoice) and choice not in names:
            raise InvalidRequest(
                f"tool_choice names function {choice!r}, which is not in tools",
                param="tool_choice",
            )
        spec = ToolSpec(defs, choice, self.parallel_tool_calls is not False)
        if spec.forced and self.response_format is not None and self.response_format.type != "text":
            raise InvalidRequest(
                "a forced tool_choice and response_format cannot be combined (both are grammars)",
                param="tool_choice",
            )
        return spec

    def options(self) -> GenerateOptions:
        opts = super().options()
        max_tokens = self.max_tokens if self.max_tokens is not None else self.max_completion_tokens
        logprobs = (self.top_logprobs or 0) if self.logprobs else None
        return replace(opts, max_tokens=max_tokens, logprobs=logprobs, tools=self.tool_spec())


class CompletionRequest(_Sampling):
    prompt: str
    echo: Literal[False] = False
    suffix: None = None
