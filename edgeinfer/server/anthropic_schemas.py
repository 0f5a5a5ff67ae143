"""Anthropic's Messages request body, and how it maps onto the chat pipeline's messages.

``server/anthropic.py`` validates requests with :func:`parse_request` and answers in
Anthropic's shapes. Tool use rides on the machinery OpenAI chat already has (prompt.tools):
``tools`` and ``tool_choice`` become a :class:`ToolSpec` (``any`` is ``required``, ``tool``
a function's name), an assistant turn's ``tool_use`` blocks become its ``tool_calls`` and a
user turn's ``tool_result`` blocks ``role: "tool"`` messages, in block order (text between
them a user turn of its own). Only ``text`` blocks besides those two; images, documents and
thinking are refused with a 400 naming the block, server tools likewise.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, ValidationInfo, field_validator, model_validator

from edgeinfer.core.options import GenerateOptions, ToolSpec
from edgeinfer.errors import InvalidRequest
from edgeinfer.server.schemas import EdgeInferOptions, StrictModel, sampling_of

TOOL_NAME = r"^[a-zA-Z0-9_-]{1,64}$"
_BLOCKS_OF = {"user": ("text", "tool_result"), "assistant": ("text", "tool_use")}
_CHOICES = {"auto": "auto", "any": "required", "none": "none"}


def _only(allowed: tuple[str, ...], value: Any) -> Any:
    """A clear 400 for a block type not taken here (before pydantic's union noise)."""
    if not isinstance(value, list):
        return value
    for i, block in enumerate(value):
        kind = block.get("type") if isinstance(block, dict) else None
        if kind in allowed:
            continue
        if kind in ("tool_use", "tool_result") and len(allowed) > 1:  # a turn, not a field
            owner = "assistant" if kind == "tool_use" else "user"
            raise ValueError(f"block {i}: {kind} blocks belong in {owner} turns")
        raise ValueError(
            f"block {i}: content blocks of type {kind!r} are not supported here"
            f" (only {' and '.join(allowed)})"
        )
    return value


class TextBlock(StrictModel):
    type: Literal["text"]
    text: str
    cache_control: dict[str, Any] | None = None  # Anthropic's prompt caching hint: ignored
    citations: list[dict[str, Any]] | None = None


class ToolUseBlock(StrictModel):
    """A call the assistant made earlier in the conversation."""

    type: Literal["tool_use"]
    id: Annotated[str, Field(min_length=1)]
    name: str
    input: dict[str, Any]
    cache_control: dict[str, Any] | None = None

    def as_openai(self) -> dict[str, Any]:
        arguments = json.dumps(self.input, ensure_ascii=False)
        return {
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": arguments},
        }


class ToolResultBlock(StrictModel):
    """What a call returned; ``is_error`` results reach the model prefixed ``Error: ``."""

    type: Literal["tool_result"]
    tool_use_id: Annotated[str, Field(min_length=1)]
    content: str | list[TextBlock] = ""
    is_error: bool = False
    cache_control: dict[str, Any] | None = None

    @field_validator("content", mode="before")
    @classmethod
    def _text_only(cls, value: Any) -> Any:
        return _only(("text",), value)

    def text(self) -> str:
        text = _joined(self.content)
        return f"Error: {text}" if self.is_error else text


Block = Annotated[TextBlock | ToolUseBlock | ToolResultBlock, Field(discriminator="type")]


def _joined(content: str | list[TextBlock]) -> str:
    return content if isinstance(content, str) else "".join(b.text for b in content)


class Message(StrictModel):
    role: Literal["user", "assistant"]
    content: str | list[Block]

    @field_validator("content", mode="before")
    @classmethod
    def _blocks(cls, value: Any, info: ValidationInfo) -> Any:
        return _only(_BLOCKS_OF.get(str(info.data.get("role")), ("text",)), value)


class Tool(StrictModel):
    """A client tool: the model may ask for it; the caller runs it."""

    type: Literal["custom"] | None = None  # checked first: a server tool gets its own message
    name: Annotated[str, Field(pattern=TOOL_NAME)]
    description: str | None = None
    input_schema: dict[str, Any]
    cache_control: dict[str, Any] | None = None

    @field_validator("type", mode="before")
    @classmethod
    def _client_tool(cls, value: Any) -> Any:
        if value not in (None, "custom"):
            raise ValueError(
                f"{value!r} is a server tool, which edgeinfer does not run"
                " (only client tools: name, description, input_schema)"
            )
        return value

    @field_validator("input_schema")
    @classmethod
    def _object_schema(cls, value: dict[str, Any]) -> dict[str, Any]:
        if value.get("type") != "object":
            got = json.dumps(value.get("type"))
            raise ValueError(f'must be a JSON schema with "type": "object" (got {got})')
        props = value.get("properties")
        if props is not None and not (
            isinstance(props, dict) and all(isinstance(p, dict) for p in props.values())
        ):
            raise ValueError("properties must map each property name to its JSON schema")
        required = value.get("required")
        if required is not None and not (
            isinstance(required, list) and all(isinstance(r, str) for r in required)
        ):
            raise ValueError("required must be a list of property names")
        return value

    def function(self) -> dict[str, Any]:
        """The tool as prompt.tools takes it: OpenAI's function object."""
        out: dict[str, Any] = {"name": self.name}
        if self.description is not None:
            out["description"] = self.description
        out["parameters"] = self.input_schema
        return out


class ToolChoice(StrictModel):
    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None
    disable_parallel_tool_use: bool | None = None

    @model_validator(mode="after")
    def _shape(self) -> ToolChoice:
        if (self.type == "tool") != (self.name is not None):
            raise ValueError('name belongs on (and is required by) type "tool"')
        if self.type == "none" and self.disable_parallel_tool_use is not None:
            raise ValueError('disable_parallel_tool_use does not apply to type "none"')
        return self


class Metadata(StrictModel):
    user_id: str | None = None


class MessagesRequest(StrictModel):
    model: str
    max_tokens: Annotated[int, Field(ge=1, le=1 << 20)]
    messages: Annotated[list[Message], Field(min_length=1)]
    system: str | list[TextBlock] | None = None
    temperature: Annotated[float, Field(ge=0.0, le=1.0)] | None = None
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] | None = None
    top_k: Annotated[int, Field(ge=0, le=1 << 20)] | None = None  # past it ctypes wraps the int
    stop_sequences: Annotated[list[str], Field(max_length=4)] | None = None
    stream: bool = False
    metadata: Metadata | None = None
    tools: Annotated[list[Tool], Field(max_length=128)] | None = None
    tool_choice: ToolChoice | None = None
    edgeinfer: EdgeInferOptions | None = None  # edgeinfer's own options, as on OpenAI chat

    @field_validator("system", mode="before")
    @classmethod
    def _system_text(cls, value: Any) -> Any:
        return _only(("text",), value)

    def conversation(self) -> list[dict[str, Any]]:
        """The messages as the chat pipeline takes them (OpenAI's roles and tool fields)."""
        if self.messages[-1].role == "assistant":
            raise InvalidRequest(
                "a final assistant turn (prefill) is not supported yet", param="messages"
            )
        convo = chat_messages(self.messages)
        system = self.system
        if isinstance(system, list):
            system = _joined(system)
        return [{"role": "system", "content": system}, *convo] if system else convo

    def tool_spec(self) -> ToolSpec | None:
        """The request's tools, checked against tool_choice (400s name the field)."""
        choice = self.tool_choice
        if not self.tools:
            if choice is not None and choice.type != "none":
                raise InvalidRequest("tool_choice needs tools", param="tool_choice")
            return None
        names = [t.name for t in self.tools]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise InvalidRequest(
                f"tools: tool names must be unique ({', '.join(twice)} given more than once)",
                param="tools",
            )
        kind = choice.type if choice is not None else "auto"
        name = _CHOICES.get(kind) or _named(choice, names)
        parallel = not (choice is not None and choice.disable_parallel_tool_use)
        return ToolSpec(tuple(t.function() for t in self.tools), name, parallel)

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
            **ext.options(),
            tools=self.tool_spec(),
            stream=self.stream,
        )


def _named(choice: ToolChoice | None, names: list[str]) -> str:
    """tool_choice ``{"type": "tool", "name": ...}``: the name, which must be a tool's."""
    assert choice is not None and choice.name is not None
    if choice.name not in names:
        raise InvalidRequest(
            f"tool_choice.name: {choice.name!r} is not in tools ({', '.join(names)})",
            param="tool_choice.name",
        )
    if choice.name in _CHOICES.values():  # ToolSpec.choice reads these words as modes
        raise InvalidRequest(
            f"tool_choice.name: a tool named {choice.name!r} cannot be forced by name",
            param="tool_choice.name",
        )
    return choice.name


def chat_messages(messages: list[Message]) -> list[dict[str, Any]]:
    """Anthropic's turns as OpenAI-style messages (module docstring). A ``tool_result`` must
    answer a ``tool_use`` of the turn just before it, as Anthropic requires."""
    out: list[dict[str, Any]] = []
    called: set[str] = set()  # ids of the previous assistant turn's tool_use blocks
    for i, m in enumerate(messages):
        if isinstance(m.content, str):
            out.append({"role": m.role, "content": m.content})
        elif m.role == "assistant":
            out.append(_assistant(m.content))
        else:
            out += _user(m.content, called, i)
        calls = out[-1].get("tool_calls") if m.role == "assistant" else None
        called = {c["id"] for c in calls or ()}
    return out


def _assistant(blocks: list[Block]) -> dict[str, Any]:
    text = "".join(b.text for b in blocks if isinstance(b, TextBlock))
    turn: dict[str, Any] = {"role": "assistant", "content": text}
    calls = [b.as_openai() for b in blocks if isinstance(b, ToolUseBlock)]
    if calls:  # only then: the cache keys of plain chats stay what they were
        turn["tool_calls"] = calls
    return turn


def _user(blocks: list[Block], called: set[str], index: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    text: list[str] | None = None  # the text blocks since the last tool_result
    for j, block in enumerate(blocks):
        if isinstance(block, TextBlock):
            text = [*(text or []), block.text]
            continue
        assert isinstance(block, ToolResultBlock)
        if block.tool_use_id not in called:
            where = f"messages.{index}.content.{j}.tool_use_id"
            raise InvalidRequest(
                f"{where}: {block.tool_use_id!r} answers no tool_use block of the previous"
                " (assistant) message",
                param=where,
            )
        if text is not None:
            out.append({"role": "user", "content": "".join(text)})
            text = None
        out.append({"role": "tool", "tool_call_id": block.tool_use_id, "content": block.text()})
    if text is not None or not out:
        out.append({"role": "user", "content": "".join(text or [])})
    return out


def parse_request(body: bytes) -> MessagesRequest:
    """The request, or an :class:`InvalidRequest` whose message names the field at fault."""
    try:
        return MessagesRequest.model_validate_json(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        if first.get("type") == "json_invalid":  # the parser says where ("lone surrogate ...")
            detail = str(first.get("msg", "")).removeprefix("Invalid JSON: ")
            raise InvalidRequest(f"the request body is not valid JSON: {detail}") from None
        raise _validation_error(exc) from None


def _validation_error(exc: ValidationError) -> InvalidRequest:
    errors = exc.errors()
    # a list given where str | list is taken: the list branch's error says what is wrong
    err = next((e for e in errors if "str" not in e.get("loc", ())), errors[0])
    loc_in = [str(p) for p in err.get("loc", ())]
    parts: list[str] = []
    for k, p in enumerate(loc_in):
        # a block's type tag sits between its index and its field (a last part is a field)
        tag = p in _TAGS and k + 1 < len(loc_in) and bool(parts) and parts[-1].isdigit()
        if p == "str" or p.startswith("list[") or tag:
            continue  # union branches and block tags, not fields
        parts.append(p)
    loc = ".".join(parts)
    msg = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
    if err.get("type") == "extra_forbidden":
        msg = "unknown or unsupported field"
    elif err.get("type") == "missing":
        msg = "required field is missing"
    elif err.get("type") == "string_pattern_mismatch":
        msg = f"must match {TOOL_NAME}" if parts[-1:] == ["name"] else msg
    text = f"{loc}: {msg}" if loc else msg
    return InvalidRequest(text.encode("utf-8", "backslashreplace").decode(), param=loc or None)


_TAGS = frozenset({"text", "tool_use", "tool_result"})
