"""Daemon lifecycle on a real socket: permissions, stale sockets, a second daemon, signals."""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import MODELS_DIR, short_socket_dir, start_daemon

pytestmark = pytest.mark.real


def test_socket_is_owner_only_and_removed_on_sigterm(tiny_path: Path) -> None:
    d = start_daemon("--models", "tiny")
    try:
        mode = stat.S_IMODE(os.stat(d.socket).st_mode)
        assert stat.S_ISSOCK(os.stat(d.socket).st_mode)
        assert mode == 0o600
        assert stat.S_IMODE(os.stat(d.socket.parent).st_mode) == 0o700
    finally:
        # uvicorn drains, then re-raises the signal: the conventional "terminated by SIGTERM"
        assert d.stop(signal.SIGTERM) in (0, -signal.SIGTERM)
    assert not d.socket.exists()
    assert "Traceback" not in d.output()


def test_sigint_shuts_down_cleanly(tiny_path: Path) -> None:
    d = start_daemon("--models", "tiny")
    assert d.stop(signal.SIGINT) in (0, 130)
    assert not d.socket.exists()
    assert "Traceback" not in d.output()


def test_stale_socket_is_replaced(tiny_path: Path) -> None:
    path = short_socket_dir() / "stale.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))
    stale.close()  # the file stays, nobody listens: what a crashed daemon leaves
    assert path.exists()
    d = start_daemon("--models", "tiny", socket=path)
    try:
        with d.client() as c:
            assert c.get("/health").status_code == 200
    finally:
        d.stop()


def test_second_daemon_on_the_same_socket_exits_with_a_clear_message(tiny_path: Path) -> None:
    first = start_daemon("--models", "tiny")
    try:
        env = {**os.environ, "EDGEINFER_MODELS_DIR": str(MODELS_DIR)}
        second = subprocess.run(
            [
                sys.executable,
                "-m",
                "edgeinfer",
                "serve",
                "--models",
                "tiny",
                "--socket",
                str(first.socket),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
        )
        assert second.returncode == 1
        assert "already serving" in second.stderr
        assert second.stderr.strip().count("\n") == 0, second.stderr  # one readable line
        with first.client() as c:
            assert c.get("/health").status_code == 200
    finally:
        first.stop()


def test_too_long_socket_path_is_refused() -> None:
    long = "/tmp/" + "x" * 120 + "/ei.sock"
    out = subprocess.run(
        [sys.executable, "-m", "edgeinfer", "serve", "--socket", long],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 1
    assert "AF_UNIX limit" in out.stderr


def test_unknown_model_name_is_one_line(tiny_path: Path) -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "edgeinfer",
            "serve",
            "--models",
            "tinyy",
            "--socket",
            str(short_socket_dir() / "s.sock"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 1
    assert "unknown model 'tinyy'" in out.stderr and "tiny" in out.stderr
