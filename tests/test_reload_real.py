"""Hot reload against the real daemon and the real `tiny` model.

Editing models.toml while answers stream: none fails, a changed model swaps runners behind
the streams, and an added model appears in /v1/models and loads. An invalid edit keeps the last
good config and shows the error in /health; SIGHUP reloads.
"""

from __future__ import annotations

import json
import shutil
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Daemon, short_socket_dir, start_daemon, wait_for

pytestmark = pytest.mark.real

# tiny only: the other bundled models would be pulled; tiny-q8 (already in the test store) is
# the model a reload adds.
BASE = """
[models.small]
serve = false
[models.large]
serve = false
"""


def write_user_config(home: Path, text: str) -> None:
    path = home / "config" / "models.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(path)  # as editors save: never a half-written file


@pytest.fixture
def served(tiny_path: Path, model_store: Any) -> Iterator[Daemon]:
    model_store.ensure("tiny-q8")
    home = short_socket_dir() / "home"
    write_user_config(home, BASE)
    d = start_daemon("--no-cache", home=home)
    yield d
    d.stop()
    shutil.rmtree(d.socket.parent, ignore_errors=True)


def health(d: Daemon) -> dict[str, Any]:
    with d.client(timeout=10) as c:
        body: dict[str, Any] = c.get("/health").json()
        return body


def stream_chat(d: Daemon, model: str, question: str, started: threading.Event) -> list[Any]:
    """One streamed chat; the parsed SSE events (the last is "[DONE]" when it succeeded)."""
    body = {
        "model": model,
        "messages": [{"role": "user", "content": question}],
        "max_tokens": 160,
        "temperature": 0,
        "stream": True,
    }
    events: list[Any] = []
    with d.client() as c, c.stream("POST", "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200, r.read()
        for line in r.iter_lines():
            if line.startswith("data: "):
                payload = line.removeprefix("data: ")
                events.append(payload if payload == "[DONE]" else json.loads(payload))
                started.set()
    return events


def test_editing_models_toml_while_requests_stream(served: Daemon) -> None:
    d = served
    assert set(health(d)["models"]) == {"tiny"}
    results: dict[int, list[Any]] = {}
    started = [threading.Event() for _ in range(6)]

    def run(i: int) -> None:
        results[i] = stream_chat(
            d, "tiny", f"Count from {i} to {i + 200}, one per line.", started[i]
        )

    threads = [threading.Thread(target=run, args=(i,)) for i in range(6)]
    for t in threads[:3]:
        t.start()
    for ev in started[:3]:
        assert ev.wait(120)
    # tiny changes an engine key (restart behind the streams); tiny-q8 is added
    write_user_config(
        d.home, BASE + "[models.tiny]\nn_ctx = 2048\n[models.tiny-q8]\nserve = true\n"
    )
    for t in threads[3:]:  # more requests while the reload is under way
        t.start()
    for t in threads:
        t.join(180)
    for i in range(6):
        events = results[i]
        assert events[-1] == "[DONE]", events[-3:]
        assert not any("error" in e for e in events if isinstance(e, dict))
        assert events[-2]["choices"][0]["finish_reason"] in ("stop", "length")

    def reloaded() -> dict[str, Any] | None:
        h = health(d)
        return h if h["config"]["generation"] >= 2 and "tiny-q8" in h["models"] else None

    h = wait_for(reloaded, "the reload")
    assert h["config"]["ok"] and h["config"]["trigger"] == "file change"
    with d.client() as c:
        ids = [m["id"] for m in c.get("/v1/models").json()["data"]]
        assert {"tiny", "tiny-q8"} <= set(ids)
        loaded = c.post("/admin/models/tiny-q8/load").json()
        assert loaded["status"] == "ready", loaded
        r = c.post(
            "/v1/chat/completions",
            json={"model": "tiny-q8", "messages": [{"role": "user", "content": "Hi"}],
                  "max_tokens": 8},
        )  # fmt: skip
        assert r.status_code == 200, r.text
        stats = c.get("/stats").json()
    tiny = stats["models"]["tiny"]
    assert tiny["status"] == "ready" and tiny["memory_estimated_bytes"] > 0
    assert stats["memory"]["used_bytes"] > 0 and stats["memory"]["budget_bytes"] > 0
    wait_for(lambda: health(d)["memory"]["draining"] == 0, "the old tiny runner to drain")
    assert "model tiny: replaced after a config change; runner stopped" in d.output()
    assert "Traceback" not in d.output()


def test_invalid_file_keeps_the_last_good_config_and_sighup_reloads(served: Daemon) -> None:
    d = served
    d.proc.send_signal(signal.SIGHUP)
    h = wait_for(
        lambda: (x := health(d))["config"]["trigger"] == "SIGHUP" and x, "the SIGHUP reload"
    )
    assert h["config"]["ok"] and h["config"]["generation"] == 2 and d.proc.poll() is None

    write_user_config(d.home, BASE + "[models.tiny]\nslotz = 2\n")
    h = wait_for(lambda: not (x := health(d))["config"]["ok"] and x, "the failed reload")
    assert "slotz: unknown key (did you mean 'slots'?)" in h["config"]["error"]
    assert h["config"]["path"] == str(d.home / "config" / "models.toml")
    assert h["config"]["generation"] == 2  # the last good config is still in force
    assert h["models"]["tiny"]["status"] == "ready"
    with d.client() as c:
        r = c.post(
            "/v1/chat/completions",
            json={"model": "tiny", "messages": [{"role": "user", "content": "Hi"}],
                  "max_tokens": 4},
        )  # fmt: skip
        assert r.status_code == 200, r.text
        assert c.get("/stats").json()["config"]["ok"] is False
        assert c.post("/admin/reload").status_code == 422
    assert "keeping the last good config" in d.output()
