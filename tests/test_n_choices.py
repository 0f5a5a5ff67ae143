"""``n > 1`` on the real daemon and model: n sequences sharing the prompt's KV."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import Daemon

# Long enough that a copy of its KV beats recomputing it (the runner's minimum gain is 16).
LONG = "Here is some context about cats. " * 12 + "Now write one short line about cats."


@pytest.fixture
def sdk(daemon: Daemon) -> Iterator[openai.OpenAI]:
    http = httpx.Client(transport=httpx.HTTPTransport(uds=str(daemon.socket)), timeout=600)
    with http:
        yield openai.OpenAI(base_url="http://edgeinfer/v1", api_key="unused", http_client=http)


def test_n_two_gives_two_choices_sharing_the_prompt(sdk: openai.OpenAI) -> None:
    r = sdk.chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": LONG}],
        n=2,
        max_tokens=8,
        temperature=1.0,
        seed=7,
    )
    assert [c.index for c in r.choices] == [0, 1]
    assert all(c.message.content is not None for c in r.choices)
    per = (r.model_extra or {})["edgeinfer"]["choices"]
    assert len(per) == 2
    assert r.usage is not None
    assert r.usage.prompt_tokens == 2 * (r.usage.prompt_tokens // 2)
    one = r.usage.prompt_tokens // 2
    # the second choice starts after the first prefilled: its prompt is copied, not computed
    assert per[1]["cached_tokens"] >= one - 1, per
    assert r.usage.prompt_tokens_details is not None
    cached = r.usage.prompt_tokens_details.cached_tokens
    assert cached == per[0]["cached_tokens"] + per[1]["cached_tokens"]


def test_n_streamed_interleaves_by_index(daemon: Daemon) -> None:
    body: dict[str, Any] = {
        "model": "tiny",
        "messages": [{"role": "user", "content": LONG}],
        "n": 2,
        "max_tokens": 6,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    texts: dict[int, str] = {0: "", 1: ""}
    finished: set[int] = set()
    usage = None
    with daemon.client() as c, c.stream("POST", "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            usage = chunk.get("usage") or usage
            for choice in chunk["choices"]:
                texts[choice["index"]] += choice["delta"].get("content") or ""
                if choice["finish_reason"]:
                    finished.add(choice["index"])
    assert finished == {0, 1}
    assert all(texts.values())
    assert usage is not None and usage["completion_tokens"] <= 12


def test_n_over_the_slots_is_refused_naming_the_limit(daemon: Daemon) -> None:
    body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "n": 5}
    with daemon.client() as c:
        r = c.post("/v1/chat/completions", json=body)
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["param"] == "n" and "at most 4" in err["message"]


def test_n_answers_are_not_cached(daemon: Daemon) -> None:
    body = {
        "model": "tiny",
        "messages": [{"role": "user", "content": "Name a colour."}],
        "n": 2,
        "max_tokens": 4,
        "temperature": 0,
        "edgeinfer": {"cache": "exact"},
    }
    with daemon.client() as c:
        for _ in range(2):
            r = c.post("/v1/chat/completions", json=body).json()
            assert r["edgeinfer"]["cache"]["layer"] is None
            assert len(r["choices"]) == 2
        single = c.post("/v1/chat/completions", json={**body, "n": 1}).json()
    assert single["edgeinfer"]["cache"]["layer"] is None  # no n=2 answer was stored
