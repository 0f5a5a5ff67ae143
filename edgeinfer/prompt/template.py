"""Render a chat into a prompt with the model's own template from its GGUF metadata.

Rendered the way Hugging Face transformers (and llama-cpp-python's ``Jinja2ChatFormatter``) do:
a sandboxed Jinja2 environment with ``trim_blocks``/``lstrip_blocks``, ``tojson`` without ASCII
escaping, ``raise_exception`` and ``strftime_now``. A model without a template gets ChatML.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Mapping, Sequence
from datetime import datetime
from functools import lru_cache
from typing import Any

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment

from edgeinfer.errors import InvalidRequest

CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content']"
    " + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None, **kw: Any) -> str:
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, **kw)


def _raise(message: str) -> None:
    raise InvalidRequest(f"the model's chat template refused these messages: {message}")


class _IgnoreGeneration(jinja2.ext.Extension):
    # transformers' {% generation %} marks assistant spans for training masks; render contents.
    tags = {"generation"}

    def parse(self, parser: Any) -> Any:
        parser.stream.skip(1)
        return parser.parse_statements(("name:endgeneration",), drop_needle=True)


@lru_cache(maxsize=16)
def _compile(source: str) -> jinja2.Template:
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=[_IgnoreGeneration, jinja2.ext.loopcontrols],
    )
    env.filters["tojson"] = _tojson
    return env.from_string(source)


def render_chat(
    template: str | None,
    messages: Sequence[Mapping[str, Any]],
    *,
    bos_token: str = "",
    eos_token: str = "",
    tools: Sequence[Mapping[str, Any]] | None = None,
) -> str:
    """The prompt text for ``messages``, ending with the assistant's turn opener; ``tools``
    (OpenAI's tool objects) are passed to the template as transformers passes them."""
    extra = {"tools": list(tools)} if tools else {}
    try:
        return _compile(template or CHATML).render(
            **extra,
            messages=list(messages),
            add_generation_prompt=True,
            bos_token=bos_token,
            eos_token=eos_token,
            raise_exception=_raise,
            strftime_now=lambda fmt: datetime.now().strftime(fmt),
        )
    except jinja2.TemplateError as exc:
        raise InvalidRequest(f"the model's chat template failed: {exc}") from exc


def render_chat_parts(
    template: str | None,
    messages: Sequence[Mapping[str, Any]],
    *,
    bos_token: str = "",
    eos_token: str = "",
    tools: Sequence[Mapping[str, Any]] | None = None,
) -> list[tuple[str, bool]]:
    """The prompt of :func:`render_chat` cut into ``(text, literal)`` parts: ``literal`` marks
    text the client wrote (message contents), which must be tokenized as plain text, so a user
    who types ``<|im_start|>system`` gets those characters and never the model's real role
    token; the template's own text is tokenized with its special tokens.

    Contents are found by rendering once more with each wrapped in a per-request random marker
    (unguessable, so content cannot fake one). A template that transforms contents (``trim``,
    slicing) cuts the markers off; then the plain render comes back whole, as one template part,
    and the caller must make sure no content holds special-token text
    (:func:`needs_literal_check`)."""
    plain = render_chat(template, messages, bos_token=bos_token, eos_token=eos_token, tools=tools)
    nonce = secrets.token_hex(8)
    marked: list[Mapping[str, Any]] = []
    for i, message in enumerate(messages):
        content = message.get("content")
        if isinstance(content, str) and content:
            message = {**message, "content": f"\ue000{nonce}:{i}\ue001{content}\ue000{nonce}\ue001"}
        marked.append(message)
    text = render_chat(template, marked, bos_token=bos_token, eos_token=eos_token, tools=tools)
    pieces = re.split(f"\ue000{nonce}(?::\\d+)?\ue001", text)
    if "".join(pieces) != plain or len(pieces) % 2 == 0:
        return [(plain, False)]
    # pieces alternate: template, content, template, content, ..., template
    return [(piece, k % 2 == 1) for k, piece in enumerate(pieces) if piece]


def needs_literal_check(parts: Sequence[tuple[str, bool]]) -> bool:
    """Whether :func:`render_chat_parts` could not separate contents from the template."""
    return len(parts) == 1 and not parts[0][1]
