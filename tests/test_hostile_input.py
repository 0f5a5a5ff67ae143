"""Hostile input (issue 14): no request may freeze the daemon or get a 500.

The prompt layer's passes run on a megabyte of padding in linear time (there are no timing
thresholds here: a quadratic pass would run into the pytest timeout instead); malformed text
and token ids are a 400 naming the field; the live stats feed has a subscriber cap and its ticks
scan no table; ``edgeinfer paths`` works with the dependency floors pyproject.toml names.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest

from edgeinfer.cache.connection import connect
from edgeinfer.cache.store import CacheStore
from edgeinfer.embed.fake import FakeEmbedder
from edgeinfer.prompt.compress import compress_messages, compress_text, normalize_whitespace
from edgeinfer.prompt.compress import paragraphs as split_paragraphs
from tests.cache_fixtures import chat, entry_for, make_store_fixture  # noqa: F401
from tests.conftest import Daemon

# -- the prompt layer on a megabyte of padding -------------------------------------------------

TICK_RUNS = " ".join("`" * k for k in range(1, 1400))  # ~980k chars, no two runs alike
HOSTILE = [
    ("blanks-then-tab", "a" + " " * 500_000 + "\t b", "a b"),
    ("blank-lines", "\n \n" * 200_000, ""),
    ("tabs", "a " + "\t" * 900_000 + "b", "a b"),  # the blank: not a tab-separated row
    ("blanks-before-nbsp", "a" + " \t" * 450_000 + "\u00a0b", "a" + " \t" * 450_000 + "\u00a0b"),
    ("trailing-blanks", ("x" + " " * 40 + "\n") * 24_000, "\n".join(["x"] * 24_000)),
    ("unclosed-curly-quotes", "“" * 900_000 + " a  b", "“" * 900_000 + " a b"),
    ("backtick-runs", TICK_RUNS + "  x", TICK_RUNS + " x"),
    ("mixed", (" \t \n \n“`\"  ``  x\u00a0 \t\n\n\n") * 30_000,
     "\n\n".join(["“`\" `` x\u00a0"] * 30_000)),
]  # fmt: skip


@pytest.mark.parametrize(("text", "expected"), [c[1:] for c in HOSTILE],
                         ids=[c[0] for c in HOSTILE])  # fmt: skip
def test_prompt_passes_finish_on_a_megabyte_of_padding(text: str, expected: str) -> None:
    assert normalize_whitespace(text) == expected
    compressed, counts = compress_text(text, {"for example": "e.g."})
    assert compressed == expected
    assert counts == ({"whitespace": 1} if expected != text else {})
    assert " ".join(split_paragraphs(text)).split() == text.split()  # chunks lose no word


def test_inline_spans_match_the_pattern_they_replace() -> None:
    """The scanner finds what the old lazy pattern matched (it is only slow on long text), on
    random short texts made of what opens, closes or ends a span."""
    import random
    import re

    from edgeinfer.prompt.compress import _inline_spans

    para = r"(?:[^\n]|\n(?![ \t]*\n))"
    old = re.compile(
        rf'(`+){para}+?(?<!`)\1(?!`)|"(?:[^"\n]|\n(?![ \t]*\n))*"|“(?:[^”\n]|\n(?![ \t]*\n))*”'
    )
    pieces = ["`", "`", "``", "```", '"', "“", "”", "x", " ", "\t", "\n", "\n\n", "\n \n"]
    rng = random.Random(14)
    for _ in range(20_000):
        text = "".join(rng.choices(pieces, k=rng.randint(1, 24)))
        want = [m.span() for m in old.finditer(text)]
        assert list(_inline_spans(text)) == want, repr(text)


def test_text_over_the_cap_passes_through_untouched_and_is_reported() -> None:
    from edgeinfer.prompt.report import MAX_TEXT_CHARS

    huge = "x  y\n\n\n" * (MAX_TEXT_CHARS // 7 + 1)
    messages = [{"role": "user", "content": huge}, {"role": "user", "content": "a   b"}]
    out, report = compress_messages(messages, count_tokens=lambda t: len(t.split()))
    assert out[0]["content"] is huge and out[1]["content"] == "a b"
    assert report.too_long == 1 and report.as_dict()["messages_too_long"] == 1


def _post_json(client: httpx.Client, path: str, body: Any) -> httpx.Response:
    """``body`` as JSON with ASCII escapes, so a lone surrogate travels as ``\\ud800``."""
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return client.post(path, content=content, headers={"Content-Type": "application/json"})


@pytest.mark.real
def test_a_megabyte_of_padding_does_not_freeze_the_daemon(daemon: Daemon) -> None:
    """While the padded chat is in the prompt layer, /health still answers."""
    attack = {"blanks-then-tab", "blank-lines", "blanks-before-nbsp", "backtick-runs"}
    messages = [{"role": "user", "content": text} for name, text, _ in HOSTILE if name in attack]
    messages.append({"role": "user", "content": "q" + " \t" * 600_000 + "\u00a0b"})  # over the cap
    body = {"model": "tiny", "messages": messages, "max_tokens": 1, "edgeinfer": {"compress": True}}
    done = threading.Event()
    answer: dict[str, httpx.Response] = {}

    def send() -> None:
        try:
            with daemon.client(timeout=600) as c:
                answer["response"] = _post_json(c, "/v1/chat/completions", body)
        finally:
            done.set()

    thread = threading.Thread(target=send)
    thread.start()
    answered_during = 0
    with daemon.client(timeout=600) as c:
        while not done.is_set():
            health = c.get("/health")
            assert health.status_code == 200
            if not done.is_set():
                answered_during += 1
    thread.join()
    assert answered_during >= 1
    r = answer["response"]
    assert r.status_code in (200, 400), r.text
    if r.status_code == 400:
        assert r.json()["error"]["code"] == "context_length_exceeded"


# -- malformed text and token ids --------------------------------------------------------------

LONE = "\ud800"
OK = [{"role": "user", "content": "hi"}]
CHAT = "/v1/chat/completions"
MALFORMED = [
    ("content", CHAT, {"messages": [{"role": "user", "content": f"a{LONE}"}]},
     "messages.0.content"),
    ("text-part", CHAT, {"messages": [{"role": "user", "content": [{"type": "text",
     "text": LONE}]}]}, "messages.0.content"),
    ("name", CHAT, {"messages": [{"role": "user", "content": "x", "name": LONE}]},
     "messages.0.name"),
    ("model", CHAT, {"messages": OK, "model": LONE}, "model"),
    ("stop", CHAT, {"messages": OK, "stop": LONE}, "stop"),
    ("stop-list", CHAT, {"messages": OK, "stop": ["ok", "\udfff"]}, "stop"),
    ("user", CHAT, {"messages": OK, "user": LONE}, "user"),
    ("schema-key", CHAT, {"messages": OK, "response_format": {"type": "json_schema",
     "json_schema": {"schema": {"properties": {LONE: {}}}}}}, "response_format.json_schema.schema"),
    ("prompt", "/v1/completions", {"prompt": f"a{LONE}b"}, "prompt"),
    ("embedding", "/v1/embeddings", {"input": ["fine", LONE]}, "input"),
    ("superscript-id", CHAT, {"messages": OK, "logit_bias": {"²": 1}}, "logit_bias"),
    ("double-minus-id", CHAT, {"messages": OK, "logit_bias": {"--5": 1}}, "logit_bias"),
    ("minus-id", CHAT, {"messages": OK, "logit_bias": {"-": 1}}, "logit_bias"),
    ("negative-id", CHAT, {"messages": OK, "logit_bias": {"-5": 1}}, "logit_bias"),
    ("spaced-id", CHAT, {"messages": OK, "logit_bias": {" 5": 1}}, "logit_bias"),
    ("5000-digit-id", CHAT, {"messages": OK, "logit_bias": {"7" * 5000: 1}}, "logit_bias"),
    ("int32-overflow-id", CHAT, {"messages": OK, "logit_bias": {"4294967296": 1}}, "logit_bias"),
    ("out-of-vocab-id", CHAT, {"messages": OK, "logit_bias": {"2147483647": 1}}, "logit_bias"),
    ("surrogate-id", CHAT, {"messages": OK, "logit_bias": {LONE: 1}}, "logit_bias"),
]  # fmt: skip


@pytest.mark.real
@pytest.mark.parametrize(("path", "body", "param"), [c[1:] for c in MALFORMED],
                         ids=[c[0] for c in MALFORMED])  # fmt: skip
def test_malformed_text_and_token_ids_are_a_400_naming_the_field(
    daemon: Daemon, path: str, body: dict[str, Any], param: str
) -> None:
    base = {"model": "tiny"} if path == "/v1/embeddings" else {"model": "tiny", "max_tokens": 1}
    with daemon.client() as c:
        r = _post_json(c, path, {**base, **body})
        assert r.status_code == 400, r.text
        error = r.json()["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["message"]
        assert (error["type"], error["code"], error["param"]) == (
            "invalid_request_error", "invalid_request_error", param)  # fmt: skip
        assert c.get("/health").status_code == 200


@pytest.mark.real
@pytest.mark.parametrize(
    "body",
    [
        json.dumps({"model": "tiny", "messages": OK, LONE: 1}).encode(),
        json.dumps({"model": "tiny", "messages": OK, "logit_bias": {LONE: "x"}}).encode(),
        b'{"model": "tiny", "messages": [{"role": "user", "content": "\xff\xfe"}]}',
    ],
    ids=["surrogate-field-name", "surrogate-key-bad-value", "invalid-utf8"],
)
def test_malformed_bodies_elsewhere_are_a_400_too(daemon: Daemon, body: bytes) -> None:
    with daemon.client() as c:
        r = _post_json(c, CHAT, body)
        assert r.status_code == 400, r.text
        assert r.json()["error"]["type"] == "invalid_request_error"
        assert c.get("/health").status_code == 200


@pytest.mark.real
def test_what_a_second_audit_found_is_answered_precisely(daemon: Daemon) -> None:
    """Found by a hostile-input audit: each was answered, but imprecisely or wrongly."""
    with daemon.client() as c:
        # top_k past an int32 reached llama.cpp through ctypes, wrapped: 2**32 + 1 ran greedy
        for path, body in [
            (CHAT, {"model": "tiny", "messages": OK, "max_tokens": 1, "top_k": 2**32 + 1}),
            ("/v1/messages", {"model": "tiny", "messages": OK, "max_tokens": 1, "top_k": 2**70}),
            ("/api/chat", {"model": "tiny", "messages": OK, "options": {"top_k": 2**70}}),
        ]:
            r = _post_json(c, path, body)
            assert r.status_code == 400 and "top_k" in r.text, (path, r.text)
        # a union reports every member: a list of 5 stops is not "a valid string"
        r = _post_json(c, CHAT, {"model": "tiny", "messages": OK, "stop": ["a"] * 5})
        assert r.status_code == 400
        assert r.json()["error"]["message"] == (
            "stop: List should have at most 4 items after validation, not 5"
        )
        # /v1/completions has no "messages"
        r = _post_json(c, "/v1/completions", {"model": "tiny", "prompt": "zebra " * 5000})
        assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"
        assert r.json()["error"]["param"] == "prompt"
        # the Anthropic route said only "not valid JSON" where the parser knows why
        r = _post_json(c, "/v1/messages", {"model": "tiny", "max_tokens": 1, "messages": [
            {"role": "user", "content": f"a{LONE}"}]})  # fmt: skip
        assert r.status_code == 400 and "hex escape at line 1" in r.json()["error"]["message"]
        # the body limit answers in the route's own error shape
        big = b'{"model": "tiny", "x": "' + b"a" * (9 << 20) + b'"}'
        r = _post_json(c, "/v1/messages", big)
        assert r.status_code == 413
        assert r.json() == {
            "type": "error",
            "error": {
                "type": "request_too_large",
                "message": "the request body is larger than 8388608 bytes",
            },
        }
        assert c.get("/health").status_code == 200
    # a request h11 cannot parse got uvicorn's plain text
    for head in [b"Content-Length: -5", b"Content-Length: 1\r\nContent-Length: 2", b"X: \x00"]:
        with socket.socket(socket.AF_UNIX) as raw:
            raw.settimeout(10)
            raw.connect(str(daemon.socket))
            raw.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n" + head + b"\r\n\r\n")
            reply = b""
            while chunk := raw.recv(65536):
                reply += chunk
        status, _, body = reply.partition(b"\r\n\r\n")
        assert status.startswith(b"HTTP/1.1 400") and b"application/json" in status, reply
        assert json.loads(body)["error"]["type"] == "invalid_request_error"


# -- the live stats feed -----------------------------------------------------------------------


@pytest.mark.real
def test_the_stats_feed_has_a_subscriber_cap(daemon: Daemon) -> None:
    from edgeinfer.server.feed import MAX_SUBSCRIBERS

    limits = httpx.Limits(max_connections=MAX_SUBSCRIBERS + 4)
    transport = httpx.HTTPTransport(uds=str(daemon.socket), limits=limits)
    with httpx.Client(transport=transport, base_url="http://edgeinfer", timeout=60) as c:
        with ExitStack() as feeds:
            events = []  # dropping a half-read iterator would hang up its connection
            for _ in range(MAX_SUBSCRIBERS):
                feed = feeds.enter_context(c.stream("GET", "/stats/stream?interval=60"))
                assert feed.status_code == 200
                events.append(feed.iter_lines())
                assert next(events[-1]).startswith("data: ")
            with c.stream("GET", "/stats/stream") as refused:  # never read an endless body
                assert refused.status_code == 503
                refused.read()
            assert int(refused.headers["Retry-After"]) >= 1
            error = refused.json()["error"]
            assert (error["code"], error["type"]) == ("busy", "server_error")
            assert c.get("/health").status_code == 200
            assert c.get("/stats").status_code == 200  # the plain snapshot is not capped
        for _ in range(200):  # hung-up feeds free their places as the daemon notices
            with c.stream("GET", "/stats/stream?interval=60") as again:
                if again.status_code == 200:
                    break
            time.sleep(0.05)
        assert again.status_code == 200


def test_stats_read_no_table(make_store: Callable[..., CacheStore]) -> None:
    """A live feed asks for the cache figures every tick: they are kept, not counted."""
    store = make_store(64)
    embedder = FakeEmbedder(64)
    for i in range(5):
        store.put(entry_for(embedder, chat(f"question {i}"), "x", model=f"m{i % 2}"))
    store.flush(10)
    statements: list[str] = []
    store._reader().set_trace_callback(statements.append)
    stats = store.stats()
    assert not [s for s in statements if "FROM entries" in s]
    assert (stats["entries"], stats["models"]) == (5, {"m0": 3, "m1": 2})


def test_kept_figures_follow_evictions_calls_and_other_connections(
    make_store: Callable[..., CacheStore], tmp_path: Path
) -> None:
    embedder = FakeEmbedder(64)
    store = make_store(64, max_bytes=6_000)
    for i in range(12):  # about 1.5 kB each: the byte cap evicts as they come
        store.put(entry_for(embedder, chat(f"question {i}"), "y" * 1000, model=f"m{i % 3}"))
    store.flush(10)

    def truth() -> tuple[int, int, int, dict[str, int]]:
        conn = connect(store.path)
        try:
            sql = "SELECT count(*), count(question), total(bytes) FROM entries"
            entries, semantic, size = conn.execute(sql).fetchone()
            models = conn.execute("SELECT model, count(*) FROM entries GROUP BY model")
            return entries, semantic, int(size), dict(models.fetchall())
        finally:
            conn.close()

    def kept() -> tuple[int, int, int, dict[str, int]]:
        s = store.stats()
        return s["entries"], s["semantic_entries"], s["bytes"], s["models"]

    assert store.stats()["evicted"] > 0 and kept() == truth()
    assert store.purge_model("m1", keep_digest="other") > 0 and kept() == truth()
    other = CacheStore(store.path, dim=64, max_bytes=10_000_000, ttl_s=None)
    other.start()  # `edgeinfer cache clear` beside the daemon
    try:
        assert other.clear() > 0
    finally:
        other.close()
    store.flush(10)  # the writer wakes, and sees the other connection's commit
    assert kept() == truth() == (0, 0, 0, {})


# -- dependency floors -------------------------------------------------------------------------


@pytest.mark.parametrize("runtime_dir", [True, False], ids=["xdg-runtime-dir", "no-runtime-dir"])
def test_paths_without_edgeinfer_home(tmp_path: Path, runtime_dir: bool) -> None:
    """platformdirs decides every location (pyproject's floor has the RuntimeDirWarning that
    paths.py silences when there is no runtime dir); nothing touches the real home."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EDGEINFER_", "XDG_"))}
    env["HOME"] = str(tmp_path)
    for name in ("CONFIG", "DATA", "CACHE", "STATE"):
        env[f"XDG_{name}_HOME"] = str(tmp_path / name.lower())
    if runtime_dir:
        env["XDG_RUNTIME_DIR"] = str(tmp_path / "run")
    out = subprocess.run(
        [sys.executable, "-W", "error", "-m", "edgeinfer", "paths"],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    rows = dict(line.split(maxsplit=1) for line in out.stdout.splitlines())
    socket = Path(rows["socket"])
    assert socket.is_absolute() and socket.name == "edgeinfer.sock"
    if runtime_dir:
        assert socket.parent.parent == tmp_path / "run"
    assert Path(rows["models"]).is_relative_to(tmp_path / "data")
