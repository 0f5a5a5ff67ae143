"""`edgeinfer chat` end to end in a real terminal: tmux runs the TUI against a real daemon
serving the real `tiny` model; keys go in with send-keys and the screen comes back with
capture-pane (polled, never a fixed sleep)."""

from __future__ import annotations

import re
import shlex
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import Daemon, start_daemon

pytestmark = pytest.mark.real
QUESTION = "What is the capital of France?"


class Tmux:
    """One private tmux server (``-L``) holding one window of a fixed size."""

    def __init__(self) -> None:
        exe = shutil.which("tmux")
        assert exe, "tmux is required for the terminal test (.ci/run installs it)"
        self.base = [exe, "-L", f"ei-test-{uuid.uuid4().hex[:8]}"]

    def run(self, *args: str) -> str:
        out = subprocess.run([*self.base, *args], capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        return out.stdout

    def start(self, command: str, width: int = 100, height: int = 30) -> None:
        self.run("new-session", "-d", "-s", "main", "-x", str(width), "-y", str(height), command)

    def send(self, *keys: str) -> None:
        self.run("send-keys", "-t", "main", *keys)

    def screen(self) -> str:
        return self.run("capture-pane", "-p", "-t", "main")

    def wait_for(self, cond: Callable[[str], bool], what: str, timeout: float = 240) -> str:
        deadline = time.monotonic() + timeout
        while True:
            text = self.screen()
            if cond(text):
                return text
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}; the screen:\n{text}")
            time.sleep(0.2)

    def kill(self) -> None:
        subprocess.run([*self.base, "kill-server"], capture_output=True, timeout=30)


@pytest.fixture
def tmux() -> Iterator[Tmux]:
    t = Tmux()
    yield t
    t.kill()


@pytest.fixture
def own_daemon(tiny_path: Path) -> Iterator[Daemon]:
    """A daemon of this test alone, so its /stats counts exactly the TUI's request."""
    d = start_daemon("--models", "tiny")
    yield d
    d.stop(signal.SIGTERM)
    shutil.rmtree(d.socket.parent, ignore_errors=True)


def requests_of(screen: str, model: str) -> int | None:
    """The ``req`` column of ``model``'s row in the stats pane's models table."""
    lines = screen.splitlines()
    header = next((line.split() for line in lines if line.split()[:2] == ["model", "state"]), None)
    row = next((line.split() for line in lines if line.split()[:1] == [model]), None)
    if header is None or row is None or len(row) != len(header):
        return None
    return int(row[header.index("req")])


def stored_answer(home: Path) -> str:
    with sqlite3.connect(home / "data" / "chat.sqlite3") as db:
        row = db.execute("SELECT content FROM messages WHERE role = 'assistant'").fetchone()
    assert row is not None, "the answer was not stored"
    return str(row[0])


def test_chat_then_stats_in_a_real_terminal(own_daemon: Daemon, tmux: Tmux) -> None:
    home = own_daemon.home
    chat = [sys.executable, "-m", "edgeinfer", "chat", "--socket", str(own_daemon.socket)]
    chat += ["--model", "tiny", "--max-tokens", "24", "--temperature", "0", "--no-start"]
    env = ["env", f"EDGEINFER_HOME={home}", "TERM=xterm-256color"]
    tmux.start(f"{shlex.join(env + chat)}; echo TUI-EXIT-$?; sleep 600")

    tmux.wait_for(lambda s: "● connected" in s, "the TUI to connect")
    tmux.send("-l", QUESTION)
    tmux.send("Enter")
    screen = tmux.wait_for(lambda s: "tok/s" in s, "the answer's badge")
    assert re.search(r"tiny · generated · \d+ cached tok · [\d.]+ tok/s", screen), screen
    assert QUESTION in screen
    answer = stored_answer(home)
    words = re.findall(r"[A-Za-z]{3,}", answer)[:4]
    assert words, f"the model answered nothing readable: {answer!r}"
    assert all(w in screen for w in words), (words, screen)

    tmux.send("F3")
    screen = tmux.wait_for(lambda s: requests_of(s, "tiny") == 1, "the request counted in stats")
    assert "Cache hit rate" in screen and "Saved (measured)" in screen

    tmux.send("C-q")
    tmux.wait_for(lambda s: "TUI-EXIT-0" in s, "the TUI to quit cleanly", timeout=60)
