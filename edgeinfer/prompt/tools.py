"""Tool calling: how tools reach the prompt, the grammar that forces a call, and the parser.

One format serves every model: a call is ``<tool_call>{"name": ..., "arguments": {...}}
</tool_call>`` in the generated text. A chat template that supports tools (it reads the
``tools`` variable, as Qwen2.5's does) gets them the way transformers passes them and emits that
format itself. A template without tool support (SmolLM2's ChatML) gets the *generic format*: a
system-prompt section listing the tools as JSON schemas and asking for that same tag; earlier
assistant calls are written back as those tags, and tool results become user turns wrapped in
``<tool_response>``.

``tool_choice: required`` and a named function are enforced with a GBNF grammar built from the
tools' parameter schemas (:func:`call_schema`, then :func:`wrap_grammar`); ``auto`` generates
freely and :func:`parse_calls` reads the calls out afterwards, also from the shapes models write
instead of the tag (a ```json fence, another wrapper tag, a bare object: :data:`_OPENING`);
``none`` does not offer the tools.
Pure functions: the service calls them, the server shapes what they return.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from edgeinfer.core.options import ToolSpec
from edgeinfer.engine.grammar_limits import check_grammar
from edgeinfer.errors import InvalidRequest

OPEN = "<tool_call>"
CLOSE = "</tool_call>"
MAX_PARALLEL = 4
"""The most calls a forced (grammar) answer may hold when ``parallel_tool_calls`` is on."""

GENERIC_HEADER = (
    "You can call functions (tools). These are available, as JSON schemas:\n"
    "<tools>\n{tools}\n</tools>\n"
    "To call one, answer with exactly\n"
    '<tool_call>{{"name": "<function name>", "arguments": {{<arguments as JSON>}}}}</tool_call>\n'
    "{rule}"
)
_RULES = {
    "auto": "Call a function when it helps answer; otherwise answer in text.",
    "required": "You must call one of the functions.",
}


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    arguments: str  # JSON text, as OpenAI sends it

    def as_openai(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments},
        }


def template_supports_tools(template: str | None) -> bool:
    """Whether a chat template renders the ``tools`` variable itself (transformers' convention)."""
    return template is not None and re.search(r"\btools\b", template) is not None


def _arguments(raw: Any) -> Any:
    """OpenAI sends arguments as JSON text; templates (transformers) expect the object."""
    if isinstance(raw, str):
        try:
            return json.loads(raw)
        except ValueError:
            return raw
    return raw


def _call_text(call: Mapping[str, Any]) -> str:
    fn = call.get("function") or {}
    body = {"name": fn.get("name"), "arguments": _arguments(fn.get("arguments"))}
    return f"{OPEN}{json.dumps(body, ensure_ascii=False)}{CLOSE}"


def native_messages(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Messages for a template with tool support: call arguments as objects."""
    out: list[dict[str, Any]] = []
    for m in messages:
        msg = dict(m)
        if msg.get("tool_calls"):
            msg["tool_calls"] = [
                {
                    **c,
                    "function": {
                        **c["function"],
                        "arguments": _arguments(c["function"].get("arguments")),
                    },
                }
                for c in msg["tool_calls"]
            ]
        out.append(msg)
    return out


def generic_messages(
    messages: Sequence[Mapping[str, Any]], spec: ToolSpec | None
) -> list[dict[str, Any]]:
    """Messages for a template without tool support: the generic format (module docstring).

    Works without offered tools too (``tool_choice: none`` with tool turns in the history)."""
    out: list[dict[str, Any]] = []
    for m in messages:
        role, content = m.get("role"), str(m.get("content") or "")
        if role == "assistant" and m.get("tool_calls"):
            calls = "\n".join(_call_text(c) for c in m["tool_calls"])
            out.append({"role": "assistant", "content": f"{content}\n{calls}".strip()})
        elif role == "tool":
            out.append({"role": "user", "content": f"<tool_response>\n{content}\n</tool_response>"})
        else:
            out.append({"role": role, "content": content})
    if spec is None or not spec.offered:
        return out
    listed = "\n".join(
        json.dumps({"type": "function", "function": dict(t)}, ensure_ascii=False)
        for t in spec.tools
    )
    rule = _RULES.get(spec.choice, f"You must call the function {spec.choice!r}.")
    section = GENERIC_HEADER.format(tools=listed, rule=rule)
    if out and out[0]["role"] in ("system", "developer"):
        out[0] = {**out[0], "content": f"{out[0]['content']}\n\n{section}".strip()}
    else:
        out.insert(0, {"role": "system", "content": section})
    return out


def call_schema(spec: ToolSpec) -> dict[str, Any]:
    """The JSON schema of one call the request allows (every tool, or the named one)."""
    tools = [t for t in spec.tools if spec.choice in ("required", t["name"])]
    options = [
        {
            "type": "object",
            "properties": {
                "name": {"const": t["name"]},
                "arguments": t.get("parameters") or {"type": "object"},
            },
            "required": ["name", "arguments"],
        }
        for t in tools
    ]
    return options[0] if len(options) == 1 else {"anyOf": options}


def wrap_grammar(call_grammar: str, spec: ToolSpec) -> str:
    """The GBNF of a forced answer: one call (or up to :data:`MAX_PARALLEL` with parallel
    calls on, for ``required``), each inside the tags, from the grammar of one call's JSON."""
    body = re.sub(r"^root ::=", "tool-call-json ::=", call_grammar, flags=re.MULTILINE)
    more = (
        f' ("\\n" tool-call){{0,{MAX_PARALLEL - 1}}}'
        if spec.parallel and spec.choice == "required"
        else ""
    )
    return (
        f"root ::= tool-call{more}\n"
        f'tool-call ::= "{OPEN}" "\\n"? tool-call-json "\\n"? "{CLOSE}"\n{body}'
    )


_TAGS = ("tool_call", "function_call", "tool", "tools", "response", "json", "xml", "JSON")
_TAG = "<(?:" + "|".join(_TAGS) + ")>"
_FENCE = r"```(?:json|xml)?[ \t]*\n\s*"
_OPENING = re.compile(
    rf"(?:{_FENCE})?(?:{re.escape(OPEN)}\s*|{_TAG}\s*(?=\{{))"
    rf"|{_FENCE}(?=\{{)"
    r"|\A\s*(?=\{)"
    r'|(?=\{\s*"name"\s*:)'
)
"""Where a call's JSON may begin (right after the match): our tag, optionally inside a Markdown
fence (``<tool_call>`` counts at once, before its object); another wrapper tag or a fence before
an object; an object at the answer's start; or one whose first key is ``"name"``. These are the
openings llama.cpp's Hermes 2 Pro parser (its format for Qwen2.5) accepts, its ``<function=...>``
forms aside: Qwen2.5-Coder, asked by its own template for the tags, answered scripts/eval_tools.py
with a ```json fence or a bare object instead (tests/test_tool_parse.py has its answers)."""

_FENCE_PART = re.compile(r"`{1,2}|```(?:j(?:s(?:on?)?)?|x(?:ml?)?|json|xml)?[ \t]*")
_TAG_PART = re.compile(_TAG + r"\s*")
_NAME_PART = re.compile(r'\{\s*(?:"(?:n(?:a(?:m(?:e(?:"\s*)?)?)?)?)?)?')


def find_calls(text: str, names: Sequence[str]) -> tuple[int, list[ToolCall]]:
    """Where the text's first call begins (its length when it has none), and the calls:
    objects at the openings of :data:`_OPENING` that call an offered tool (unknown names and
    invalid JSON are not calls; an exact repeat of a call is dropped)."""
    decoder = json.JSONDecoder()
    calls: list[ToolCall] = []
    seen: set[tuple[str, str]] = set()
    first, pos = len(text), 0
    while (match := _OPENING.search(text, pos)) is not None:
        try:
            obj, pos = decoder.raw_decode(text, match.end())
        except ValueError:
            pos = match.start() + 1
            continue
        call = _as_call(obj, names)
        if call is None:
            continue  # an object that calls nothing: what it holds is no call either
        first = min(first, match.start())
        if (call.name, call.arguments) not in seen:  # repeats say nothing
            seen.add((call.name, call.arguments))
            calls.append(call)
    return first, calls


def parse_calls(text: str, names: Sequence[str]) -> tuple[str | None, list[ToolCall]]:
    """The text's content before its first call, and the calls (:func:`find_calls`); the
    whole text as content when it holds none."""
    first, calls = find_calls(text, names)
    if not calls:
        return text, []
    return (text[:first].strip() or None), calls


def _as_call(obj: Any, names: Sequence[str]) -> ToolCall | None:
    if not isinstance(obj, dict) or obj.get("name") not in names:
        return None
    args = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except ValueError:
            return None
    if not isinstance(args, dict):
        return None
    return ToolCall(
        id=f"call_{uuid.uuid4().hex[:24]}",
        name=str(obj["name"]),
        arguments=json.dumps(args, ensure_ascii=False),
    )


def call_start(text: str, since: int = 0) -> tuple[int, bool]:
    """For streamed text so far: where a call may begin (at ``since`` or later; the text's
    length where none can), and whether one surely does. The text before it is content; the
    stream (server.openai_shapes.ToolStream) holds back the rest until it can no longer open a
    call or the answer is complete. ``since`` is how far the text was sent already."""
    match = _OPENING.search(text, since)
    if match is not None:
        return match.start(), True
    for at in range(since, len(text)):
        if (at == 0 or text[at] in "`<{") and _may_open(text[at:], at == 0):
            return at, False
    return len(text), False


def _may_open(tail: str, at_start: bool) -> bool:
    """Whether text that ends the stream so far may still grow into an opening."""
    if at_start and not tail.strip():
        return True  # an answer's start: it may turn into an object
    fence = re.match(_FENCE, tail)
    rest = tail[fence.end() :] if fence else tail
    if not rest or _TAG_PART.fullmatch(rest) or any(f"<{t}>".startswith(rest) for t in _TAGS):
        return True
    return not fence and bool(_FENCE_PART.fullmatch(rest) or _NAME_PART.fullmatch(rest))


def tool_prompt(
    template: str | None, messages: Sequence[Mapping[str, Any]], spec: ToolSpec | None
) -> tuple[Sequence[Mapping[str, Any]], list[dict[str, Any]] | None]:
    """Messages (and the template's ``tools``) for a request with tools or tool turns: the
    template's own tool support when it has one, else the generic format (prompt.tools)."""
    turns = any(m.get("role") == "tool" or m.get("tool_calls") for m in messages)
    if not turns and (spec is None or not spec.offered):
        return messages, None
    if not template_supports_tools(template):
        return generic_messages(messages, spec), None
    tools = None
    if spec is not None and spec.offered:
        tools = [{"type": "function", "function": dict(t)} for t in spec.tools]
    return native_messages(messages), tools


def tool_grammar(grammar_for: Callable[[str, str | None], str], spec: ToolSpec) -> str:
    """The GBNF that forces a call (``tool_choice`` required or named); off the event loop."""
    try:
        call = grammar_for("json_schema", json.dumps(call_schema(spec)))
        grammar = wrap_grammar(call, spec)
        check_grammar(grammar)
    except InvalidRequest as exc:
        raise InvalidRequest(str(exc).replace("response_format", "tools"), param="tools") from exc
    return grammar


__all__ = [
    "CLOSE",
    "OPEN",
    "ToolCall",
    "ToolSpec",
    "call_schema",
    "call_start",
    "find_calls",
    "generic_messages",
    "native_messages",
    "parse_calls",
    "template_supports_tools",
    "tool_grammar",
    "tool_prompt",
    "wrap_grammar",
]
