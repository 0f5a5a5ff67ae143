"""Tool use on /v1/messages through the official ``anthropic`` SDK, on the real daemon and
``tiny`` (a template without tool support: prompt.tools' generic format; ``any`` and ``tool``
are grammar-enforced, so tiny's calls are valid)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import anthropic
import pytest

from edgeinfer.core.generation import Generation
from edgeinfer.core.options import ToolSpec
from edgeinfer.core.values import Delta, Event, Finished, Usage
from edgeinfer.server.anthropic import _events, content_of
from edgeinfer.server.anthropic_schemas import parse_request
from tests.conftest import Daemon
from tests.test_anthropic_api import client_fixture  # noqa: F401

try:  # anthropic >= 2 is built on httpx2 and refuses httpx objects; older SDKs on httpx
    import httpx2 as sdk_httpx
except ImportError:  # pragma: no cover - depends on the installed SDK
    import httpx as sdk_httpx  # type: ignore[no-redef]

WEATHER: dict[str, Any] = {
    "name": "get_weather",
    "description": "Current weather in a city",
    "input_schema": {
        "type": "object",
        "properties": {
            "city": {"type": "string"},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        },
        "required": ["city", "unit"],
    },
}
ADD: dict[str, Any] = {
    "name": "add",
    "description": "Add two integers",
    "input_schema": {
        "type": "object",
        "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
        "required": ["a", "b"],
    },
}
ASK = [{"role": "user", "content": "What's the weather in Paris, in celsius?"}]
NAMED = {"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True}
LIVE = {"temperature": 0, "edgeinfer": {"cache": "off"}}


def create(client: anthropic.Anthropic, **kw: Any) -> Any:
    base: dict[str, Any] = {"model": "tiny", "max_tokens": 64, "extra_body": {"temperature": 0}}
    return client.messages.create(**{**base, **kw})


def valid_weather(args: object) -> None:
    assert isinstance(args, dict) and set(args) == {"city", "unit"}, args
    assert isinstance(args["city"], str) and args["unit"] in ("celsius", "fahrenheit")


@pytest.mark.real
@pytest.mark.parametrize("choice", [{"type": "any", "disable_parallel_tool_use": True}, NAMED])
def test_forced_choice_gives_a_tool_use_block(client: anthropic.Anthropic, choice: Any) -> None:
    msg = create(client, messages=ASK, tools=[ADD, WEATHER], tool_choice=choice)
    assert msg.stop_reason == "tool_use" and msg.stop_sequence is None
    uses = [b for b in msg.content if b.type == "tool_use"]
    assert len(uses) == 1 and uses[0].id.startswith("toolu_") and len(uses[0].id) > 10
    if uses[0].name == "get_weather":
        valid_weather(uses[0].input)
    else:  # "any" may pick either tool; its input still follows the schema
        assert uses[0].name == "add" and choice["type"] == "any"
        assert set(uses[0].input) == {"a", "b"}
        assert all(isinstance(v, int) for v in uses[0].input.values())


@pytest.mark.real
def test_stream_reassembles_to_the_same_tool_use(
    client: anthropic.Anthropic, daemon: Daemon
) -> None:
    kw: dict[str, Any] = {"messages": ASK, "tools": [WEATHER], "tool_choice": NAMED}
    whole = create(client, **kw, extra_body=LIVE)
    with client.messages.stream(model="tiny", max_tokens=64, **kw, extra_body=LIVE) as stream:
        events = list(stream)
        final = stream.get_final_message()
    names = [e.type for e in events]
    assert "input_json" in names and final.stop_reason == "tool_use"
    [block] = final.content
    assert block.type == "tool_use" and block.id.startswith("toolu_")
    assert (block.name, block.input) == (whole.content[0].name, whole.content[0].input)
    assert final.usage.output_tokens == whole.usage.output_tokens

    body = {"model": "tiny", "max_tokens": 64, "stream": True, **kw, **LIVE}
    with daemon.client() as c:
        raw = c.post("/v1/messages", json=body).text
    lines = [line for line in raw.splitlines() if line.startswith("data: ")]
    data = [json.loads(line[6:]) for line in lines]
    order = "message_start content_block_start ping content_block_delta content_block_stop"
    assert [d["type"] for d in data] == [*order.split(), "message_delta", "message_stop"]
    start, delta, done = data[1]["content_block"], data[3]["delta"], data[5]["delta"]
    assert start["type"] == "tool_use" and start["input"] == {} and start["name"] == "get_weather"
    assert delta["type"] == "input_json_delta" and json.loads(delta["partial_json"]) == block.input
    assert done == {"stop_reason": "tool_use", "stop_sequence": None}


@pytest.mark.real
@pytest.mark.parametrize("ask", [ASK, [{"role": "user", "content": "Say hi."}]])
def test_auto_stream_matches_create(client: anthropic.Anthropic, ask: Any) -> None:
    kw: dict[str, Any] = {"messages": ask, "tools": [WEATHER], "extra_body": LIVE}
    whole = create(client, **kw)
    with client.messages.stream(model="tiny", max_tokens=64, **kw) as stream:
        final = stream.get_final_message()
    strip = {"id", "text"}  # a stream sends text before a call unstripped; ids are fresh
    assert [b.model_dump(exclude=strip) for b in final.content] == [
        b.model_dump(exclude=strip) for b in whole.content
    ]
    assert final.stop_reason == whole.stop_reason
    assert (final.stop_reason == "tool_use") == any(b.type == "tool_use" for b in final.content)
    texts = [
        (b.text.strip(), w.text.strip())
        for b, w in zip(final.content, whole.content, strict=True)
        if b.type == "text" and w.type == "text"
    ]
    assert all(a == b for a, b in texts)


@pytest.mark.real
def test_tool_result_round_trip_matches_openai_chat(
    client: anthropic.Anthropic, daemon: Daemon
) -> None:
    first = create(client, messages=ASK, tools=[WEATHER], tool_choice=NAMED)
    use = first.content[-1]
    result = '{"temperature": 21, "sky": "sunny"}'
    history = [
        *ASK,
        {"role": "assistant", "content": first.content},  # the SDK objects, as given
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": use.id, "content": result}],
        },
    ]
    none = {"type": "none"}
    answer = create(client, messages=history, tools=[WEATHER], tool_choice=none, extra_body=LIVE)
    assert answer.stop_reason in ("end_turn", "max_tokens")
    [text] = answer.content
    assert text.type == "text" and text.text.strip()

    # the same turns as OpenAI tool messages: the same prompt, so the same greedy answer
    call = {"id": "call_1", "type": "function", "function": {"name": use.name}}
    call["function"]["arguments"] = json.dumps(use.input)
    openai_history = [
        *ASK,
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": result},
    ]
    function = {"name": "get_weather", "description": WEATHER["description"]}
    function["parameters"] = WEATHER["input_schema"]
    body = {
        "model": "tiny",
        "max_tokens": 64,
        "temperature": 0,
        "messages": openai_history,
        "tools": [{"type": "function", "function": function}],
        "tool_choice": "none",
        "edgeinfer": {"cache": "off"},
    }
    with daemon.client() as c:
        chat = c.post("/v1/chat/completions", json=body).json()
    assert chat["choices"][0]["message"]["content"] == text.text
    assert chat["usage"]["prompt_tokens"] == answer.usage.input_tokens


BAD_TOOL_REQUESTS = [
    ({"tools": [{"name": "f"}]}, "tools.0.input_schema: required field is missing"),
    (
        {"tools": [{"name": "f", "input_schema": {"type": "string"}}]},
        'tools.0.input_schema: must be a JSON schema with "type": "object" (got "string")',
    ),
    (
        {"tools": [{"name": "f", "input_schema": {"type": "object", "required": "a"}}]},
        "tools.0.input_schema: required must be a list of property names",
    ),
    (
        {"tools": [{"name": "bad name", "input_schema": {"type": "object"}}]},
        "tools.0.name: must match ^[a-zA-Z0-9_-]{1,64}$",
    ),
    (
        {"tools": [{"type": "web_search_20250305", "name": "web_search"}]},
        "tools.0.type: 'web_search_20250305' is a server tool, which edgeinfer does not run",
    ),
    ({"tools": [ADD, ADD]}, "tools: tool names must be unique (add given more than once)"),
    ({"tools": [{**ADD, "strict": True}]}, "tools.0.strict: unknown or unsupported field"),
    ({"tool_choice": {"type": "any"}}, "tool_choice needs tools"),
    (
        {"tools": [ADD], "tool_choice": {"type": "tool", "name": "nope"}},
        "tool_choice.name: 'nope' is not in tools (add)",
    ),
    (
        {"tools": [ADD], "tool_choice": {"type": "tool"}},
        'tool_choice: name belongs on (and is required by) type "tool"',
    ),
    (
        {"tools": [ADD], "tool_choice": {"type": "maybe"}},
        "tool_choice.type: Input should be 'auto', 'any', 'tool' or 'none'",
    ),
    (
        {"messages": [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "x"}]}]},
        "messages.0.content.0.tool_use_id: 'x' answers no tool_use block of the previous",
    ),
    (
        {"messages": [{"role": "user", "content": [{"type": "tool_use"}]}]},
        "messages.0.content: block 0: tool_use blocks belong in assistant turns",
    ),
    (
        {
            "messages": [
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "f"}]},
                {"role": "user", "content": "Go on"},
            ]
        },
        "messages.1.content.0.input: required field is missing",
    ),
    (
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "tool_result", "tool_use_id": "t", "content": [{"type": "image"}]}
                    ],
                }
            ]
        },
        "messages.0.content.0.content: block 0: content blocks of type 'image' are not"
        " supported here (only text)",
    ),
]


@pytest.mark.real
@pytest.mark.parametrize(("fields", "message"), BAD_TOOL_REQUESTS)
def test_bad_tool_requests_get_a_precise_anthropic_error(
    client: anthropic.Anthropic, fields: dict[str, Any], message: str
) -> None:
    args: dict[str, Any] = {"messages": [{"role": "user", "content": "Hi"}], **fields}
    with pytest.raises(anthropic.BadRequestError) as caught:
        create(client, **args)
    body = caught.value.body
    assert isinstance(body, dict) and body["type"] == "error"
    assert body["error"]["type"] == "invalid_request_error"
    assert body["error"]["message"].startswith(message), body["error"]["message"]


def test_history_maps_onto_openai_tool_messages() -> None:
    body = {
        "model": "tiny",
        "max_tokens": 8,
        "system": "Be brief.",
        "tools": [WEATHER],
        "tool_choice": {"type": "auto", "disable_parallel_tool_use": True},
        "messages": [
            *ASK,
            {
                "role": "assistant",
                "content": [
                    {"type": "text", "text": "Checking."},
                    {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": "21"},
                    {"type": "text", "text": "And "},
                    {"type": "text", "text": "tomorrow?"},
                ],
            },
            {"role": "assistant", "content": [{"type": "text", "text": "Unknown."}]},
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "is_error": True}],
            },
        ],
    }
    request = parse_request(json.dumps(body).encode())
    call = {"id": "toolu_1", "type": "function"}
    call["function"] = {"name": "get_weather", "arguments": "{}"}
    with pytest.raises(Exception, match="answers no tool_use block of the previous"):
        request.conversation()  # the last result follows a turn without that call
    body["messages"] = body["messages"][:3]  # type: ignore[index]
    request = parse_request(json.dumps(body).encode())
    assert request.conversation() == [
        {"role": "system", "content": "Be brief."},
        *ASK,
        {"role": "assistant", "content": "Checking.", "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "toolu_1", "content": "21"},
        {"role": "user", "content": "And tomorrow?"},
    ]
    spec = request.options("me").tools
    assert spec is not None and (spec.choice, spec.parallel) == ("auto", False)
    assert spec.tools[0]["parameters"] == WEATHER["input_schema"]
    error = {"type": "tool_result", "tool_use_id": "toolu_1", "content": "boom", "is_error": True}
    body["messages"][2]["content"] = [error]  # type: ignore[index]
    assert parse_request(json.dumps(body).encode()).conversation()[-1]["content"] == "Error: boom"


@pytest.mark.parametrize(
    ("choice", "parallel", "kept"),
    [("none", True, 0), ("auto", True, 2), ("auto", False, 1), ("required", True, 2)],
)
def test_answer_text_to_content_blocks(choice: str, parallel: bool, kept: int) -> None:
    spec = ToolSpec(({"name": "add"},), choice, parallel)
    text = 'Sure. <tool_call>{"name": "add", "arguments": {"a": 1}}</tool_call>\n'
    text += '<tool_call>{"name": "add", "arguments": {"a": 2}}</tool_call>'
    blocks = content_of(text, spec)
    if not kept:
        assert blocks == [{"type": "text", "text": text}]
        return
    assert blocks[0] == {"type": "text", "text": "Sure."}
    uses = blocks[1:]
    assert [u["input"] for u in uses] == [{"a": 1}, {"a": 2}][:kept]
    assert all(u["type"] == "tool_use" and u["id"].startswith("toolu_") for u in uses)
    assert content_of('{"name": "add", "arguments": {}}', spec)[0]["type"] == (
        "text" if choice == "none" else "tool_use"
    )


async def _sse(pieces: list[str], spec: ToolSpec) -> bytes:
    """What the route streams for an answer generated as ``pieces``."""
    queue: asyncio.Queue[Event] = asyncio.Queue()
    for piece in pieces:
        queue.put_nowait(Delta(piece))
    queue.put_nowait(Finished("stop", Usage(7, len(pieces), 0, 0.0, 0.0)))
    gen = Generation("tiny", None, queue, prompt_tokens=7)
    return b"".join([event async for event in _events(gen, "msg_1", spec)])


def test_auto_stream_of_text_then_calls_through_the_sdk() -> None:
    text = 'Sure. <tool_call>{"name": "add", "arguments": {"a": 1}}</tool_call>\n'
    text += '<tool_call>{"name": "add", "arguments": {"a": 2}}</tool_call>'
    pieces = [text[i : i + 5] for i in range(0, len(text), 5)]  # the tag split across pieces
    raw = asyncio.run(_sse(pieces, ToolSpec(({"name": "add"},), "auto")))
    events = [json.loads(line[6:]) for line in raw.decode().splitlines() if line[:6] == "data: "]
    blocks = ["start {0}", "delta {0}", "stop {0}"]
    expected = ["message_start", "start 0", "ping", "delta 0", "delta 0", "stop 0"]
    expected += [b.format(k) for k in (1, 2) for b in blocks] + ["message_delta", "message_stop"]
    shape = [e["type"].removeprefix("content_block_") for e in events]
    shape = [f"{t} {e['index']}" if "index" in e else t for t, e in zip(shape, events, strict=True)]
    assert shape == expected
    assert events[6]["content_block"]["input"] == {}
    assert events[10]["delta"] == {"type": "input_json_delta", "partial_json": '{"a": 2}'}

    headers = {"content-type": "text/event-stream"}
    reply = sdk_httpx.MockTransport(lambda _: sdk_httpx.Response(200, content=raw, headers=headers))
    http = sdk_httpx.Client(transport=reply)
    with (
        anthropic.Anthropic(base_url="http://edgeinfer", api_key="-", http_client=http) as client,
        client.messages.stream(model="tiny", max_tokens=64, messages=ASK) as stream,
    ):
        streamed = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert streamed == "Sure. " and final.stop_reason == "tool_use"
    assert [b.type for b in final.content] == ["text", "tool_use", "tool_use"]
    assert [b.input for b in final.content[1:]] == [{"a": 1}, {"a": 2}]  # type: ignore[union-attr]


def test_stream_without_a_call_still_has_a_block() -> None:
    spec = ToolSpec(({"name": "add"},), "auto")
    for pieces in (["Hi ", "there"], ["{", '"x": 1}']):  # the second held back to the end
        raw = asyncio.run(_sse(pieces, spec))
        events = [
            json.loads(line[6:]) for line in raw.decode().splitlines() if line[:6] == "data: "
        ]
        names = [e["type"] for e in events]
        assert names[:3] == ["message_start", "content_block_start", "ping"]
        assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
        text = "".join(e["delta"]["text"] for e in events if e["type"] == "content_block_delta")
        assert text == "".join(pieces) and events[-2]["delta"]["stop_reason"] == "end_turn"
