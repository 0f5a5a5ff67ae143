"""Remote tiers against a misbehaving upstream, through the real daemon.

The upstream is a small HTTP server on loopback that answers by the first step of its path:
``drop`` streams two content chunks and then drops the connection, ``garbage`` streams a chunk
no OpenAI server would send, ``stall`` sends its headers and then nothing, ``record`` answers
normally. Every request it receives is recorded with its JSON body, so a test can see how many
times edgeinfer called it and what it sent. Also here: ``/v1/completions`` refusing edgeinfer
options it does not apply.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from edgeinfer.models.store import ModelStore
from tests.conftest import Daemon, short_socket_dir, start_daemon

pytestmark = pytest.mark.real

MODES = ("drop", "garbage", "stall", "record")


def _chunk(text: str | None = None, finish: str | None = None) -> dict[str, Any]:
    delta = {"content": text} if text is not None else {}
    return {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


class Upstream:
    """A scripted OpenAI-compatible upstream on 127.0.0.1 (HTTP/1.1, chunked SSE)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.release = threading.Event()  # ends the stalled answers at teardown
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _send(self, data: bytes) -> None:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                self.wfile.flush()

            def _event(self, chunk: dict[str, Any] | str) -> None:
                payload = chunk if isinstance(chunk, str) else json.dumps(chunk)
                self._send(f"data: {payload}\n\n".encode())

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                mode = self.path.split("/")[1]
                upstream.calls.append((mode, body))
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                self.wfile.flush()
                if mode == "stall":
                    upstream.release.wait(120)
                    self.close_connection = True
                    return
                if mode == "drop":
                    self._event(_chunk("Hello"))
                    self._event(_chunk(" world"))
                    time.sleep(0.2)  # both chunks reach edgeinfer before the connection drops
                    self.close_connection = True  # no terminating chunk: a broken stream
                    return
                if mode == "garbage":
                    self._event({"choices": ["not a choice object"]})
                else:
                    self._event(_chunk("Recorded"))
                    self._event(_chunk(".", "stop"))
                    self._event(
                        {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2}}
                    )
                self._event("[DONE]")
                self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, mode: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/{mode}/v1"

    def bodies(self, mode: str) -> list[dict[str, Any]]:
        return [body for m, body in self.calls if m == mode]

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    up = Upstream()
    yield up
    up.close()


@pytest.fixture(scope="module")
def remote_daemon(model_store: ModelStore, upstream: Upstream) -> Iterator[Daemon]:
    model_store.ensure("tiny")
    home = short_socket_dir() / "home"
    (home / "config").mkdir(parents=True)
    remotes = "".join(
        f'[remotes.{mode}]\nurl = "{upstream.url(mode)}"\nmodel = "up-{mode}"\n'
        "retries = 2\ntimeout = 60\n"
        for mode in MODES
    )
    (home / "config" / "models.toml").write_text(remotes)
    d = start_daemon("--models", "tiny", home=home)
    yield d
    d.stop()


def _body(model: str, **extra: Any) -> dict[str, Any]:
    return {
        "model": model,
        "messages": [{"role": "user", "content": "Say hello."}],
        "max_tokens": 8,
        "edgeinfer": {"cache": "off"},
        **extra,
    }


def _events(raw: str) -> list[Any]:
    return [json.loads(ln[6:]) for ln in raw.splitlines() if ln.startswith("data: {")]


def _text(events: list[Any]) -> str:
    return "".join(
        e["choices"][0]["delta"].get("content") or "" for e in events if e.get("choices")
    )


def test_a_stream_cut_after_its_first_tokens_is_never_retried(
    remote_daemon: Daemon, upstream: Upstream
) -> None:
    """Retrying after the first token would send the client the same text twice."""
    before = len(upstream.bodies("drop"))
    with remote_daemon.client(timeout=60) as c:
        raw = c.post("/v1/chat/completions", json=_body("drop", stream=True)).text
    events = _events(raw)
    assert _text(events) == "Hello world", raw
    assert events[-1]["error"]["code"] == "upstream_error", raw
    assert "data: [DONE]" not in raw
    assert len(upstream.bodies("drop")) - before == 1  # called once: no retry

    before = len(upstream.bodies("drop"))
    with remote_daemon.client(timeout=60) as c:
        resp = c.post("/v1/chat/completions", json=_body("drop"))
    assert resp.status_code == 502, resp.text
    assert resp.json()["error"]["code"] == "upstream_error"
    assert len(upstream.bodies("drop")) - before == 1


def test_an_unexpected_failure_ends_the_request_and_is_logged(
    remote_daemon: Daemon, upstream: Upstream
) -> None:
    """A chunk edgeinfer cannot read must fail the request, not leave the client waiting."""
    with remote_daemon.client(timeout=20) as c:
        resp = c.post("/v1/chat/completions", json=_body("garbage"))
        assert resp.status_code == 502, resp.text
        assert resp.json()["error"]["code"] == "upstream_error"
        assert "garbage" in resp.json()["error"]["message"]
        raw = c.post("/v1/chat/completions", json=_body("garbage", stream=True)).text
    assert _events(raw)[-1]["error"]["code"] == "upstream_error", raw
    log = remote_daemon.output()
    assert "Traceback" in log and "AttributeError" in log
    with remote_daemon.client(timeout=20) as c:
        assert c.get("/health").status_code == 200


def test_the_request_timeout_bounds_a_remote_that_stalls(
    remote_daemon: Daemon, upstream: Upstream
) -> None:
    """The remote's own timeout (60 s between bytes, here) does not outlast the request's."""
    started = time.monotonic()
    with remote_daemon.client(timeout=20) as c:
        resp = c.post("/v1/chat/completions", json=_body("stall", edgeinfer={"timeout": 1}))
        assert resp.status_code == 504, resp.text
        assert resp.json()["error"]["code"] == "timeout"
        raw = c.post(
            "/v1/chat/completions", json=_body("stall", stream=True, edgeinfer={"timeout": 1})
        ).text
    assert _events(raw)[-1]["error"]["code"] == "timeout", raw
    assert time.monotonic() - started < 10


def test_sampling_fields_reach_the_remote(remote_daemon: Daemon, upstream: Upstream) -> None:
    body = _body(
        "record",
        temperature=0.7,
        top_k=7,
        min_p=0.1,
        repeat_penalty=1.3,
        logit_bias={"15": -100, "42": 2.5},
        seed=11,
        stop=["\n\n"],
    )
    with remote_daemon.client(timeout=60) as c:
        reply = c.post("/v1/chat/completions", json=body)
    assert reply.status_code == 200, reply.text
    assert reply.json()["choices"][0]["message"]["content"] == "Recorded."
    sent = upstream.bodies("record")[-1]
    assert sent["model"] == "up-record" and sent["stream"] is True
    assert sent["top_k"] == 7 and sent["min_p"] == 0.1 and sent["repeat_penalty"] == 1.3
    assert sent["logit_bias"] == {"15": -100.0, "42": 2.5}
    assert sent["temperature"] == 0.7 and sent["seed"] == 11 and sent["stop"] == ["\n\n"]
    assert sent["max_tokens"] == 8

    # defaults stay the upstream's own: nothing is sent that the request did not ask for
    with remote_daemon.client(timeout=60) as c:
        assert c.post("/v1/chat/completions", json=_body("record")).status_code == 200
    sent = upstream.bodies("record")[-1]
    assert not {"top_k", "min_p", "repeat_penalty", "logit_bias"} & set(sent)


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"cache": "exact"}, ["edgeinfer.cache"]),
        ({"route": "best", "compress": False}, ["edgeinfer.route", "edgeinfer.compress"]),
        ({"continue_on_length": True, "timeout": 30}, ["edgeinfer.continue_on_length"]),
    ],
    ids=["cache", "route-compress", "continue"],
)
def test_completions_refuse_edgeinfer_options_they_do_not_apply(
    daemon: Daemon, options: dict[str, Any], named: list[str]
) -> None:
    body = {"model": "tiny", "prompt": "Once upon a time", "max_tokens": 4, "edgeinfer": options}
    with daemon.client() as c:
        resp = c.post("/v1/completions", json=body)
    assert resp.status_code == 400, resp.text
    err = resp.json()["error"]
    assert err["code"] == "invalid_request_error" and err["param"] == named[0]
    assert all(name in err["message"] for name in named), err["message"]
    assert "edgeinfer.timeout" not in err["message"].split("(")[0]


def test_completions_apply_the_timeout(daemon: Daemon) -> None:
    body = {"model": "tiny", "prompt": "Once upon a time", "max_tokens": 4}
    with daemon.client() as c:
        ok = c.post("/v1/completions", json={**body, "edgeinfer": {"timeout": 60}})
        assert ok.status_code == 200, ok.text
        cut = c.post(
            "/v1/completions",
            json={
                **body,
                "max_tokens": 2000,
                "logit_bias": {"0": -100, "2": -100, "4": -100},  # no end of text
                "edgeinfer": {"timeout": 0.3},
            },
        )
    assert cut.status_code == 504 and cut.json()["error"]["code"] == "timeout", cut.text
