"""The Ollama API (``/api/...``) of the real daemon serving the real `tiny` model, through the
official ``ollama`` Python client over the Unix socket, and as raw NDJSON through httpx."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import httpx
import ollama
import pytest

from tests.conftest import MODELS_DIR, Daemon, short_socket_dir, start_daemon

pytestmark = pytest.mark.real

TINY_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
GREEDY = {"temperature": 0, "num_predict": 16}
QUESTION = [{"role": "user", "content": "Name three primary colors."}]
DURATIONS = ("total_duration", "load_duration", "prompt_eval_duration", "eval_duration")


@pytest.fixture
def client(daemon: Daemon) -> Iterator[ollama.Client]:
    transport = httpx.HTTPTransport(uds=str(daemon.socket))
    with ollama.Client(host="http://edgeinfer", transport=transport, timeout=120) as c:
        yield c


def ndjson(r: httpx.Response) -> list[dict[str, Any]]:
    assert r.headers["content-type"].startswith("application/x-ndjson"), r.headers
    return [json.loads(line) for line in r.text.splitlines() if line]


def check_final(line: dict[str, Any]) -> None:
    """The last line of an answer: Ollama's fields with Ollama's types."""
    assert line["done"] is True
    assert line["done_reason"] in ("stop", "length")
    for key in (*DURATIONS, "prompt_eval_count", "eval_count"):
        assert type(line[key]) is int and line[key] >= 0, key
    assert line["total_duration"] >= line["eval_duration"]
    assert line["prompt_eval_count"] > 0 and line["eval_count"] > 0


def test_chat_with_the_official_client(client: ollama.Client) -> None:
    r = client.chat(model="tiny", messages=QUESTION, options=GREEDY)
    assert r.model == "tiny:latest"
    assert r.message.role == "assistant" and len(r.message.content or "") > 5
    assert r.done and r.done_reason in ("stop", "length")
    assert r.prompt_eval_count and r.prompt_eval_count > 5
    assert r.eval_count and 0 < r.eval_count <= 16
    assert r.total_duration and r.total_duration > 0
    datetime.fromisoformat(r.created_at or "")


def test_chat_streamed_matches_non_streamed(client: ollama.Client) -> None:
    question = [{"role": "user", "content": "What is the capital of France?"}]
    whole = client.chat(model="tiny:latest", messages=question, options=GREEDY)
    parts = list(client.chat(model="tiny", messages=question, options=GREEDY, stream=True))
    assert len(parts) >= 2
    assert all(not p.done for p in parts[:-1]) and parts[-1].done
    assert "".join(p.message.content or "" for p in parts) == whole.message.content
    assert parts[-1].eval_count == whole.eval_count


def test_generate_with_system_and_raw(client: ollama.Client) -> None:
    r = client.generate(model="tiny", prompt="Say hello.", system="Be brief.", options=GREEDY)
    assert r.done and len(r.response) > 0
    raw = client.generate(model="tiny", prompt="The capital of France is", raw=True, options=GREEDY)
    assert raw.done and raw.eval_count and raw.eval_count <= 16
    streamed = list(client.generate(model="tiny", prompt="Say hello.", options=GREEDY, stream=True))
    assert streamed[-1].done and "".join(p.response for p in streamed)


def test_list_show_ps(client: ollama.Client) -> None:
    listed = {m.model: m for m in client.list().models}
    tiny = listed["tiny:latest"]
    assert tiny.digest == TINY_SHA256
    assert tiny.size == (MODELS_DIR / "tiny" / "model.gguf").stat().st_size
    assert tiny.details is not None
    assert tiny.details.format == "gguf" and tiny.details.quantization_level == "Q4_1"
    assert tiny.details.family == "llama"

    shown = client.show("tiny:latest")
    assert shown.details is not None and shown.details.quantization_level == "Q4_1"
    assert "im_start" in (shown.template or "")  # SmolLM2's ChatML template, from the GGUF
    assert shown.modelinfo is not None and shown.modelinfo["general.architecture"] == "llama"
    assert "num_ctx" in (shown.parameters or "")

    loaded = {m.model: m for m in client.ps().models}
    assert loaded["tiny:latest"].digest == TINY_SHA256
    assert (loaded["tiny:latest"].size or 0) > 0 and loaded["tiny:latest"].context_length


def test_embed_uses_the_daemons_embedder(client: ollama.Client, daemon: Daemon) -> None:
    r = client.embed(model="all-minilm", input=["a red apple", "a green pear"])
    assert len(r.embeddings) == 2 and all(len(v) == 384 for v in r.embeddings)
    assert abs(sum(x * x for x in r.embeddings[0]) - 1.0) < 1e-3
    with daemon.client() as c:
        v1 = c.post("/v1/embeddings", json={"input": "a red apple"}).json()["data"][0]
    assert r.embeddings[0] == pytest.approx(v1["embedding"], abs=1e-6)
    short = client.embed(model="all-minilm:latest", input="a red apple", dimensions=64)
    assert len(short.embeddings[0]) == 64
    assert abs(sum(x * x for x in short.embeddings[0]) - 1.0) < 1e-3
    old = client.embeddings(model="all-minilm", prompt="a red apple")
    assert list(old.embedding) == pytest.approx(r.embeddings[0], abs=1e-6)
    with pytest.raises(ollama.ResponseError) as refused:
        client.embed(model="tiny", input="x")  # a chat model does not embed here
    assert refused.value.status_code == 400


def test_raw_ndjson_chat_and_generate(daemon: Daemon) -> None:
    with daemon.client() as c:
        chat = ndjson(
            c.post("/api/chat", json={"model": "tiny", "messages": QUESTION, "options": GREEDY})
        )
        hi = {"model": "tiny", "prompt": "Hi", "options": GREEDY}
        gen = ndjson(c.post("/api/generate", json=hi))
        once = {"model": "tiny", "messages": QUESTION, "stream": False, "options": GREEDY}
        whole = c.post("/api/chat", json=once)
    for lines, field in ((chat, "message"), (gen, "response")):
        for line in lines[:-1]:
            assert line["done"] is False and line["model"] == "tiny:latest" and field in line
            datetime.fromisoformat(line["created_at"])
        check_final(lines[-1])
    assert all(line["message"]["role"] == "assistant" for line in chat)
    assert all(isinstance(line["response"], str) for line in gen)
    assert whole.headers["content-type"] == "application/json"
    check_final(whole.json())
    assert whole.json()["edgeinfer"]["model"] == "tiny"


def test_format_json_and_schema(daemon: Daemon) -> None:
    """``format`` takes the response_format path (a grammar; slow per token, so few tokens)."""
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
    body = {"model": "tiny", "prompt": "Is Paris in France? Answer as JSON.", "stream": False}
    with daemon.client() as c:
        r = c.post("/api/generate", json={**body, "format": schema, "options": {"num_predict": 24}})
        assert r.status_code == 200, r.text
        assert r.json()["done_reason"] == "stop", r.json()
        assert isinstance(json.loads(r.json()["response"])["ok"], bool)
        r = c.post("/api/generate", json={**body, "format": "json", "options": {"num_predict": 4}})
        assert r.status_code == 200, r.text
        assert r.json()["response"].lstrip().startswith("{")


def test_errors_are_ollama_shaped(client: ollama.Client, daemon: Daemon) -> None:
    with pytest.raises(ollama.ResponseError) as missing:
        client.chat(model="nope", messages=QUESTION)
    assert missing.value.status_code == 404
    with daemon.client() as c:
        cases = [
            ("/api/chat", {"model": "nope", "messages": QUESTION}, 404, "nope"),
            ("/api/show", {"model": "nope"}, 404, "nope"),
            ("/api/chat", {"messages": QUESTION}, 400, "model"),
            ("/api/chat", {"model": "", "messages": QUESTION}, 400, "model"),
            ("/api/chat", {"model": "tiny", "messages": "hi"}, 400, "messages"),
            ("/api/generate", {"model": "tiny", "prompt": "x", "options": {"mirostat": 2}}, 400,
             "options.mirostat"),
            ("/api/generate", {"model": "tiny", "prompt": "x", "images": ["aGk="]}, 400, "images"),
            ("/api/chat", {"model": "tiny", "messages": QUESTION, "tools": [{}]}, 400, "tools"),
            ("/api/embed", {"model": "nope", "input": "x"}, 404, "all-minilm"),
            ("/api/pull", {"model": "nope"}, 404, "nope"),
        ]  # fmt: skip
        for path, body, status, names in cases:
            r = c.post(path, json=body)
            assert r.status_code == status, (path, body, r.text)
            error = r.json()["error"]
            assert isinstance(error, str) and names in error, (body, error)
        bad_json = c.post("/api/chat", content=b"{not json")
        assert bad_json.status_code == 400 and "JSON" in bad_json.json()["error"]
        # `curl -d` (Ollama's own examples) labels a JSON body as a form
        form = {"content-type": "application/x-www-form-urlencoded"}
        body = json.dumps({"model": "tiny", "prompt": "Hi", "stream": False, "options": GREEDY})
        assert c.post("/api/generate", content=body, headers=form).json()["done"] is True
        unknown = c.post("/api/create", json={"model": "x"})
        assert unknown.status_code == 404 and "error" in unknown.json()
        huge = c.post("/api/chat", content=b"x" * (9 << 20))  # past the 8 MiB body limit
        assert huge.status_code == 413 and isinstance(huge.json()["error"], str)


def test_version_and_pull(client: ollama.Client, daemon: Daemon) -> None:
    with daemon.client() as c:
        assert isinstance(c.get("/api/version").json()["version"], str)
    steps = list(client.pull("tiny:latest", stream=True))  # already verified: no download
    assert steps[0].status == "pulling manifest" and steps[-1].status == "success"
    assert any(s.digest == f"sha256:{TINY_SHA256}" for s in steps)
    assert client.pull("tiny").status == "success"


def test_route_auto_goes_through_the_router(daemon: Daemon) -> None:
    body = {"model": "auto", "messages": QUESTION, "stream": False, "options": GREEDY}
    with daemon.client() as c:
        r = c.post("/api/chat", json=body)
    assert r.status_code == 200, r.text
    assert r.json()["edgeinfer"]["route"]["route"] in ("cheapest", "cascade", "best", "cache")


def test_empty_prompt_loads_and_keep_alive_zero_unloads(client: ollama.Client) -> None:
    gone = client.generate(model="tiny", keep_alive=0)
    assert gone.done_reason == "unload"
    assert "tiny:latest" not in {m.model for m in client.ps().models}
    back = client.chat(model="tiny:latest", messages=[])
    assert back.done_reason == "load"
    assert "tiny:latest" in {m.model for m in client.ps().models}
    assert client.chat(model="tiny", messages=QUESTION, options=GREEDY).done


def test_over_tcp_with_the_bearer_token(tiny_path: object, monkeypatch: pytest.MonkeyPatch) -> None:
    token = "ollama-over-tcp-token-0123456789"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    monkeypatch.setenv("EDGEINFER_TOKEN", token)
    home = short_socket_dir() / "home"
    d = start_daemon("--models", "tiny", "--no-cache", "--tcp", f"127.0.0.1:{port}", home=home)
    try:
        host = f"http://127.0.0.1:{port}"
        with ollama.Client(host=host, headers={"Authorization": f"Bearer {token}"}) as c:
            assert c.generate(model="tiny", prompt="Hi", options=GREEDY).done
            assert [m.model for m in c.list().models] == ["tiny:latest"]
        r = httpx.get(f"{host}/api/tags")  # no token
        assert r.status_code == 401 and isinstance(r.json()["error"], str)
    finally:
        d.stop()
