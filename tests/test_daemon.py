"""Daemon lifecycle on a real socket: permissions, stale sockets, a second daemon, signals."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
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


def test_a_chosen_socket_path_leaves_its_folder_and_other_files_alone(
    tiny_path: Path, tmp_path: Path
) -> None:
    """--socket in a shared folder (say /tmp) used to chmod the folder to 0700, and a regular
    file at the socket path was deleted as a "stale socket"."""
    shared = short_socket_dir()
    shared.chmod(0o1777)
    precious = shared / "notes.txt"
    precious.write_text("keep me")
    env = {**os.environ, "EDGEINFER_MODELS_DIR": str(MODELS_DIR), "EDGEINFER_HOME": str(tmp_path)}
    cmd = [sys.executable, "-m", "edgeinfer", "serve", "--models", "tiny", "--socket"]
    done = subprocess.run(
        [*cmd, str(precious)], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 1 and precious.read_text() == "keep me"
    assert (
        done.stderr.strip()
        .splitlines()[-1]
        .endswith("notes.txt exists and is not a socket; remove it or choose another --socket path")
    )
    d = start_daemon("--models", "tiny", socket=shared / "ei.sock")
    try:
        with d.client() as c:
            assert c.get("/health").status_code == 200
        assert stat.S_IMODE(os.stat(shared).st_mode) == 0o1777
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


def test_full_queue_answers_busy_with_retry_after(tiny_path: Path) -> None:
    home = short_socket_dir() / "home"
    (home / "config").mkdir(parents=True)
    (home / "config" / "models.toml").write_text("[models.tiny]\nslots = 1\nmax_queue = 1\n")
    d = start_daemon("--models", "tiny", home=home)
    body = {
        "model": "tiny",
        "max_tokens": 64,
        "logit_bias": {"0": -100, "2": -100, "4": -100},
        "messages": [{"role": "user", "content": "Tell me a long story."}],
    }
    try:
        with ThreadPoolExecutor(8) as pool, d.client() as c:
            responses = list(
                pool.map(lambda _: c.post("/v1/chat/completions", json=body), range(8))
            )
            codes = sorted(r.status_code for r in responses)
            assert set(codes) == {200, 503}, codes
            busy = [r for r in responses if r.status_code == 503]
            assert all(r.json()["error"]["code"] == "busy" for r in busy)
            assert all(int(r.headers["Retry-After"]) >= 1 for r in busy)
            assert c.get("/health").json()["models"]["tiny"]["status"] == "ready"
            assert c.get("/stats").json()["models"]["tiny"]["busy_rejections"] == len(busy)
    finally:
        d.stop()


def test_daemon_writes_json_logs_under_the_log_dir(tiny_path: Path) -> None:
    d = start_daemon("--models", "tiny")
    d.stop()
    log = d.home / "logs" / "edgeinfer.log"
    entries = [json.loads(line) for line in log.read_text().splitlines()]
    assert any(e["message"].startswith("edgeinfer listening on") for e in entries)
    assert {"time", "level", "logger", "message"} <= set(entries[0])


def test_corrupt_and_missing_models_leave_the_others_serving(tiny_path: Path) -> None:
    base = short_socket_dir()
    bad = base / "broken.gguf"
    bad.write_bytes(b"GGUF" + os.urandom(4096))  # a GGUF header, then garbage
    home = base / "home"
    (home / "config").mkdir(parents=True)
    (home / "config" / "models.toml").write_text(
        f'[models.broken]\nsource = {{ type = "path", path = "{bad}" }}\n'
        f'[models.gone]\nsource = {{ type = "path", path = "{base / "missing.gguf"}" }}\n'
    )
    d = start_daemon("--models", "tiny,broken,gone", home=home)
    try:
        with d.client() as c:
            health = c.get("/health").json()
            assert health["models"]["tiny"]["status"] == "ready"
            for name in ("broken", "gone"):
                assert health["models"][name]["status"] == "error"
                assert health["models"][name]["reason"]
            assert "missing.gguf" in health["models"]["gone"]["reason"]
            r = c.post(
                "/v1/chat/completions",
                json={"model": "broken", "messages": [{"role": "user", "content": "hi"}]},
            )
            assert r.status_code == 503 and r.json()["error"]["code"] == "model_unavailable"
            assert "broken" in r.json()["error"]["message"]
            ok = c.post(
                "/v1/chat/completions",
                json={
                    "model": "tiny",
                    "max_tokens": 4,
                    "messages": [{"role": "user", "content": "hi"}],
                },
            )
            assert ok.status_code == 200
    finally:
        d.stop()
