"""The real daemon, on a real Unix socket, serving the real `tiny` model (SmolLM2-135M)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from llama_cpp import Llama

from edgeinfer.engine.base import EngineParams
from edgeinfer.engine.llama import Loader, llama_defaults
from tests.conftest import Daemon

pytestmark = pytest.mark.real

QUESTION = [{"role": "user", "content": "Name three primary colors."}]
NO_CACHE = {"cache": "off"}  # tests of the engine itself, not of the response cache


def chat(daemon: Daemon, **body: Any) -> httpx.Response:
    with daemon.client() as c:
        return c.post("/v1/chat/completions", json={"model": "tiny", **body})


def sse_events(raw: str) -> list[Any]:
    lines = [line[6:] for line in raw.splitlines() if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    return [json.loads(x) for x in lines[:-1]]


def test_chat_non_streamed(daemon: Daemon) -> None:
    r = chat(daemon, messages=QUESTION, max_tokens=24, temperature=0)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "chat.completion"
    choice = body["choices"][0]
    assert choice["message"]["role"] == "assistant"
    assert len(choice["message"]["content"]) > 5
    assert choice["finish_reason"] in ("stop", "length")
    usage = body["usage"]
    assert usage["prompt_tokens"] > 5 and 0 < usage["completion_tokens"] <= 24
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert "cached_tokens" in usage["prompt_tokens_details"]
    assert body["edgeinfer"]["model"] == "tiny"
    assert len(body["edgeinfer"]["model_sha256"]) == 64


def test_chat_streamed_matches_non_streamed(daemon: Daemon) -> None:
    """Both answers are generated, not replayed: ``stream`` is no part of the cache key, so with
    the cache on the streamed one would replay the stored non-streamed answer in one piece."""
    body = {"messages": QUESTION, "max_tokens": 24, "temperature": 0, "edgeinfer": NO_CACHE}
    whole = chat(daemon, **body).json()
    with daemon.client() as c:
        r = c.post("/v1/chat/completions", json={"model": "tiny", **body, "stream": True})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    events = sse_events(r.text)
    assert whole["edgeinfer"]["cache"]["layer"] is None
    assert events[-1]["edgeinfer"]["cache"]["layer"] is None
    assert events[0]["choices"][0]["delta"]["role"] == "assistant"
    pieces = [e["choices"][0]["delta"].get("content", "") for e in events if e["choices"]]
    assert len([p for p in pieces if p]) > 1  # token by token, as a generation streams
    assert "".join(pieces) == whole["choices"][0]["message"]["content"]
    assert events[-1]["choices"][0]["finish_reason"] == whole["choices"][0]["finish_reason"]
    assert events[-1]["edgeinfer"]["model"] == "tiny"
    assert events[-1]["usage"]["completion_tokens"] == whole["usage"]["completion_tokens"]


def test_repeated_prompt_reuses_the_kv_prefix(daemon: Daemon) -> None:
    messages = [{"role": "user", "content": "Repeat after me: the quick brown fox."}]
    chat(daemon, messages=messages, max_tokens=4, temperature=0, edgeinfer=NO_CACHE)
    again = chat(daemon, messages=messages, max_tokens=4, temperature=0, edgeinfer=NO_CACHE).json()
    cached = again["usage"]["prompt_tokens_details"]["cached_tokens"]
    assert cached == again["usage"]["prompt_tokens"] - 1


def test_completions_streamed_and_not(daemon: Daemon) -> None:
    body = {
        "model": "tiny",
        "prompt": "The capital of France is",
        "max_tokens": 8,
        "temperature": 0,
    }
    with daemon.client() as c:
        whole = c.post("/v1/completions", json=body)
        streamed = c.post("/v1/completions", json={**body, "stream": True})
    assert whole.status_code == 200, whole.text
    text = whole.json()["choices"][0]["text"]
    assert whole.json()["object"] == "text_completion" and text
    assert "".join(e["choices"][0]["text"] for e in sse_events(streamed.text)) == text


def test_openai_sdk_over_the_socket(daemon: Daemon) -> None:
    http = httpx.Client(transport=httpx.HTTPTransport(uds=str(daemon.socket)))
    client = openai.OpenAI(base_url="http://edgeinfer/v1", api_key="unused", http_client=http)
    try:
        models = [m.id for m in client.models.list()]
        assert models == ["tiny", "auto"]  # auto: the router
        resp = client.chat.completions.create(
            model="tiny",
            messages=QUESTION,
            max_tokens=16,
            temperature=0,
            seed=1,  # type: ignore[arg-type]
        )
        assert resp.choices[0].message.content
        assert resp.usage is not None and resp.usage.completion_tokens > 0
        assert (resp.model_extra or {})["edgeinfer"]["model"] == "tiny"
        stream = client.chat.completions.create(
            model="tiny",
            messages=QUESTION,
            max_tokens=16,
            temperature=0,
            stream=True,  # type: ignore[arg-type]
        )
        text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        assert text == resp.choices[0].message.content
        with pytest.raises(openai.NotFoundError) as err:
            client.chat.completions.create(model="nope", messages=QUESTION)  # type: ignore[arg-type]
        assert err.value.code == "model_not_found"
    finally:
        client.close()


def test_curl_unix_socket(daemon: Daemon) -> None:
    body = json.dumps({"model": "tiny", "messages": QUESTION, "max_tokens": 8, "temperature": 0})
    out = subprocess.run(
        [
            "curl",
            "-sS",
            "--unix-socket",
            str(daemon.socket),
            "http://localhost/v1/chat/completions",
            "-H",
            "Content-Type: application/json",
            "-d",
            body,
        ],
        capture_output=True,
        check=True,
        text=True,
        timeout=120,
    )
    assert json.loads(out.stdout)["choices"][0]["message"]["content"]


@pytest.fixture(scope="module")
def reference(tiny_path: Path) -> Llama:
    """llama-cpp-python's own high-level Llama on the same file: the baseline to match."""
    # flash attention changes the arithmetic; edgeinfer's "auto" turns it on for this CPU.
    # Extra buffer types as edgeinfer's probe decided (they change kernels, and crash on some).
    params = EngineParams(threads=2, name="tiny")
    with llama_defaults(extra_buffers=Loader().extra_buffers(tiny_path, params)):
        return Llama(str(tiny_path), n_ctx=4096, n_threads=2, flash_attn=True, verbose=False)


@pytest.mark.parametrize(
    "messages",
    [
        QUESTION,
        [
            {"role": "system", "content": "You answer in one short sentence."},
            {"role": "user", "content": "Why is the sky blue?"},
        ],
    ],
)
def test_greedy_chat_equals_llama_cpp_python(
    daemon: Daemon, reference: Llama, messages: list[dict[str, str]]
) -> None:
    # repeat_penalty spelled out: tiny's default (models.toml) is 1.1, llama-cpp-python's 1.0
    ours = chat(daemon, messages=messages, max_tokens=48, temperature=0, repeat_penalty=1.0).json()
    theirs = reference.create_chat_completion(
        messages,  # type: ignore[arg-type]
        max_tokens=48,
        temperature=0,
        repeat_penalty=1.0,
    )
    assert ours["choices"][0]["message"]["content"] == theirs["choices"][0]["message"]["content"]  # type: ignore[index]
    assert ours["usage"]["prompt_tokens"] == theirs["usage"]["prompt_tokens"]  # type: ignore[index]


def test_greedy_completion_equals_llama_cpp_python(daemon: Daemon, reference: Llama) -> None:
    prompt = "Once upon a time, in a small village,"
    with daemon.client() as c:
        ours = c.post(
            "/v1/completions",
            json={
                "model": "tiny",
                "prompt": prompt,
                "max_tokens": 40,
                "temperature": 0,
                "repeat_penalty": 1.0,  # tiny's default is 1.1
            },
        ).json()
    theirs = reference.create_completion(prompt, max_tokens=40, temperature=0, repeat_penalty=1.0)
    assert ours["choices"][0]["text"] == theirs["choices"][0]["text"]  # type: ignore[index]


def test_logprobs_and_top_logprobs(daemon: Daemon) -> None:
    r = chat(daemon, messages=QUESTION, max_tokens=6, temperature=0, logprobs=True, top_logprobs=3)
    assert r.status_code == 200, r.text
    body = r.json()
    content = body["choices"][0]["logprobs"]["content"]
    assert len(content) == body["usage"]["completion_tokens"]
    for entry in content:
        assert entry["logprob"] <= 0.0
        assert len(entry["top_logprobs"]) == 3
        # greedy: the sampled token is the most likely one
        assert entry["logprob"] == pytest.approx(entry["top_logprobs"][0]["logprob"])
        assert bytes(entry["bytes"]).decode("utf-8", "replace") == entry["token"]
    joined = b"".join(bytes(e["bytes"]) for e in content).decode("utf-8", "replace")
    assert joined == body["choices"][0]["message"]["content"]
    plain = chat(daemon, messages=QUESTION, max_tokens=6, temperature=0).json()
    assert plain["choices"][0]["logprobs"] is None


def test_response_format_json_schema_constrains_the_output(daemon: Daemon) -> None:
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}, "population": {"type": "integer"}},
        "required": ["city", "population"],
    }
    r = chat(
        daemon,
        messages=[{"role": "user", "content": "Give me a city and its population as JSON."}],
        max_tokens=60,
        temperature=0,
        response_format={"type": "json_schema", "json_schema": {"name": "c", "schema": schema}},
    )
    assert r.status_code == 200, r.text
    data = json.loads(r.json()["choices"][0]["message"]["content"])
    assert set(data) == {"city", "population"}
    assert isinstance(data["city"], str) and isinstance(data["population"], int)


def test_response_format_json_object(daemon: Daemon) -> None:
    r = chat(
        daemon,
        messages=[{"role": "user", "content": "Describe a cat as JSON."}],
        max_tokens=80,
        temperature=0,
        response_format={"type": "json_object"},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    if body["choices"][0]["finish_reason"] == "stop":
        assert isinstance(json.loads(body["choices"][0]["message"]["content"]), dict)
    else:  # cut by max_tokens: still a JSON object's beginning
        assert body["choices"][0]["message"]["content"].lstrip().startswith("{")


def test_per_request_timeout(daemon: Daemon) -> None:
    r = chat(
        daemon,
        messages=QUESTION,
        max_tokens=2000,
        logit_bias={"0": -100, "2": -100, "4": -100},
        edgeinfer={"timeout": 0.3},
    )
    assert r.status_code == 504
    assert r.json()["error"]["code"] == "timeout"


def test_repetition_penalties_apply(daemon: Daemon) -> None:
    messages = [{"role": "user", "content": "List the numbers from one to twenty, one per line."}]
    plain = chat(  # no penalty at all (tiny's default repeat_penalty is 1.1)
        daemon,
        messages=messages,
        max_tokens=30,
        temperature=0,
        repeat_penalty=1.0,
        edgeinfer=NO_CACHE,
    )
    penalised = chat(
        daemon,
        messages=messages,
        max_tokens=30,
        temperature=0,
        repeat_penalty=1.8,
        presence_penalty=1.5,
        frequency_penalty=1.5,
        edgeinfer=NO_CACHE,
    )
    assert plain.status_code == penalised.status_code == 200, penalised.text
    plain_text = plain.json()["choices"][0]["message"]["content"]
    penalised_text = penalised.json()["choices"][0]["message"]["content"]
    # unpenalised, the model repeats itself ("1. 1\n2. 2\n..."); penalised, it cannot
    assert penalised_text != plain_text
    assert plain_text.count("\n") > penalised_text.count("\n")


def test_logit_bias_outside_the_vocabulary_is_refused(daemon: Daemon) -> None:
    r = chat(daemon, messages=QUESTION, max_tokens=2, logit_bias={"99999999": 5})
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "logit_bias"
