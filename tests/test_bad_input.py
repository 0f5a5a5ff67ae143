"""Bad input gets a precise 4xx OpenAI error, and the daemon keeps serving afterwards."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import Daemon

pytestmark = pytest.mark.real

OK_MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize(
    ("body", "status", "code", "param"),
    [
        ({"model": "tiny"}, 400, "invalid_request_error", "messages"),
        ({"model": "tiny", "messages": []}, 400, "invalid_request_error", "messages"),
        ({"model": "nope", "messages": OK_MESSAGES}, 404, "model_not_found", "model"),
        (
            {"model": "tiny", "messages": OK_MESSAGES, "max_tokens": -5},
            400,
            "invalid_request_error",
            "max_tokens",
        ),
        (
            {"model": "tiny", "messages": OK_MESSAGES, "max_tokens": 10**9},
            400,
            "invalid_request_error",
            "max_tokens",
        ),
        (
            {"model": "tiny", "messages": OK_MESSAGES, "max_tokens": 100_000},
            400,
            "invalid_request_error",
            "max_tokens",
        ),
        (
            {"model": "tiny", "messages": OK_MESSAGES, "max_tokens": "5"},
            400,
            "invalid_request_error",
            "max_tokens",
        ),
        (
            {"model": "tiny", "messages": OK_MESSAGES, "temperature": "hot"},
            400,
            "invalid_request_error",
            "temperature",
        ),
        (
            {"model": "tiny", "messages": OK_MESSAGES, "temperature": 3},
            400,
            "invalid_request_error",
            "temperature",
        ),
        (
            {"model": "tiny", "messages": OK_MESSAGES, "stream": "yes"},
            400,
            "invalid_request_error",
            "stream",
        ),
        (
            {"model": "tiny", "messages": OK_MESSAGES, "stop": 7},
            400,
            "invalid_request_error",
            "stop",
        ),
        ({"model": 7, "messages": OK_MESSAGES}, 400, "invalid_request_error", "model"),
        (
            {"model": "tiny", "messages": [{"role": "wizard", "content": "x"}]},
            400,
            "invalid_request_error",
            "messages.0.role",
        ),
        (
            {"model": "tiny", "messages": [{"role": "user"}]},
            400,
            "invalid_request_error",
            "messages.0.content",
        ),
        ({"model": "tiny", "messages": "hello"}, 400, "invalid_request_error", "messages"),
        ({"model": "tiny", "messages": OK_MESSAGES, "n": 0}, 400, "invalid_request_error", "n"),
        (
            {"model": "tiny", "messages": OK_MESSAGES, "frobnicate": True},
            400,
            "invalid_request_error",
            "frobnicate",
        ),
        (
            {"model": "tiny", "messages": OK_MESSAGES, "seed": 1.5},
            400,
            "invalid_request_error",
            "seed",
        ),
    ],
)
def test_bad_chat_request(
    daemon: Daemon, body: dict[str, Any], status: int, code: str, param: str
) -> None:
    with daemon.client() as c:
        r = c.post("/v1/chat/completions", json=body)
        assert r.status_code == status, r.text
        err = r.json()["error"]
        assert err["code"] == code
        assert err["param"] == param
        assert err["message"]
        assert_still_serving(c)


def assert_still_serving(c: Any) -> None:
    assert c.get("/health").json()["models"]["tiny"]["status"] == "ready"
    ok = c.post(
        "/v1/chat/completions", json={"model": "tiny", "messages": OK_MESSAGES, "max_tokens": 2}
    )
    assert ok.status_code == 200


def test_malformed_json(daemon: Daemon) -> None:
    with daemon.client() as c:
        r = c.post(
            "/v1/chat/completions",
            content=b'{"model": "tiny", "messages": [',
            headers={"Content-Type": "application/json"},
        )
        assert r.status_code == 400
        assert r.json()["error"]["code"] == "invalid_request_error"
        assert "JSON" in r.json()["error"]["message"]
        assert_still_serving(c)


def test_prompt_longer_than_the_context(daemon: Daemon) -> None:
    long = "word " * 6000
    with daemon.client() as c:
        r = c.post(
            "/v1/chat/completions",
            json={"model": "tiny", "messages": [{"role": "user", "content": long}]},
        )
        assert r.status_code == 400
        err = r.json()["error"]
        assert err["code"] == "context_length_exceeded"
        assert "4096" in err["message"]
        streamed = c.post(
            "/v1/chat/completions",
            json={"model": "tiny", "stream": True, "messages": [{"role": "user", "content": long}]},
        )
        assert streamed.status_code == 400
        assert streamed.json()["error"]["code"] == "context_length_exceeded"
        assert_still_serving(c)


def test_unknown_route_is_openai_error(daemon: Daemon) -> None:
    with daemon.client() as c:
        r = c.get("/v1/nothing")
        assert r.status_code == 404
        assert r.json()["error"]["code"] == "not_found"


def test_client_hanging_up_mid_stream_frees_the_slot(daemon: Daemon) -> None:
    body = {
        "model": "tiny",
        "messages": [{"role": "user", "content": "Count to one thousand."}],
        "max_tokens": 2000,
        "stream": True,
        "temperature": 0,
    }
    with daemon.client() as c:
        with c.stream("POST", "/v1/chat/completions", json=body) as r:
            for _ in zip(range(5), r.iter_lines(), strict=False):
                pass
        # the stream is closed: within a moment no slot is busy and nothing is queued
        import time

        for _ in range(50):
            stats = c.get("/stats").json()["models"]["tiny"]
            if stats["slots_busy"] == 0:
                break
            time.sleep(0.1)
        assert stats["slots_busy"] == 0 and stats["queue_depth"] == 0
        assert stats["cancelled"] >= 1
        assert_still_serving(c)


def test_oversized_body_is_refused_before_it_is_read(daemon: Daemon) -> None:
    huge = b'{"model": "tiny", "messages": [{"role": "user", "content": "' + b"x" * (9 << 20)
    with daemon.client() as c:
        declared = c.post(
            "/v1/chat/completions", content=huge, headers={"Content-Type": "application/json"}
        )
        assert declared.status_code == 413
        assert declared.json()["error"]["code"] == "request_too_large"

        def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
            for _ in range(10):
                yield b"x" * (1 << 20)

        streamed = c.post(
            "/v1/chat/completions", content=chunks(), headers={"Content-Type": "application/json"}
        )
        assert streamed.status_code == 413
        assert_still_serving(c)
