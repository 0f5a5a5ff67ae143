"""The `edgeinfer ask` command against the real daemon, and its error line without one."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import Daemon, short_socket_dir


@pytest.mark.real
def test_ask_streams_an_answer(daemon: Daemon) -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "edgeinfer",
            "ask",
            "What is 2 + 2?",
            "--model",
            "tiny",
            "--max-tokens",
            "16",
            "--temperature",
            "0",
            "--socket",
            str(daemon.socket),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert len(out.stdout.strip()) > 0


def test_ask_without_a_daemon_is_one_clear_line() -> None:
    sock = short_socket_dir() / "none.sock"
    out = subprocess.run(
        [sys.executable, "-m", "edgeinfer", "ask", "hi", "--socket", str(sock)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 1
    line = out.stderr.strip()
    assert line.startswith("edgeinfer: error: no edgeinfer daemon answers on")
    assert "edgeinfer serve" in line and "\n" not in line


@pytest.mark.real
def test_ask_unknown_model_is_one_line(daemon: Daemon) -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "edgeinfer",
            "ask",
            "hi",
            "--model",
            "nope",
            "--socket",
            str(daemon.socket),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 1
    assert "model 'nope' is not served here" in out.stderr
