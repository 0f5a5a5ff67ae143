"""The router with real models on the real daemon: cascade, continuation, distillation, and a
remote tier served by llama-cpp-python's own OpenAI server on loopback.

Two local tiers: ``tiny`` (Q4_1) and ``tiny-q8`` (its INT8 requantization, configured here as
the higher tier). Which one is "better" does not matter to these tests; the thresholds force
each path (keep, escalate) deterministically.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from edgeinfer.engine.base import EngineParams
from edgeinfer.engine.llama import Loader
from edgeinfer.models.store import ModelStore
from tests.conftest import Daemon, short_socket_dir, start_daemon

pytestmark = pytest.mark.real

QUESTION = "What is the capital of France? Answer with one word."


def _config(home: Path, text: str) -> None:
    (home / "config").mkdir(parents=True, exist_ok=True)
    (home / "config" / "models.toml").write_text(text)


TIERS = """
[models.tiny]
quality = 0.45
cost_per_1k = 1.0
slots = 2
[models.tiny-q8]
quality = 0.6
cost_per_1k = 2.0
slots = 2
"""


@pytest.fixture(scope="module")
def tiers(model_store: ModelStore) -> Iterator[Daemon]:
    model_store.ensure("tiny")
    model_store.ensure("tiny-q8")
    home = short_socket_dir() / "home"
    _config(home, TIERS + "[router]\nconfidence_threshold = 0.5\nmargin = 1.0\ndistill = true\n")
    d = start_daemon("--models", "tiny,tiny-q8", home=home)
    yield d
    d.stop()


def _ask(d: Daemon, content: str = QUESTION, **extra: Any) -> httpx.Response:
    body = {
        "model": "auto",
        "messages": [{"role": "user", "content": content}],
        "temperature": 0,
        **extra,
    }
    with d.client() as c:
        return c.post("/v1/chat/completions", json=body)


# A token tiny does not expect after QUESTION (" neoliberal": logprob about -23 there). Forced
# with logit_bias, which steers sampling but not the logprobs the cascade reads, it makes a
# draft tiny itself is unsure of: that one logprob is already below 32 * ln 0.5 (-22.2), the
# most a 32-token head can lose and still score 0.5, so the draft must escalate.
UNEXPECTED_TOKEN = "40000"


def test_cascade_keeps_a_confident_draft_and_escalates_an_unsure_one(tiers: Daemon) -> None:
    with tiers.client() as c:
        before = c.get("/stats").json()["router"]
    kept = _ask(tiers, edgeinfer={"cache": "off"}).json()
    route = kept["edgeinfer"]["route"]
    assert route["route"] == "cascade" and route["request_type"] == "question_answer"
    draft = route["tiers"][0]
    assert draft["model"] == "tiny" and draft["confidence"]["tokens"] > 0
    assert draft["kept"] is (draft["confidence"]["score"] >= 0.5)
    assert route["escalated"] is not draft["kept"]
    assert kept["model"] == ("tiny" if draft["kept"] else "tiny-q8")
    assert "paris" in kept["choices"][0]["message"]["content"].lower()

    # A request the cascade cannot keep (min_quality above tiny's) runs on tiny-q8 only.
    best = _ask(tiers, edgeinfer={"cache": "off", "min_quality": 0.5}).json()
    assert best["model"] == "tiny-q8"
    assert [t["model"] for t in best["edgeinfer"]["route"]["tiers"]] == ["tiny-q8"]

    # A draft tiny is unsure of must climb to tiny-q8, with the reason given.
    unsure = _ask(
        tiers,
        max_tokens=16,
        logit_bias={UNEXPECTED_TOKEN: 100},
        edgeinfer={"cache": "off", "route": "cascade"},
    ).json()
    route = unsure["edgeinfer"]["route"]
    draft = route["tiers"][0]
    assert draft["model"] == "tiny" and draft["kept"] is False, route
    assert draft["confidence"]["score"] < 0.5 and draft["confidence"]["tokens"] > 0
    assert route["escalated"] is True and "confidence" in route["escalation_reason"]
    assert "threshold 0.50" in route["escalation_reason"]
    assert [t["model"] for t in route["tiers"]] == ["tiny", "tiny-q8"]
    assert unsure["model"] == "tiny-q8"
    with tiers.client() as c:
        stats = c.get("/stats").json()["router"]
    assert stats["requests"] - before["requests"] == 3
    climbed = 1 + kept["edgeinfer"]["route"]["escalated"]  # the unsure draft, and maybe the first
    assert stats["escalations"] - before["escalations"] == climbed
    assert stats["by_tier"].get("tiny-q8", 0) - before["by_tier"].get("tiny-q8", 0) == 1 + climbed
    assert stats["tiers"] == ["tiny", "tiny-q8"]


def test_no_suitable_model_is_a_422_naming_each_tier(tiers: Daemon) -> None:
    resp = _ask(tiers, edgeinfer={"min_quality": 0.9})
    assert resp.status_code == 422
    err = resp.json()["error"]
    assert err["code"] == "no_suitable_model"
    assert "tiny quality 0.45 < min_quality 0.9" in err["message"]
    assert "tiny-q8 quality 0.60 < min_quality 0.9" in err["message"]
    assert _ask(tiers, edgeinfer={"cache": "off"}).status_code == 200  # still serving


def test_an_answer_cut_at_max_tokens_continues_from_its_kv_state(tiers: Daemon) -> None:
    """Two continuations of 12 tokens each make the very answer one 36-token greedy generation
    gives: each round resumes exactly where the last one stopped, and from its KV state."""
    body = {
        "model": "tiny",
        "messages": [{"role": "user", "content": "Write a long story about a dragon."}],
        "temperature": 0,
        # plain greedy: a penalty's history restarts with each round, so it would steer the
        # continued answer away from the one-shot one
        "repeat_penalty": 1.0,
        "max_tokens": 12,
        "edgeinfer": {"cache": "off", "continue_on_length": True},
    }
    with tiers.client() as c:
        reply = c.post("/v1/chat/completions", json=body).json()
        plain = c.post(
            "/v1/chat/completions", json={**body, "max_tokens": 36, "edgeinfer": {"cache": "off"}}
        ).json()
    rounds = reply["edgeinfer"]["continued"]
    assert len(rounds) == 2  # max_continuations = 2 by default
    assert [r["completion_tokens"] for r in rounds] == [12, 12]
    assert reply["usage"]["completion_tokens"] == plain["usage"]["completion_tokens"] == 36
    assert reply["choices"][0]["finish_reason"] == plain["choices"][0]["finish_reason"] == "length"
    prompt = reply["usage"]["prompt_tokens"]
    # each round reuses the prompt and the answer so far instead of recomputing them
    assert rounds[0]["cached_tokens"] >= prompt + 12 - 2
    assert rounds[1]["cached_tokens"] >= prompt + 24 - 2
    # and the continued answer is the one-shot greedy answer of the whole budget, all of it
    # (the rounds' seams lie past the first 12 tokens, so a prefix would not see them)
    text = reply["choices"][0]["message"]["content"]
    assert text == plain["choices"][0]["message"]["content"]


def test_distillation_captures_larger_tier_answers(tiers: Daemon) -> None:
    reply = _ask(
        tiers, "Name a primary colour.", edgeinfer={"cache": "off", "route": "best"}
    ).json()
    assert reply["model"] == "tiny-q8"
    env = {**os.environ, "EDGEINFER_HOME": str(tiers.home)}
    deadline = time.monotonic() + 30
    while True:
        out = subprocess.run(
            [sys.executable, "-m", "edgeinfer", "distill", "export"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        examples = [json.loads(line) for line in out.stdout.splitlines()]
        if any(e["messages"][0]["content"] == "Name a primary colour." for e in examples):
            break
        assert time.monotonic() < deadline, out.stderr
        time.sleep(0.2)
    example = next(e for e in examples if e["messages"][0]["content"] == "Name a primary colour.")
    assert example["messages"][-1] == {
        "role": "assistant",
        "content": reply["choices"][0]["message"]["content"],
    }
    assert example["metadata"]["tier"] == "tiny-q8"
    assert all(e["metadata"]["tier"] != "tiny" for e in examples)


def test_router_train_writes_weights_the_daemon_loads(tiers: Daemon, tmp_path: Path) -> None:
    outcomes = tmp_path / "o.jsonl"
    rows = [
        {"prompt": f"What is {i} plus {i}?", "tier": t, "correct": t == "tiny-q8" or i % 2 == 0}
        for i in range(12)
        for t in ("tiny", "tiny-q8")
    ]
    outcomes.write_text("\n".join(json.dumps(r) for r in rows))
    env = {**os.environ, "EDGEINFER_HOME": str(tiers.home)}
    out = subprocess.run(
        [sys.executable, "-m", "edgeinfer", "router", "train", str(outcomes)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    weights = tiers.home / "data" / "router.json"
    body = json.loads(weights.read_text())
    assert set(body["tiers"]) == {"tiny", "tiny-q8"} and body["meta"]["outcomes"] >= 24

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "x"}\n')
    out = subprocess.run(
        [sys.executable, "-m", "edgeinfer", "router", "train", str(bad), "--no-log"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 1
    assert out.stderr.strip().startswith(f"edgeinfer: error: {bad}:1: expected JSON with prompt")


# -- a remote tier: llama-cpp-python's OpenAI server on loopback ------------------------------


UPSTREAM_KEY = "local-test-key"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def upstream(model_store: ModelStore, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    gguf = model_store.ensure("tiny")
    port = _free_port()
    log = tmp_path_factory.mktemp("upstream") / "server.log"
    # llama-cpp-python's server, with the extra-buffer verdict edgeinfer's probe gives this CPU
    extra = Loader().extra_buffers(gguf, EngineParams(threads=1, name="tiny"))
    launch = (
        "import runpy; from edgeinfer.engine.llama import llama_defaults; "
        f"defaults = llama_defaults(extra_buffers={extra}); defaults.__enter__(); "
        "runpy.run_module('llama_cpp.server', run_name='__main__', alter_sys=True)"
    )
    argv = [sys.executable, "-c", launch, "--model", str(gguf)]
    argv += ["--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048", "--n_threads", "1"]
    argv += ["--api_key", UPSTREAM_KEY]  # so a request without edgeinfer's key header fails
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 120
    while True:
        assert proc.poll() is None, log.read_text()
        try:
            auth = {"Authorization": f"Bearer {UPSTREAM_KEY}"}
            if httpx.get(f"{base}/models", headers=auth, timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.2)
    yield base
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()


def test_a_remote_tier_answers_through_the_daemon(
    upstream: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert httpx.get(f"{upstream}/models", timeout=5).status_code == 401  # the key is needed
    home = short_socket_dir() / "home"
    dead = f"http://127.0.0.1:{_free_port()}/v1"
    _config(
        home,
        TIERS.split("[models.tiny-q8]")[0]
        + f'[remotes.upstream]\nurl = "{upstream}"\nmodel = "smollm"\nquality = 0.8\n'
        + 'api_key_env = "EI_UPSTREAM_KEY"\ntimeout = 60\n'
        + f'[remotes.gone]\nurl = "{dead}"\nmodel = "x"\nretries = 1\ntimeout = 5\n'
        + "quality = 0.1\n",
    )
    monkeypatch.setenv("EI_UPSTREAM_KEY", UPSTREAM_KEY)
    d = start_daemon("--models", "tiny", home=home)
    try:
        with d.client() as c:
            ids = [m["id"] for m in c.get("/v1/models").json()["data"]]
            assert {"tiny", "upstream", "gone", "auto"} <= set(ids)
            body = {
                "model": "upstream",
                "messages": [{"role": "user", "content": QUESTION}],
                "temperature": 0,
                "max_tokens": 16,
            }
            reply = c.post("/v1/chat/completions", json=body).json()
            assert reply["model"] == "upstream"
            assert "paris" in reply["choices"][0]["message"]["content"].lower()
            assert reply["usage"]["completion_tokens"] > 0
            # streamed through edgeinfer's own SSE framing
            with c.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as s:
                chunks = [ln for ln in s.iter_lines() if ln.startswith("data: {")]
            text = "".join(
                json.loads(ln[6:])["choices"][0]["delta"].get("content", "")
                for ln in chunks
                if json.loads(ln[6:]).get("choices")
            )
            assert "paris" in text.lower()
            # the answer went into the cache in front of the remote tier
            again = c.post("/v1/chat/completions", json=body).json()
            assert again["edgeinfer"]["cache"]["layer"] == "exact"
            # routing with best → the remote tier (highest quality)
            best = c.post(
                "/v1/chat/completions",
                json={**body, "model": "auto", "edgeinfer": {"route": "best", "cache": "off"}},
            ).json()
            assert best["model"] == "upstream"
            assert best["edgeinfer"]["route"]["tiers"] == [{"model": "upstream"}]
            # an unreachable remote is a clear 502 and the daemon keeps serving
            resp = c.post("/v1/chat/completions", json={**body, "model": "gone"})
            assert resp.status_code == 502
            err = resp.json()["error"]
            assert err["code"] == "upstream_error" and "unreachable" in err["message"]
            assert c.get("/health").status_code == 200
    finally:
        d.stop()


def test_a_kept_draft_streams_on_after_its_judged_head(tiers: Daemon) -> None:
    """The cascade judges a draft on its first 32 tokens, then hands the live stream over:
    the answer is the draft tier's own greedy answer, token for token, streamed in pieces
    rather than replayed in one block once the draft is done."""
    from tests.test_api_real import sse_events

    content = "Count from 1 to 40, separated by commas."
    body = {
        "messages": [{"role": "user", "content": content}],
        "temperature": 0,
        "repeat_penalty": 1.0,  # plain greedy: tiny's default penalty cuts a count short
        "max_tokens": 80,
        "edgeinfer": {"cache": "off"},
    }
    with tiers.client() as c:
        plain = c.post("/v1/chat/completions", json={**body, "model": "tiny"}).json()
        raw = c.post("/v1/chat/completions", json={**body, "model": "auto", "stream": True}).text
    events = sse_events(raw)
    pieces = [e["choices"][0]["delta"].get("content") for e in events if e.get("choices")]
    text = "".join(p for p in pieces if p)
    route = next(e["edgeinfer"]["route"] for e in events if "edgeinfer" in e)
    usage = next(e["usage"] for e in events if e.get("usage"))
    draft = route["tiers"][0]
    assert draft["model"] == "tiny" and draft["kept"] is True, route
    assert draft["confidence"]["tokens"] <= 32 < usage["completion_tokens"]
    assert draft["completion_tokens"] == usage["completion_tokens"]
    assert text == plain["choices"][0]["message"]["content"]
    assert len([p for p in pieces if p]) > 2  # the judged head, then token by token


def test_router_prompt_and_remotes_reload_without_a_restart(model_store: ModelStore) -> None:
    model_store.ensure("tiny")
    home = short_socket_dir() / "home"
    _config(home, "[models.tiny]\nslots = 1\n")
    d = start_daemon("--models", "tiny", home=home)
    try:
        first = _ask(d, max_tokens=4, edgeinfer={"cache": "off"}).json()
        assert first["edgeinfer"]["route"]["route"] == "cascade"  # the default
        assert "prompt" in first["edgeinfer"]  # [prompt] compress is on by default
        _config(
            home,
            "[models.tiny]\nslots = 1\n"
            '[router]\ndefault_route = "best"\n'
            "[prompt]\ncompress = false\ndocuments = false\n"
            '[remotes.up]\nurl = "http://127.0.0.1:9/v1"\nmodel = "m"\nquality = 0.9\n'
            "retries = 0\ntimeout = 5\ncost_per_1k = 1000\n",
        )
        with d.client() as c:
            r = c.post("/admin/reload")
            assert r.status_code == 200 and r.json()["config"]["ok"], r.text
            assert "up" in c.get("/stats").json()["router"]["tiers"]
        # "best" is now the default route, and the new remote is the best tier: unreachable.
        best = _ask(d, max_tokens=4, edgeinfer={"cache": "off"})
        assert best.status_code == 502, best.text
        assert best.json()["error"]["code"] == "upstream_error" and "up" in best.text
        cheap_reply = _ask(d, max_tokens=4, edgeinfer={"cache": "off", "max_cost": 500})
        assert cheap_reply.status_code == 200, cheap_reply.text
        cheap = cheap_reply.json()
        assert cheap["model"] == "tiny" and cheap["edgeinfer"]["route"]["route"] == "best"
        assert "prompt" not in cheap["edgeinfer"]  # the prompt layer is off now
    finally:
        d.stop()
