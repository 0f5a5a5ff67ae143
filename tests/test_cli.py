"""The `edgeinfer ask` command against the real daemon, and its error line without one."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

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


def test_paths_follow_edgeinfer_home(tmp_path: Path) -> None:
    env = {**os.environ, "EDGEINFER_HOME": str(tmp_path / "h")}
    env.pop("EDGEINFER_SOCKET", None)
    env.pop("EDGEINFER_MODELS_DIR", None)
    out = subprocess.run(
        [sys.executable, "-m", "edgeinfer", "paths"], capture_output=True, text=True, env=env
    )
    assert out.returncode == 0, out.stderr
    rows = dict(line.split(maxsplit=1) for line in out.stdout.splitlines())
    assert rows["socket"] == str(tmp_path / "h" / "run" / "edgeinfer.sock")
    assert rows["models"] == str(tmp_path / "h" / "data" / "models")


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ["ask", "hi", "--temperature", "nan"],
            "argument --temperature: 'nan': need a finite number",
        ),
        (["top", "--interval", "0"], "'0': need a finite number at least 0.1 and at most 60"),
        (["router", "train", "--l2", "inf"], "'inf': need a finite number above 0"),
    ],
)
def test_numbers_that_would_fail_later_are_refused_in_one_usage_line(
    args: list[str], expected: str, tmp_path: Path
) -> None:
    """NaN broke the request's JSON in the client (a traceback), --interval 0 made `top`
    reconnect forever, --l2 nan wrote a router.json of NaN weights and said it had trained."""
    env = {**os.environ, "EDGEINFER_HOME": str(tmp_path)}
    out = subprocess.run(
        [sys.executable, "-m", "edgeinfer", *args], capture_output=True, text=True, env=env
    )
    assert out.returncode == 2 and expected in out.stderr and "Traceback" not in out.stderr


def test_an_os_error_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    env = {**os.environ, "EDGEINFER_HOME": str(tmp_path)}
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "router.json").mkdir()  # where `router train` writes
    outcomes = tmp_path / "o.jsonl"
    outcomes.write_bytes(b"\xff\xfe not utf-8")
    for args in (
        ["router", "train", "--no-log", str(outcomes)],
        ["router", "train", "--no-log", "--out", str(tmp_path), str(outcomes)],
    ):
        out = subprocess.run(
            [sys.executable, "-m", "edgeinfer", *args], capture_output=True, text=True, env=env
        )
        assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
        assert out.stderr.startswith("edgeinfer: error: ") and out.stderr.count("\n") == 1
