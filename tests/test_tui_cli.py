"""`edgeinfer chat` / `edgeinfer top` wiring: offering to start a daemon when none answers, and
the daemon side never loading textual (the TUI is imported by these commands only)."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from typing import Any

import pytest

from edgeinfer import cli
from edgeinfer.tui.app import EdgeinferApp
from tests.conftest import short_socket_dir


class Recorder:
    """Stands in for ``subprocess.Popen`` and ``App.run``: records, starts nothing."""

    def __init__(self) -> None:
        self.started: list[list[str]] = []
        self.apps: list[EdgeinferApp] = []
        self.pid = 4242

    def popen(self, cmd: list[str], **kw: Any) -> Recorder:
        assert kw["start_new_session"] is True  # survives the TUI's terminal
        self.started.append(cmd)
        return self

    def run(self, app: EdgeinferApp) -> None:
        self.apps.append(app)


@pytest.fixture
def rec(monkeypatch: pytest.MonkeyPatch) -> Recorder:
    r = Recorder()
    monkeypatch.setattr(subprocess, "Popen", r.popen)
    monkeypatch.setattr(EdgeinferApp, "run", lambda app: r.run(app))
    return r


def no_daemon() -> str:
    return str(short_socket_dir() / "none.sock")


def test_chat_start_launches_a_background_daemon(rec: Recorder) -> None:
    sock = no_daemon()
    assert cli.main(["chat", "--start", "--models", "tiny", "--socket", sock]) == 0
    [cmd] = rec.started
    assert cmd[1:] == ["-m", "edgeinfer", "serve", "--socket", sock, "--models", "tiny"]
    [app] = rec.apps
    assert app.mode == "chat" and app.store is not None
    assert app.store.path.parent.name == "data"  # the conversations live in the data dir


def test_chat_no_start_runs_the_tui_alone(rec: Recorder) -> None:
    assert cli.main(["chat", "--no-start", "--max-tokens", "9", "--socket", no_daemon()]) == 0
    assert rec.started == []
    assert rec.apps[0].params == {"max_tokens": 9}


@pytest.mark.parametrize(("reply", "starts"), [("\n", True), ("y\n", True), ("n\n", False)])
def test_chat_asks_when_interactive(
    rec: Recorder, monkeypatch: pytest.MonkeyPatch, reply: str, starts: bool
) -> None:
    stdin = io.StringIO(reply)
    stdin.isatty = lambda: True  # type: ignore[method-assign]
    monkeypatch.setattr(sys, "stdin", stdin)
    assert cli.main(["chat", "--socket", no_daemon()]) == 0
    assert bool(rec.started) is starts


def test_top_never_starts_a_daemon(rec: Recorder) -> None:
    assert cli.main(["top", "--interval", "2", "--socket", no_daemon()]) == 0
    assert rec.started == []
    assert rec.apps[0].mode == "top" and rec.apps[0].interval == 2.0


def test_daemon_side_and_cli_import_without_textual() -> None:
    code = (
        "import json, sys\n"
        "import edgeinfer.cli, edgeinfer.client, edgeinfer.server.app\n"
        "edgeinfer.cli.parser()\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] == 'textual')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []
