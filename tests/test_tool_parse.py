"""Reading tool calls out of freely generated text (``tool_choice: auto``), whole and streamed.

The ``*_RAW`` answers are what Qwen2.5-Coder (``large``: 1.5B, ``small``: 0.5B) generated for
scripts/eval_tools.py's prompts, the tools listed in its own template's system prompt: mostly a
```json fence, sometimes (small) a bare object, never the ``<tool_call>`` tags the template asks
for. The other shapes are those llama.cpp's Hermes 2 Pro parser (its format for Qwen2.5) accepts.
"""

from __future__ import annotations

import json

import pytest

from edgeinfer.prompt.tools import call_start, parse_calls
from edgeinfer.server.openai_shapes import ToolStream

NAMES = ["get_weather", "add", "search_web", "convert_currency", "set_timer"]

LARGE_WEATHER_RAW = (
    '```json\n{\n  "name": "get_weather",\n  "arguments": {\n    "city": "Paris",\n'
    '    "unit": "celsius"\n  }\n}\n```'
)
LARGE_CURRENCY_RAW = (
    '```json\n{\n  "name": "convert_currency",\n  "arguments": {\n    "amount": 100,\n'
    '    "from_currency": "USD",\n    "to_currency": "EUR"\n  }\n}\n```'
)
SMALL_ADD_RAW = '```json\n{"name": "add", "arguments": {"a": 100, "b": 250}}\n```'
SMALL_BARE_RAW = '{"name": "set_timer", "arguments": {"minutes": 5}}'
TAG_UNCLOSED = '<tool_call>\n{"name": "set_timer", "arguments": {"minutes": 5}}\n'  # a stop cut it

WEATHER = ("get_weather", {"city": "Paris", "unit": "celsius"})
CURRENCY = (
    "convert_currency",
    {"amount": 100, "from_currency": "USD", "to_currency": "EUR"},
)
ADD = ("add", {"a": 100, "b": 250})
TIMER = ("set_timer", {"minutes": 5})


@pytest.mark.parametrize(
    ("text", "content", "calls"),
    [
        (LARGE_WEATHER_RAW, None, [WEATHER]),
        (LARGE_CURRENCY_RAW, None, [CURRENCY]),
        (SMALL_ADD_RAW, None, [ADD]),
        (SMALL_BARE_RAW, None, [TIMER]),
        (TAG_UNCLOSED, None, [TIMER]),
        ("Sure, calling it:\n" + LARGE_WEATHER_RAW + "\nDone.", "Sure, calling it:", [WEATHER]),
        ('```\n{"name": "add", "arguments": {"a": 100, "b": 250}}\n```', None, [ADD]),
        ("```xml\n" + TAG_UNCLOSED + "</tool_call>\n```", None, [TIMER]),
        ('<tools>\n{"name": "set_timer", "arguments": {"minutes": 5}}\n</tools>', None, [TIMER]),
        ('<function_call>{"name": "add", "arguments": {"a": 100, "b": 250}}', None, [ADD]),
        ('OK. {"name": "add", "arguments": {"a": 100, "b": 250}}', "OK.", [ADD]),
        ('{"arguments": {"minutes": 5}, "name": "set_timer"} and more', None, [TIMER]),
        ('<tool_call>{"arguments": {"minutes": 5}, "name": "set_timer"}', None, [TIMER]),
        (SMALL_ADD_RAW + "\n" + SMALL_ADD_RAW, None, [ADD]),  # a repeat says nothing
        (SMALL_ADD_RAW + "\n" + TAG_UNCLOSED, None, [ADD, TIMER]),
    ],
)
def test_calls_in_the_shapes_models_write(
    text: str, content: str | None, calls: list[tuple[str, dict[str, object]]]
) -> None:
    got_content, got = parse_calls(text, NAMES)
    assert got_content == content
    assert [(c.name, json.loads(c.arguments)) for c in got] == calls


@pytest.mark.parametrize(
    "text",
    [
        "Paris is sunny today.",
        "```python\nprint({'name': 'add'})\n```",
        '```json\n{"name": "Bob", "age": 3}\n```',  # no offered tool's name
        '```json\n{"name": "add", "arguments": [1, 2]}\n```',  # arguments not an object
        'Use {"arguments": {"a": 1}, "name": "add"} like this.',  # mid-text, "name" not first
        '{"user": {"name": "add", "arguments": {}}}',  # a call nested in other data
        "<tool_call>{broken",
        "```json\n{broken\n```",
    ],
)
def test_text_that_is_no_call_stays_content(text: str) -> None:
    assert parse_calls(text, NAMES) == (text, [])


@pytest.mark.parametrize(
    ("text", "start", "sure"),
    [
        ("", 0, False),
        ("  \n", 0, False),  # an answer's start may still become an object
        ("Hello", 5, False),
        ("Hello `", 6, False),
        ("Hello ``", 6, False),
        ("Hello ```js", 6, False),
        ("Hello ```json\n  ", 6, False),
        ("Hello ```json\n<too", 6, False),
        ("Hello ```json\n{", 6, True),
        ("Hello ```python\n", 16, False),
        ("Hello <tool_c", 6, False),
        ("Hello <tool_call>", 6, True),
        ("Hello <tools> ", 6, False),
        ("Hello <tools> {", 6, True),
        ("Hello <b>", 9, False),
        ('Hello {"na', 6, False),
        ('Hello {"name" :', 6, True),
        ('Hello {"x"', 10, False),
        ("{", 0, True),
    ],
)
def test_where_a_streamed_call_may_start(text: str, start: int, sure: bool) -> None:
    assert call_start(text) == (start, sure)


def _stream(text: str, step: int = 3) -> tuple[str, str, list[tuple[str, str]]]:
    """What a ToolStream sends as the text arrives in pieces, what it sends at the end, and
    the calls."""
    stream = ToolStream(NAMES)
    sent = "".join(stream.feed(text[i : i + step]) for i in range(0, len(text), step))
    rest, calls = stream.settle()
    return sent, rest, [(c.name, c.arguments) for c in calls]


def test_a_fenced_call_streams_no_content() -> None:
    sent, rest, calls = _stream("Sure:\n" + LARGE_WEATHER_RAW)
    assert (sent, rest) == ("Sure:\n", "")
    assert calls == [("get_weather", '{"city": "Paris", "unit": "celsius"}')]


def test_code_and_json_that_call_nothing_stream_as_content() -> None:
    code = "Here:\n```python\nprint(1)\n```\nDone."
    assert _stream(code) == (code, "", [])
    data = 'Here:\n```json\n{"name": "Bob"}\n```\nDone.'
    sent, rest, calls = _stream(data)
    assert (sent, sent + rest, calls) == ("Here:\n", data, [])  # held from the fence, then sent
