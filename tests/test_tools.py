"""Tool calling on /v1/chat/completions, against the real daemon and model (``tiny``: SmolLM2,
a ChatML template without tool support, so the generic format of prompt.tools)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from edgeinfer.core.options import ToolSpec
from edgeinfer.prompt.tools import generic_messages, parse_calls, wrap_grammar
from tests.conftest import Daemon

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city", "unit"],
        },
    },
}
ADD = {
    "type": "function",
    "function": {
        "name": "add",
        "description": "Add two integers",
        "parameters": {
            "type": "object",
            "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
            "required": ["a", "b"],
        },
    },
}
ASK = [{"role": "user", "content": "What's the weather in Paris, in celsius?"}]


@pytest.fixture
def client(daemon: Daemon) -> Iterator[openai.OpenAI]:
    http = httpx.Client(transport=httpx.HTTPTransport(uds=str(daemon.socket)), timeout=600)
    with http:
        yield openai.OpenAI(base_url="http://edgeinfer/v1", api_key="unused", http_client=http)


def valid_weather(arguments: str) -> dict[str, Any]:
    """The arguments, checked against WEATHER's schema."""
    args = json.loads(arguments)
    assert set(args) == {"city", "unit"}
    assert isinstance(args["city"], str)
    assert args["unit"] in ("celsius", "fahrenheit")
    return args


def create(client: openai.OpenAI, **kw: Any) -> Any:
    # one call per answer: the grammar then ends it, where parallel calls let tiny repeat itself
    base: dict[str, Any] = {
        "model": "tiny",
        "max_tokens": 64,
        "temperature": 0,
        "parallel_tool_calls": False,
    }
    return client.chat.completions.create(**{**base, **kw})


@pytest.mark.parametrize(
    "choice", ["required", {"type": "function", "function": {"name": "get_weather"}}]
)
def test_forced_choice_gives_a_valid_call(client: openai.OpenAI, choice: Any) -> None:
    r = create(client, messages=ASK, tools=[ADD, WEATHER], tool_choice=choice)
    calls = r.choices[0].message.tool_calls
    assert calls, r.choices[0].message
    for call in calls:
        assert call.id.startswith("call_") and call.type == "function"
        if call.function.name == "get_weather":
            valid_weather(call.function.arguments)
        else:  # "required" may pick either tool; its arguments still follow the schema
            args = json.loads(call.function.arguments)
            assert set(args) == {"a", "b"} and all(isinstance(v, int) for v in args.values())
    if isinstance(choice, dict):
        assert [c.function.name for c in calls] == ["get_weather"]
        assert r.choices[0].finish_reason == "tool_calls"


def test_tool_result_round_trip(client: openai.OpenAI) -> None:
    first = create(client, messages=ASK, tools=[WEATHER], tool_choice="required")
    call = first.choices[0].message.tool_calls[0]
    history = [
        *ASK,
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": '{"temperature": 21, "sky": "sunny"}'},
    ]
    r = create(client, messages=history, tools=[WEATHER], tool_choice="none", max_tokens=40)
    message = r.choices[0].message
    assert not message.tool_calls
    assert message.content and message.content.strip()
    assert r.choices[0].finish_reason in ("stop", "length")


def test_streamed_call_reassembles_to_the_same_call(client: openai.OpenAI) -> None:
    named = {"type": "function", "function": {"name": "get_weather"}}
    kw: dict[str, Any] = {"messages": ASK, "tools": [WEATHER], "tool_choice": named}
    whole = create(client, **kw, extra_body={"edgeinfer": {"cache": "off"}})
    calls: dict[int, dict[str, str]] = {}
    finish = None
    for chunk in create(client, **kw, stream=True, extra_body={"edgeinfer": {"cache": "off"}}):
        for choice in chunk.choices:
            finish = choice.finish_reason or finish
            for d in choice.delta.tool_calls or []:
                entry = calls.setdefault(d.index, {"id": "", "name": "", "arguments": ""})
                entry["id"] += d.id or ""
                entry["name"] += (d.function.name if d.function else None) or ""
                entry["arguments"] += (d.function.arguments if d.function else None) or ""
    expected = whole.choices[0].message.tool_calls
    assert [(c["name"], json.loads(c["arguments"])) for c in calls.values()] == [
        (c.function.name, json.loads(c.function.arguments)) for c in expected
    ]
    assert all(c["id"].startswith("call_") for c in calls.values())
    assert finish == whole.choices[0].finish_reason == "tool_calls"


def test_tool_choice_none_offers_no_tools(client: openai.OpenAI) -> None:
    r = create(client, messages=ASK, tools=[WEATHER], tool_choice="none", max_tokens=24)
    assert not r.choices[0].message.tool_calls
    assert r.choices[0].finish_reason in ("stop", "length")


def test_different_tools_are_not_a_cache_hit(daemon: Daemon) -> None:
    body: dict[str, Any] = {
        "model": "tiny",
        "messages": [{"role": "user", "content": "Weather in Oslo, in celsius, please."}],
        "max_tokens": 40,
        "temperature": 0,
        "tools": [WEATHER],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "parallel_tool_calls": False,
        "edgeinfer": {"cache": "exact"},
    }
    with daemon.client() as c:
        first = c.post("/v1/chat/completions", json=body).json()
        again = c.post("/v1/chat/completions", json=body).json()
        other = c.post("/v1/chat/completions", json={**body, "tools": [WEATHER, ADD]}).json()
        result = {"role": "tool", "tool_call_id": "call_x", "content": "21"}
        call = {"id": "call_x", "function": {"name": "get_weather", "arguments": "{}"}}
        turn = [*body["messages"], {"role": "assistant", "tool_calls": [call]}]
        told = {**body, "tool_choice": "none", "max_tokens": 8, "messages": [*turn, result]}
        told_other = {**told, "messages": [*turn, {**result, "content": "-5"}]}
        a = c.post("/v1/chat/completions", json=told).json()
        b = c.post("/v1/chat/completions", json=told_other).json()
    assert first["edgeinfer"]["cache"]["layer"] is None
    assert again["edgeinfer"]["cache"]["layer"] == "exact"
    assert again["choices"][0]["message"]["tool_calls"][0]["function"]["name"] == "get_weather"
    assert other["edgeinfer"]["cache"]["layer"] is None
    assert a["edgeinfer"]["cache"]["layer"] is None
    assert b["edgeinfer"]["cache"]["layer"] is None  # another tool result: another key


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"tool_choice": "required"}, "tool_choice"),
        (
            {"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "x"}}},
            "tool_choice",
        ),
        ({"tools": [WEATHER, WEATHER]}, "tools"),
        (
            {"tools": [{"type": "function", "function": {"name": "bad name"}}]},
            "tools.0.function.name",
        ),
        ({"messages": [{"role": "tool", "content": "1"}]}, "messages.0"),
        ({"n": 9}, "n"),
    ],
)
def test_invalid_tool_requests_name_the_field(
    daemon: Daemon, extra: dict[str, Any], param: str
) -> None:
    body = {"model": "tiny", "messages": ASK, "max_tokens": 4, **extra}
    with daemon.client() as c:
        r = c.post("/v1/chat/completions", json=body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param


def test_langchain_bind_tools_forced(daemon: Daemon) -> None:
    langchain_openai = pytest.importorskip("langchain_openai")
    http = httpx.Client(transport=httpx.HTTPTransport(uds=str(daemon.socket)), timeout=600)
    llm = langchain_openai.ChatOpenAI(
        model="tiny",
        base_url="http://edgeinfer/v1",
        api_key="unused",
        http_client=http,
        temperature=0,
        max_tokens=48,
    )
    with http:
        message = llm.bind_tools([WEATHER], tool_choice="get_weather").invoke(ASK[0]["content"])
    assert message.tool_calls[0]["name"] == "get_weather"
    valid_weather(json.dumps(message.tool_calls[0]["args"]))


def test_parser_and_generic_format() -> None:
    names = ["get_weather"]
    text = 'Sure.<tool_call>{"name": "get_weather", "arguments": {"city": "Rome"}}</tool_call>'
    content, calls = parse_calls(text, names)
    assert content == "Sure." and calls[0].name == "get_weather"
    assert json.loads(calls[0].arguments) == {"city": "Rome"}
    assert parse_calls('{"name": "get_weather", "arguments": {}}', names)[1]
    assert parse_calls('<tool_call>{"name": "other", "arguments": {}}</tool_call>', names)[1] == []
    assert parse_calls("<tool_call>{broken", names) == ("<tool_call>{broken", [])
    spec = ToolSpec((WEATHER["function"],), "required")
    msgs = generic_messages([{"role": "user", "content": "hi"}], spec)
    assert msgs[0]["role"] == "system" and "<tools>" in msgs[0]["content"]
    assert generic_messages([{"role": "tool", "content": "1"}], None)[0]["role"] == "user"
    assert wrap_grammar('root ::= x\nx ::= "a"', spec).startswith("root ::= tool-call")
