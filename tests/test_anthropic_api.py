"""POST /v1/messages through the official ``anthropic`` SDK, on the real daemon and model."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anthropic
import pytest

from edgeinfer.errors import (
    Busy,
    EdgeInferError,
    InvalidRequest,
    ModelNotFound,
    ModelUnavailable,
    RequestTimeout,
)
from edgeinfer.server.anthropic import anthropic_error, error_body
from tests.conftest import Daemon

try:  # anthropic >= 2 is built on httpx2 and refuses httpx objects; older SDKs on httpx
    import httpx2 as sdk_httpx
except ImportError:  # pragma: no cover - depends on the installed SDK
    import httpx as sdk_httpx  # type: ignore[no-redef]


pytestmark = pytest.mark.real

# anthropic >= 2 dropped temperature / top_p / top_k from messages.create's arguments (older
# SDKs send them as fields); either way they reach the daemon as body fields.
GREEDY: dict[str, Any] = {"extra_body": {"temperature": 0}}


@pytest.fixture(name="client")
def client_fixture(daemon: Daemon) -> Iterator[anthropic.Anthropic]:
    """The anthropic SDK over the daemon's Unix socket (test_anthropic_tools.py uses it too)."""
    transport = sdk_httpx.HTTPTransport(uds=str(daemon.socket))
    http = sdk_httpx.Client(transport=transport, timeout=120)
    with anthropic.Anthropic(
        base_url="http://edgeinfer", api_key="unused", http_client=http, max_retries=0
    ) as c:
        yield c


def test_create_returns_an_anthropic_message(client: anthropic.Anthropic) -> None:
    msg = client.messages.create(
        model="tiny",
        max_tokens=24,
        **GREEDY,
        messages=[{"role": "user", "content": "Name three primary colors."}],
    )
    assert msg.type == "message" and msg.role == "assistant" and msg.model == "tiny"
    assert msg.id.startswith("msg_")
    assert len(msg.content) == 1 and msg.content[0].type == "text"
    assert msg.content[0].text.strip()
    assert msg.stop_reason in ("end_turn", "max_tokens")
    assert msg.usage.input_tokens > 0 and 0 < msg.usage.output_tokens <= 24


def test_max_tokens_and_stop_sequence_reasons(client: anthropic.Anthropic) -> None:
    question = [{"role": "user", "content": "Count from 1 to 20, separated by commas."}]
    cut = client.messages.create(model="tiny", max_tokens=3, **GREEDY, messages=question)
    assert cut.stop_reason == "max_tokens" and cut.usage.output_tokens == 3
    full = client.messages.create(model="tiny", max_tokens=40, **GREEDY, messages=question)
    text = full.content[0].text
    assert "5" in text, text
    stopped = client.messages.create(
        model="tiny", max_tokens=40, **GREEDY, messages=question, stop_sequences=["5"]
    )
    assert stopped.stop_reason == "stop_sequence" and stopped.stop_sequence == "5"
    assert stopped.content[0].text == text[: text.index("5")]
    again = client.messages.create(
        model="tiny", max_tokens=40, **GREEDY, messages=question, stop_sequences=["5"]
    )
    assert again.model_extra is not None and again.model_extra["edgeinfer"]["cache"]["layer"]
    assert (again.stop_reason, again.stop_sequence) == ("stop_sequence", "5")  # kept in cache


def test_system_prompt_as_string_and_blocks_is_applied(client: anthropic.Anthropic) -> None:
    ask = [{"role": "user", "content": [{"type": "text", "text": "Who are you?"}]}]
    system = "You are a pirate named Blackbeard. Always say your name."
    plain = client.messages.create(
        model="tiny", max_tokens=30, **GREEDY, system=system, messages=ask
    )
    blocks = client.messages.create(
        model="tiny",
        max_tokens=30,
        **GREEDY,
        system=[{"type": "text", "text": system}],
        messages=ask,
    )
    bare = client.messages.create(model="tiny", max_tokens=30, **GREEDY, messages=ask)
    assert plain.content[0].text == blocks.content[0].text
    assert plain.content[0].text != bare.content[0].text
    assert plain.usage.input_tokens != bare.usage.input_tokens  # (tiny has its own default)


def test_stream_matches_create(client: anthropic.Anthropic) -> None:
    kwargs = {
        "model": "tiny",
        "max_tokens": 20,
        "messages": [{"role": "user", "content": "Say hello in French."}],
        "extra_body": {"temperature": 0, "edgeinfer": {"cache": "off"}},
    }
    whole = client.messages.create(**kwargs)  # type: ignore[call-overload]
    with client.messages.stream(**kwargs) as stream:  # type: ignore[arg-type]
        pieces = list(stream.text_stream)
        final = stream.get_final_message()
    assert len(pieces) > 1
    assert "".join(pieces) == whole.content[0].text == final.content[0].text
    assert final.stop_reason == whole.stop_reason
    assert final.usage.output_tokens == whole.usage.output_tokens


def test_raw_sse_events_in_anthropic_order(daemon: Daemon) -> None:
    body = {
        "model": "tiny",
        "max_tokens": 5,
        "stream": True,
        "messages": [{"role": "user", "content": "Hi"}],
    }
    headers = {"x-api-key": "ignored", "anthropic-version": "2023-06-01"}
    with daemon.client() as c:
        r = c.post("/v1/messages", json=body, headers=headers)
    assert r.status_code == 200
    names = [line[7:] for line in r.text.splitlines() if line.startswith("event: ")]
    assert names[:3] == ["message_start", "content_block_start", "ping"]
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert set(names[3:-3]) == {"content_block_delta"}


def test_default_model_auto_goes_through_the_router(client: anthropic.Anthropic) -> None:
    msg = client.messages.create(
        model="auto", max_tokens=8, messages=[{"role": "user", "content": "Hi"}]
    )
    assert msg.model == "tiny"
    assert msg.model_extra is not None and "route" in msg.model_extra["edgeinfer"]


@pytest.mark.parametrize(
    ("kwargs", "error", "words"),
    [
        ({"model": "nope"}, anthropic.NotFoundError, "nope"),
        ({"extra_body": {"temperature": 1.5}}, anthropic.BadRequestError, "temperature"),
        (
            {
                "messages": [
                    {"role": "user", "content": [{"type": "image", "source": {"type": "url"}}]}
                ]
            },
            anthropic.BadRequestError,
            "messages.0.content: block 0: content blocks of type 'image' are not supported",
        ),
        (
            {"messages": [{"role": "assistant", "content": "Hi"}]},
            anthropic.BadRequestError,
            "prefill",
        ),
        ({"extra_body": {"frobnicate": 1}}, anthropic.BadRequestError, "frobnicate"),
    ],
)
def test_errors_in_anthropic_shape(
    client: anthropic.Anthropic, kwargs: dict[str, object], error: type[Exception], words: str
) -> None:
    args: dict[str, object] = {
        "model": "tiny",
        "max_tokens": 8,
        "messages": [{"role": "user", "content": "Hi"}],
        **kwargs,
    }
    with pytest.raises(error) as caught:
        client.messages.create(**args)  # type: ignore[call-overload]
    assert isinstance(caught.value, anthropic.APIStatusError)
    body = caught.value.body
    assert isinstance(body, dict) and body["type"] == "error"
    expected = "not_found_error" if error is anthropic.NotFoundError else "invalid_request_error"
    assert body["error"]["type"] == expected
    assert words in body["error"]["message"]


def test_missing_max_tokens_and_bad_json_are_400(daemon: Daemon) -> None:
    with daemon.client() as c:
        r = c.post("/v1/messages", json={"model": "tiny", "messages": [{"role": "user"}]})
        bad = c.post("/v1/messages", content=b"{not json", headers={"content-type": "x"})
    assert r.status_code == 400
    assert r.json()["error"]["type"] == "invalid_request_error"
    assert "max_tokens" in r.json()["error"]["message"]
    assert bad.status_code == 400 and bad.json()["type"] == "error"


@pytest.mark.parametrize(
    ("exc", "kind", "status"),
    [
        (InvalidRequest("x"), "invalid_request_error", 400),
        (ModelNotFound("x"), "not_found_error", 404),
        (Busy("x", retry_after=3), "overloaded_error", 503),
        (ModelUnavailable("x"), "overloaded_error", 503),
        (RequestTimeout("x"), "api_error", 504),
        (EdgeInferError("x"), "api_error", 500),
    ],
)
def test_error_types_map_to_anthropic_ones(exc: EdgeInferError, kind: str, status: int) -> None:
    response = anthropic_error(exc)
    assert response.status_code == status
    assert error_body(exc) == {"type": "error", "error": {"type": kind, "message": "x"}}
    assert ("retry-after" in response.headers) == isinstance(exc, Busy)
