"""Private state on disk: owner-only dirs and files, and what the router's outcome log keeps.

Unit tests open the real SQLite stores under a umask of 0, so a mode that depends on the umask
shows up; the real-daemon test checks what `edgeinfer serve` itself leaves in its home.
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from edgeinfer.config.schema import Catalogue, RouterSettings
from edgeinfer.core.generation import Generation
from edgeinfer.core.options import GenerateOptions
from edgeinfer.core.tier import TierCard
from edgeinfer.core.values import Delta, Event, Finished, TokenLogprob, Usage
from edgeinfer.models.store import ModelStore
from edgeinfer.routing import router as routed
from edgeinfer.routing.distill import DistillLog
from edgeinfer.routing.router import Router
from edgeinfer.tui.store import ConversationStore
from tests.conftest import short_socket_dir, start_daemon
from tests.tiers import scripted


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def umask0() -> Iterator[None]:
    """The loosest umask: anything not made private on purpose comes out world-writable."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def sqlite_files(db: Path) -> list[Path]:
    return [p for p in (db, Path(f"{db}-wal"), Path(f"{db}-shm")) if p.exists()]


@pytest.mark.usefixtures("umask0")
def test_conversations_are_owner_only(tmp_path: Path) -> None:
    db = tmp_path / "home" / "data" / "chat.sqlite3"
    store = ConversationStore(db)
    try:
        convo = store.create("secret plans", "auto")
        store.add(convo.id, "user", "my password is hunter2")
        files = sqlite_files(db)
        assert len(files) == 3  # WAL mode: the -wal and -shm exist while it is open
        assert {f.name: mode(f) for f in files} == {f.name: 0o600 for f in files}
        assert mode(db.parent) == 0o700
    finally:
        store.close()


@pytest.mark.usefixtures("umask0")
def test_existing_loose_files_are_tightened(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o755)
    data.chmod(0o755)
    db = data / "distill.sqlite"
    db.touch()
    db.chmod(0o644)
    log = DistillLog(db)
    try:
        log.record("large", [{"role": "user", "content": "hello"}], "hi", {})
        log.flush()
        files = sqlite_files(db)
        assert {f.name: mode(f) for f in files} == {f.name: 0o600 for f in files}
        assert mode(data) == 0o700
    finally:
        log.close()


@pytest.mark.usefixtures("umask0")
def test_the_model_store_makes_its_missing_parents_private(tmp_path: Path) -> None:
    source = tmp_path / "m.gguf"
    source.write_bytes(b"GGUF")
    catalogue = Catalogue.model_validate(
        {"models": {"m": {"name": "m", "source": {"type": "path", "path": str(source)}}}}
    )
    data = tmp_path / "home" / "data"
    store = ModelStore(data / "models", catalogue)
    store.pull("m")
    assert mode(data) == 0o700 and mode(data / "models") == 0o700


# -- the router's outcome log ----------------------------------------------------------------


TIERS = [TierCard("tiny", 0.45, 6.0), TierCard("large", 0.69, 28.0)]


async def _unsure_draft(
    name: str, messages: Sequence[Mapping[str, Any]], options: GenerateOptions
) -> Generation:
    """Every tier answers with low confidence, so each request cascades and escalates."""
    queue: asyncio.Queue[Event] = asyncio.Queue()
    tokens = tuple(TokenLogprob(b"w", -2.0, ((b"w", -2.0),)) for _ in range(3))
    queue.put_nowait(Delta(f"{name} says hi", tokens if options.logprobs is not None else ()))
    queue.put_nowait(Finished("stop", Usage(10, 3, 0, 0.01, 0.02)))
    return Generation(name, f"sha-{name}", queue, prompt_tokens=10)


def _cascade(router: Router, prompt: str, times: int = 1) -> None:
    """Ask ``times``; asyncio.run returns once the executor ran the log's appends."""

    async def go() -> None:
        for _ in range(times):
            messages = [{"role": "user", "content": prompt}]
            gen = await router.chat(messages, GenerateOptions())
            await gen.text()

    asyncio.run(go())


def _router(outcomes: Path, **settings: Any) -> Router:
    return Router(
        RouterSettings(margin=1.0, **settings),
        tiers=scripted(TIERS, _unsure_draft),
        outcomes=outcomes,
    )


def _wait_for(path: Path, lines: int) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if path.exists() and len(rows := path.read_text().splitlines()) >= lines:
            return [json.loads(r) for r in rows]
        time.sleep(0.02)
    raise AssertionError(f"{path} never got {lines} lines")


def test_prompts_are_not_logged_by_default(tmp_path: Path) -> None:
    outcomes = tmp_path / "data" / "router_outcomes.jsonl"
    router = _router(outcomes)
    assert router.settings.log_prompts is False
    _cascade(router, "my social security number is 078-05-1120")
    time.sleep(0.2)
    assert not outcomes.exists()
    assert router.stats.escalations == 1  # the cascade did run


@pytest.mark.usefixtures("umask0")
def test_opted_in_prompt_log_is_private_bounded_and_rotated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(routed, "OUTCOMES_MAX_BYTES", 20_000)
    monkeypatch.setattr(routed, "OUTCOMES_KEEP", 2)
    outcomes = tmp_path / "data" / "router_outcomes.jsonl"
    router = _router(outcomes, log_prompts=True)
    _cascade(router, "What is the capital of Peru?")
    [row] = _wait_for(outcomes, 1)
    assert row == {
        "prompt": "What is the capital of Peru?",
        "tier": "tiny",
        "correct": False,
        "source": "cascade",
    }
    assert mode(outcomes) == 0o600 and mode(outcomes.parent) == 0o700

    huge = "é" * 100_000  # 200 kB of UTF-8 in one prompt
    _cascade(router, huge, times=12)
    time.sleep(0.3)
    logs = sorted(outcomes.parent.glob("router_outcomes.jsonl*"))
    assert [p.name for p in logs] == [
        "router_outcomes.jsonl",
        "router_outcomes.jsonl.1",
        "router_outcomes.jsonl.2",
    ]
    for path in logs:
        assert mode(path) == 0o600
        assert path.stat().st_size <= 20_000
        for line in path.read_text(encoding="utf-8").splitlines():
            assert len(line.encode()) <= routed.PROMPT_LOG_BYTES + 100
            row = json.loads(line)
            if row["prompt"] != "What is the capital of Peru?":
                assert huge.startswith(row["prompt"]) and row.get("truncated") is True
                assert routed.PROMPT_LOG_BYTES - 2 <= len(row["prompt"].encode())


# -- the real daemon -------------------------------------------------------------------------


@pytest.mark.real
def test_the_daemon_keeps_its_state_private_and_logs_no_prompt_by_default(
    model_store: ModelStore,
) -> None:
    model_store.ensure("tiny")
    model_store.ensure("tiny-q8")
    home = short_socket_dir() / "home"
    (home / "config").mkdir(parents=True)
    config = home / "config" / "models.toml"
    tiers = (
        "[models.tiny]\nquality = 0.45\ncost_per_1k = 1.0\n"
        "[models.tiny-q8]\nquality = 0.6\ncost_per_1k = 2.0\n"
        "[router]\nmargin = 1.0\ndistill = true\n"
    )
    config.write_text(tiers)
    marker = "zebra-umbrella-7731"
    d = start_daemon("--models", "tiny,tiny-q8", home=home)
    try:
        body = {
            "model": "auto",
            "messages": [{"role": "user", "content": f"Say the word {marker}."}],
            "temperature": 0,
            "max_tokens": 8,
            "edgeinfer": {"cache": "off"},
        }
        with d.client() as c:
            reply = c.post("/v1/chat/completions", json=body)
            assert reply.status_code == 200, reply.text
            assert reply.json()["edgeinfer"]["route"]["route"] == "cascade"
        time.sleep(0.5)  # a verdict would be appended by a worker thread
        data = home / "data"
        assert not (data / "router_outcomes.jsonl").exists()
        for path in home.rglob("*"):
            if path.is_file() and not path.name.startswith("distill.sqlite"):
                assert marker.encode() not in path.read_bytes(), path
        for folder in (data, home / "cache", home / "logs", home / "config"):
            assert mode(folder) == 0o700, folder
        # every file the daemon wrote (logs, cache database and WAL, KV states, verdicts)
        public = {"models.toml", "tiktoken"}  # the test's own config, a copied public vocabulary
        written = [p for p in home.rglob("*") if p.is_file() and not public & {*p.parts}]
        assert written and {str(p): mode(p) for p in written} == {str(p): 0o600 for p in written}
        distill = sqlite_files(data / "distill.sqlite")
        assert distill and {f.name: mode(f) for f in distill} == {f.name: 0o600 for f in distill}

        # opting in: the next cascade's verdict is kept, owner-only
        config.write_text(tiers + "log_prompts = true\n")
        with d.client() as c:
            assert c.post("/admin/reload").status_code == 200
            assert c.post("/v1/chat/completions", json=body).status_code == 200
        [row] = _wait_for(data / "router_outcomes.jsonl", 1)
        assert marker in row["prompt"] and row["tier"] == "tiny"
        assert mode(data / "router_outcomes.jsonl") == 0o600
    finally:
        assert d.stop() == 0, d.output()
