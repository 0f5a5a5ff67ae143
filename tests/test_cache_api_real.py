"""The response cache through the real daemon: real ONNX embeddings, real sqlite-vec, real model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.conftest import Daemon

pytestmark = pytest.mark.real


def ask(daemon: Daemon, messages: list[dict[str, str]], **extra: Any) -> dict[str, Any]:
    body = {"model": "tiny", "messages": messages, "max_tokens": 24, "temperature": 0, **extra}
    with daemon.client() as c:
        r = c.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    result: dict[str, Any] = r.json()
    return result


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def test_exact_hit_serves_the_same_answer_with_its_layer(daemon: Daemon) -> None:
    q = user("Which planet is known as the red planet?")
    first = ask(daemon, q)
    second = ask(daemon, q)
    assert first["edgeinfer"]["cache"]["layer"] is None
    assert second["edgeinfer"]["cache"] == {"layer": "exact", "similarity": 1.0}
    assert second["choices"][0]["message"] == first["choices"][0]["message"]
    assert second["usage"]["completion_tokens"] == first["usage"]["completion_tokens"]
    with daemon.client() as c:
        layers = c.get("/stats").json()["cache"]["layers"]
    assert layers["exact"]["hits"] >= 1
    assert layers["exact"]["measured"]["completion_tokens_saved"] >= 1
    assert layers["exact"]["measured"]["time_saved_s"] > 0
    # estimated apart: tokens as gpt-4o-mini (o200k, tiktoken offline) would count, priced
    estimated = layers["exact"]["estimated"]
    assert estimated["prompt_tokens"] > 0 and estimated["completion_tokens"] > 0
    assert estimated["api_cost_saved_usd"] > 0


def test_streamed_hit_has_the_shape_of_a_generation(daemon: Daemon) -> None:
    q = user("Name a famous bridge in San Francisco.")
    whole = ask(daemon, q)
    with daemon.client() as c:
        body = {"model": "tiny", "messages": q, "max_tokens": 24, "temperature": 0, "stream": True}
        raw = c.post("/v1/chat/completions", json=body).text
    events = [json.loads(x[6:]) for x in raw.splitlines() if x.startswith("data: {")]
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in events if e["choices"])
    assert text == whole["choices"][0]["message"]["content"]
    assert events[-1]["edgeinfer"]["cache"]["layer"] == "exact"
    assert raw.rstrip().endswith("data: [DONE]")


def test_paraphrase_is_a_semantic_hit_and_a_near_miss_is_not(daemon: Daemon) -> None:
    first = ask(daemon, user("How do I reset my password?"))
    para = ask(daemon, user("How can I reset my password?"), edgeinfer={"cache_threshold": 0.8})
    assert para["edgeinfer"]["cache"]["layer"] == "semantic"
    assert para["edgeinfer"]["cache"]["similarity"] >= 0.8
    assert para["choices"][0]["message"] == first["choices"][0]["message"]
    ask(daemon, user("How many legs does a spider have? Answer with a number."))
    near = ask(
        daemon,
        user("How many legs does an ant have? Answer with a number."),
        edgeinfer={"cache_threshold": 0.8},
    )
    assert near["edgeinfer"]["cache"]["layer"] is None


def test_the_shipped_defaults_serve_a_rewording_and_refuse_a_reversal(daemon: Daemon) -> None:
    """No cache_threshold: the calibrated threshold and the learned verifier decide."""
    first = ask(daemon, user("Explain what a hash table is."))
    para = ask(daemon, user("Can you explain what a hash table is?"))
    assert para["edgeinfer"]["cache"]["layer"] == "semantic"
    assert para["choices"][0]["message"] == first["choices"][0]["message"]
    ask(daemon, user("Does a list use more memory than a tuple in Python?"))
    reverse = ask(daemon, user("Does a tuple use more memory than a list in Python?"))
    assert reverse["edgeinfer"]["cache"]["layer"] is None


def test_a_long_shared_preamble_does_not_make_two_questions_one(daemon: Daemon) -> None:
    """The embedder reads 256 tokens: past that the two would embed identically. A question
    that long is cached exactly or not at all (issue 15's case: reset vs delete)."""
    preamble = " ".join(
        ["You are our support assistant; follow the style guide and keep replies short."] * 30
    )
    assert len(preamble.split()) >= 360
    ask(daemon, user(f"{preamble}\n\nHow do I reset my password?"))
    other = ask(daemon, user(f"{preamble}\n\nHow do I delete my account?"))
    assert other["edgeinfer"]["cache"]["layer"] is None
    again = ask(daemon, user(f"{preamble}\n\nHow do I reset my password?"))
    assert again["edgeinfer"]["cache"]["layer"] == "exact"  # the exact layer still serves it
    with daemon.client() as c:
        semantic = c.get("/stats").json()["cache"]["layers"]["semantic"]
    assert semantic["skipped_too_long"] >= 2


def test_follow_up_is_never_answered_from_another_conversation(daemon: Daemon) -> None:
    def conversation(person: str) -> list[dict[str, str]]:
        return [
            {"role": "user", "content": f"Tell me about {person}."},
            {"role": "assistant", "content": f"{person} was a famous scientist."},
            {"role": "user", "content": "How old was she when she died?"},
        ]

    ask(daemon, conversation("Marie Curie"))
    other = ask(daemon, conversation("Ada Lovelace"), edgeinfer={"cache_threshold": 0.5})
    assert other["edgeinfer"]["cache"]["layer"] is None


def test_cache_off_and_sampled_requests_generate(daemon: Daemon) -> None:
    q = user("Say hello in Spanish.")
    ask(daemon, q)
    assert ask(daemon, q, edgeinfer={"cache": "off"})["edgeinfer"]["cache"]["layer"] is None
    sampled = ask(daemon, q, temperature=0.7)  # not deterministic: not cached by default
    assert sampled["edgeinfer"]["cache"]["layer"] is None
    with daemon.client() as c:
        bad = c.post(
            "/v1/chat/completions",
            json={"model": "tiny", "messages": q, "edgeinfer": {"cache": "maybe"}},
        )
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "edgeinfer.cache"


def test_embeddings_endpoint(daemon: Daemon) -> None:
    texts = [
        "How do I reset my password?",
        "I forgot my password, how can I change it?",
        "What is the capital of France?",
    ]
    with daemon.client() as c:
        r = c.post("/v1/embeddings", json={"model": "minilm", "input": texts})
    assert r.status_code == 200, r.text
    body = r.json()
    vectors = np.array([d["embedding"] for d in body["data"]])
    assert vectors.shape == (3, 384)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    assert vectors[0] @ vectors[1] > 0.8 > 0.3 > vectors[0] @ vectors[2]
    assert body["usage"]["prompt_tokens"] > 10


def test_cli_cache_stats_export_clear_import(daemon: Daemon, tmp_path: Path) -> None:
    ask(daemon, user("What colour is the sky on a clear day?"))
    env = {**os.environ, "EDGEINFER_HOME": str(daemon.home)}

    def cli(*args: str) -> str:
        out = subprocess.run(
            [sys.executable, "-m", "edgeinfer", "cache", *args, "--socket", str(daemon.socket)]
            if args[0] == "stats"
            else [sys.executable, "-m", "edgeinfer", "cache", *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
        assert out.returncode == 0, out.stderr
        return out.stdout

    stats = json.loads(cli("stats"))
    entries = stats["store"]["entries"]
    assert entries >= 1 and stats["layers"]["exact"]["misses"] >= 1
    dump = tmp_path / "cache.jsonl"
    assert f"exported {entries} entries" in cli("export", str(dump))
    assert f"removed {entries} entries" in cli("clear")
    assert json.loads(cli("stats"))["store"]["entries"] == 0
    assert f"imported {entries} entries" in cli("import", str(dump))
    assert json.loads(cli("stats"))["store"]["entries"] == entries
