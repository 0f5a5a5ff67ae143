"""Fuzz the real daemon with schemathesis from its own OpenAPI schema: no 5xx, no crash.

Cases are sent over the Unix socket with httpx; generated ``max_tokens`` are capped so a valid
case costs a few tokens of the real model, not minutes.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from tests.conftest import Daemon, short_socket_dir, start_daemon

pytestmark = pytest.mark.real


@pytest.fixture(scope="module")
def fuzz_daemon(tiny_path: Path) -> Iterator[Daemon]:
    home = short_socket_dir() / "home"
    d = start_daemon("--models", "tiny", home=home)
    yield d
    d.stop()


@pytest.fixture(scope="module")
def api_schema(fuzz_daemon: Daemon) -> Any:
    with fuzz_daemon.client() as c:
        raw = c.get("/openapi.json").json()
    return schemathesis.openapi.from_dict(raw)


schema = schemathesis.pytest.from_fixture("api_schema")


def _cap_ollama(body: Any, url: str) -> Any:
    """The Ollama routes: a few tokens, one JSON object, and nothing that changes the daemon
    for the cases after (``keep_alive: 0`` unloads, a pull of another model downloads it)."""
    if isinstance(body, dict):
        body.pop("keep_alive", None)
        body["stream"] = False
        options = body.get("options")
        if isinstance(options, dict):
            options["num_predict"] = 8
        else:
            body["options"] = {"num_predict": 8}
        if url.endswith("/api/pull"):
            body["model"] = "tiny"
    return body


def _cap(body: Any) -> Any:
    if isinstance(body, dict):
        for key in ("max_tokens", "max_completion_tokens"):
            if not isinstance(body.get(key), int) or body[key] > 8:
                body[key] = 8  # also when absent: the default is the whole context
        body.pop("stream", None)  # streamed answers are covered elsewhere; keep cases short
    return body


@schema.parametrize()
@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_server_errors(case: Any, fuzz_daemon: Daemon) -> None:
    kwargs = case.as_transport_kwargs(base_url="http://edgeinfer")
    if "json" in kwargs:
        ollama = "/api/" in kwargs["url"]
        body = kwargs["json"]
        kwargs["json"] = _cap_ollama(body, kwargs["url"]) if ollama else _cap(body)
    transport = httpx.HTTPTransport(uds=str(fuzz_daemon.socket))
    with httpx.Client(transport=transport, timeout=120) as client:
        response = client.request(
            kwargs["method"],
            kwargs["url"],
            headers={
                k: v
                for k, v in (kwargs.get("headers") or {}).items()
                if k.lower() != "content-length"
            },
            params=kwargs.get("params"),
            json=kwargs.get("json"),
        )
    error = response.json().get("error") if response.status_code >= 500 else None
    code = error.get("code") if isinstance(error, dict) else None  # Ollama's is a string
    assert (
        response.status_code < 500
        or code in ("busy", "timeout", "model_unavailable")
        or ("/api/" in kwargs["url"] and response.status_code in (503, 504))
    ), (case.as_curl_command(), response.status_code, response.text[:500])


def test_daemon_healthy_after_fuzzing(fuzz_daemon: Daemon) -> None:
    with fuzz_daemon.client() as c:
        assert c.get("/health").json()["models"]["tiny"]["status"] == "ready"
