"""Tool calling through a chat template that renders tools itself: ``small`` (Qwen2.5-Coder,
whose template writes the tools into the system turn and expects ``<tool_call>`` JSON back),
against the real daemon, with the openai SDK and a LangChain tool loop over the Unix socket.

tests/test_tools.py covers the generic format (``tiny``'s ChatML has no tool support).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from edgeinfer.engine.gguf import read_metadata
from edgeinfer.models.store import ModelStore
from edgeinfer.prompt.tools import template_supports_tools
from tests.conftest import Daemon, start_daemon
from tests.test_tools import ASK, WEATHER, valid_weather

pytestmark = pytest.mark.real


@pytest.fixture(scope="module")
def small_path(model_store: ModelStore) -> Path:
    return model_store.ensure("small")


@pytest.fixture(scope="module")
def small(small_path: Path) -> Iterator[Daemon]:
    d = start_daemon("--models", "small", "--no-cache")
    yield d
    d.stop()


@pytest.fixture
def sdk(small: Daemon) -> Iterator[openai.OpenAI]:
    http = httpx.Client(transport=httpx.HTTPTransport(uds=str(small.socket)), timeout=600)
    with http:
        yield openai.OpenAI(base_url="http://edgeinfer/v1", api_key="unused", http_client=http)


def test_qwen_templates_render_tools_and_smollm_does_not(small_path: Path, tiny_path: Path) -> None:
    qwen = read_metadata(small_path)["tokenizer.chat_template"]
    smol = read_metadata(tiny_path)["tokenizer.chat_template"]
    assert isinstance(qwen, str) and template_supports_tools(qwen)
    assert isinstance(smol, str) and not template_supports_tools(smol)


def test_forced_call_and_tool_result_round_trip(sdk: openai.OpenAI) -> None:
    base = {"model": "small", "max_tokens": 64, "temperature": 0, "parallel_tool_calls": False}
    first = sdk.chat.completions.create(
        **base, messages=ASK, tools=[WEATHER], tool_choice="required"
    )  # type: ignore[call-overload]
    assert first.choices[0].finish_reason == "tool_calls"
    call = first.choices[0].message.tool_calls[0]
    assert call.function.name == "get_weather"
    assert valid_weather(call.function.arguments)["city"].lower() == "paris"
    history = [
        *ASK,
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": '{"temperature": 21, "sky": "sunny"}'},
    ]
    final = sdk.chat.completions.create(
        **base, messages=history, tools=[WEATHER], tool_choice="none"
    )  # type: ignore[call-overload]
    message = final.choices[0].message
    assert not message.tool_calls and message.content and message.content.strip()
    # the answer uses the tool's result, which only the tool turn carried
    assert "21" in message.content, message.content


def test_langchain_two_step_tool_loop(small: Daemon) -> None:
    """bind_tools → the model calls get_weather → the loop runs it → the model answers."""
    langchain_openai = pytest.importorskip("langchain_openai")
    from langchain_core.messages import HumanMessage, ToolMessage

    http = httpx.Client(transport=httpx.HTTPTransport(uds=str(small.socket)), timeout=600)
    llm = langchain_openai.ChatOpenAI(
        model="small", base_url="http://edgeinfer/v1", api_key="unused", http_client=http,
        temperature=0, max_tokens=64,
    )  # fmt: skip
    ran: list[dict[str, object]] = []

    def get_weather(city: str, unit: str) -> str:
        ran.append({"city": city, "unit": unit})
        return json.dumps({"temperature": 21, "unit": unit, "sky": "sunny"})

    with http:
        messages: list[object] = [HumanMessage(ASK[0]["content"])]
        step = llm.bind_tools([WEATHER], tool_choice="get_weather").invoke(messages)
        assert step.tool_calls and step.tool_calls[0]["name"] == "get_weather"
        messages.append(step)
        for call in step.tool_calls:
            messages.append(ToolMessage(get_weather(**call["args"]), tool_call_id=call["id"]))
        answer = llm.bind_tools([WEATHER], tool_choice="none").invoke(messages)
    assert ran and str(ran[0]["city"]).lower() == "paris"
    assert not answer.tool_calls
    assert isinstance(answer.content, str) and "21" in answer.content, answer.content
