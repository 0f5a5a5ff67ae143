"""OpenAI-compatible request schemas.

Strict: a wrong type is a 400 naming the field (no silent "5" → 5 coercion), and a field
edgeinfer does not implement is refused rather than ignored, so a caller never believes a
setting took effect when it did not.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from edgeinfer.engine.base import Sampling
from edgeinfer.service import GenerateOptions

_MAX_TOKENS_LIMIT = 1 << 20


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class Message(_Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]
    name: str | None = None

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class StreamOptions(_Strict):
    include_usage: bool = False


class EdgeInferOptions(_Strict):
    """edgeinfer's own per-request options (the openai SDK sends them through ``extra_body``)."""


Stop = str | Annotated[list[str], Field(max_length=4)] | None


class _Sampling(_Strict):
    model: str | None = None
    max_tokens: Annotated[int, Field(ge=1, le=_MAX_TOKENS_LIMIT)] | None = None
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] = 1.0
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] = 1.0
    top_k: Annotated[int, Field(ge=0)] = 0
    min_p: Annotated[float, Field(ge=0.0, le=1.0)] = 0.0
    presence_penalty: Annotated[float, Field(ge=-2.0, le=2.0)] = 0.0
    frequency_penalty: Annotated[float, Field(ge=-2.0, le=2.0)] = 0.0
    repeat_penalty: Annotated[float, Field(gt=0.0, le=10.0)] = 1.0
    logit_bias: dict[str, Annotated[float, Field(ge=-100.0, le=100.0)]] | None = None
    seed: int | None = None
    stop: Stop = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: Annotated[int, Field(ge=1, le=1)] = 1
    user: str | None = None
    edgeinfer: EdgeInferOptions | None = None

    @field_validator("logit_bias")
    @classmethod
    def _token_ids(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        for key in value or {}:
            if not key.lstrip("-").isdigit():
                raise ValueError(f"keys must be token ids, got {key!r}")
        return value

    def options(self) -> GenerateOptions:
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())
        return GenerateOptions(
            max_tokens=self.max_tokens,
            stop=stop,
            sampling=Sampling(
                temperature=self.temperature,
                top_p=self.top_p,
                top_k=self.top_k,
                min_p=self.min_p,
                seed=self.seed,
                repeat_penalty=self.repeat_penalty,
                presence_penalty=self.presence_penalty,
                frequency_penalty=self.frequency_penalty,
                logit_bias={int(k): v for k, v in (self.logit_bias or {}).items()},
            ),
        )


class ChatCompletionRequest(_Sampling):
    messages: Annotated[list[Message], Field(min_length=1)]
    max_completion_tokens: Annotated[int, Field(ge=1, le=_MAX_TOKENS_LIMIT)] | None = None

    def options(self) -> GenerateOptions:
        opts = super().options()
        if self.max_completion_tokens is not None and self.max_tokens is None:
            return GenerateOptions(self.max_completion_tokens, opts.sampling, opts.stop)
        return opts


class CompletionRequest(_Sampling):
    prompt: str
    echo: Literal[False] = False
    suffix: None = None
