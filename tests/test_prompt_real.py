"""The prompt layer inside the real daemon: what the model reads, and what the response says."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Daemon

pytestmark = pytest.mark.real

DATA = Path(__file__).parent / "data" / "long_context.jsonl"
SYSTEM = "You are   terse.\n\n\n\nAnswer in one sentence."  # messy on purpose: must stay as is


def _chat(daemon: Daemon, messages: list[dict[str, str]], **ext: Any) -> dict[str, Any]:
    body = {
        "model": "tiny",
        "messages": messages,
        "temperature": 0,
        "max_tokens": 24,
        "edgeinfer": {"cache": "off", **ext},
    }
    with daemon.client() as c:
        resp = c.post("/v1/chat/completions", json=body)
    assert resp.status_code == 200, resp.text
    return dict(resp.json())


def test_compression_removes_tokens_but_never_touches_the_system_prompt(daemon: Daemon) -> None:
    para = "The   library opens at nine   and closes at five on weekdays."
    user = f"{para}\n\n\n\n{para}\n\nWhen does the library close?"
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]
    squeezed = _chat(daemon, messages)
    plain = _chat(daemon, messages, compress=False)
    report = squeezed["edgeinfer"]["prompt"]
    assert {"whitespace", "dedupe"} <= set(report["actions"])
    assert report["tokens_after"] < report["tokens_before"]
    saved = plain["usage"]["prompt_tokens"] - squeezed["usage"]["prompt_tokens"]
    assert saved == report["tokens_removed"] > 0
    assert "prompt" not in plain["edgeinfer"]  # compress=false: the layer did not run

    # The system prompt's bytes are unchanged: a second request with another question reuses
    # at least the whole (uncompressed) system prompt's KV.
    other = _chat(daemon, [messages[0], {"role": "user", "content": "Hi"}])
    with daemon.client() as c:
        system_only = c.post(
            "/v1/completions", json={"model": "tiny", "prompt": SYSTEM, "max_tokens": 1}
        ).json()
    assert other["usage"]["prompt_tokens_details"]["cached_tokens"] >= (
        system_only["usage"]["prompt_tokens"] - 1
    )


def test_context_budget_keeps_the_chunk_that_answers(daemon: Daemon) -> None:
    item = json.loads(DATA.read_text().splitlines()[0])
    user = f"{item['document']}\n\n{item['question']}"
    reply = _chat(daemon, [{"role": "user", "content": user}], context_budget=400)
    report = reply["edgeinfer"]["prompt"]
    assert "context" in report["actions"]
    assert report["tokens_before"] > 1500 and report["tokens_after"] <= 400 + 64
    assert reply["usage"]["prompt_tokens"] < 600
    assert report["chunks_kept"] < report["chunks_total"]


def test_a_pasted_document_is_cut_to_its_relevant_part_by_default(daemon: Daemon) -> None:
    item = json.loads(DATA.read_text().splitlines()[3])
    user = f"{item['document']}\n\nQuestion: {item['question']}"
    reply = _chat(daemon, [{"role": "user", "content": user}])
    report = reply["edgeinfer"]["prompt"]
    assert "document" in report["actions"]
    budget = 768  # [prompt] document_budget's default
    assert report["tokens_before"] > 1500 and report["tokens_after"] <= budget + 64
    assert reply["usage"]["prompt_tokens"] < budget + 200

    whole = _chat(daemon, [{"role": "user", "content": f"{item['document']}\n\nSummarise this."}])
    assert "document" not in whole["edgeinfer"]["prompt"]["actions"]
    assert whole["usage"]["prompt_tokens"] > 1500
