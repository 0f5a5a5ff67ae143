"""The daemon's side of a runner process (``pool/process.py``), fast, over the fake engine in a
real child process: the channel, cancel, queue bounds, and what a crash does to each request.
The same behaviour with llama.cpp and a real daemon is in ``test_runner_process.py``."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edgeinfer.config.schema import ModelSpec, PathSource
from edgeinfer.core.values import Delta, Event, Failed, Finished, Sampling
from edgeinfer.engine.base import EngineParams
from edgeinfer.engine.fake import STUCK_TOKEN, FakeEngineFactory, FakeProcessFactory
from edgeinfer.errors import Busy, ModelCrashed
from edgeinfer.pool import crashes
from edgeinfer.pool.events import GenRequest
from edgeinfer.pool.maker import RunnerMaker
from edgeinfer.pool.process import RunnerProcess


class Collector:
    def __init__(self) -> None:
        self.events: list[Event] = []
        self.first = threading.Event()
        self.done = threading.Event()

    def __call__(self, event: Event) -> None:
        self.events.append(event)
        if isinstance(event, Delta):
            self.first.set()
        else:
            self.done.set()

    def end(self, timeout: float = 10.0) -> Event:
        assert self.done.wait(timeout), f"no end after {timeout} s: {self.events[-3:]}"
        return self.events[-1]


def request(max_tokens: int = 5000) -> tuple[GenRequest, Collector]:
    out = Collector()
    req = GenRequest([11, 12, 13], Sampling(temperature=0.0), max_tokens, out)
    return req, out


@pytest.fixture
def runner(tmp_path: Path) -> Iterator[RunnerProcess]:
    model = tmp_path / "fake.gguf"
    model.write_bytes(b"fake")
    r = RunnerProcess(
        "fake", model, EngineParams(n_ctx=8192, slots=1), FakeProcessFactory(), max_queue=1
    )
    r.start()
    r.wait_loaded(30)
    yield r
    r.stop()


def test_a_request_streams_and_finishes_through_the_process_boundary(
    runner: RunnerProcess,
) -> None:
    req, out = request(max_tokens=6)
    runner.submit(req)
    end = out.end()
    assert isinstance(end, Finished) and end.reason == "length"
    assert end.usage.completion_tokens == 6
    text = "".join(e.text for e in out.events if isinstance(e, Delta))
    assert len(text.split()) == 6
    snap = runner.snapshot()
    assert snap["generated_tokens"] == 6 and snap["requests"] == 1
    assert snap["runner"]["pid"] != os.getpid() and snap["runner"]["state"] == "running"
    assert runner.memory_bytes()


def test_a_cancel_reaches_the_runner_and_frees_the_slot(runner: RunnerProcess) -> None:
    req, out = request()
    runner.submit(req)
    assert out.first.wait(10)
    req.cancel()
    end = out.end()
    assert isinstance(end, Finished) and end.reason == "cancelled"
    assert runner.wait_idle(5) and runner.snapshot()["slots_busy"] == 0


def test_the_queue_is_bounded_in_the_daemon(runner: RunnerProcess) -> None:
    running, queued = request(), request()
    runner.submit(running[0])
    runner.submit(queued[0])
    with pytest.raises(Busy, match="1 requests queued"):
        runner.submit(request()[0])
    assert runner.snapshot()["busy_rejections"] == 1
    running[0].cancel()
    queued[0].cancel()
    assert runner.wait_idle(10)


def test_a_crash_fails_the_streamed_request_and_retries_the_queued_one(
    runner: RunnerProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(crashes, "BACKOFF_S", 0.05)
    (streaming, s_out), (waiting, w_out) = request(), request(max_tokens=4)
    runner.submit(streaming)
    runner.submit(waiting)
    assert s_out.first.wait(10)
    pid = runner.pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    failed = s_out.end()
    assert isinstance(failed, Failed) and isinstance(failed.error, ModelCrashed)
    assert "SIGKILL" in failed.error.message
    answered = w_out.end(20)
    assert isinstance(answered, Finished) and answered.usage.completion_tokens == 4
    assert not any(isinstance(e, Failed) for e in w_out.events)
    assert runner.restarts == 1 and runner.pid not in (None, pid)
    assert runner.snapshot()["errors"] == 1


def test_the_third_crash_in_the_window_leaves_the_model_in_error(
    runner: RunnerProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(crashes, "BACKOFF_S", 0.05)
    for n in range(3):
        deadline = time.monotonic() + 20
        while runner.pid is None or runner.restarts < n:
            assert time.monotonic() < deadline, "the runner did not come back"
            time.sleep(0.02)
        pid = runner.pid
        os.kill(pid, signal.SIGSEGV)
        while runner.pid == pid:
            time.sleep(0.02)
    deadline = time.monotonic() + 10
    while runner.load_error is None:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert isinstance(runner.load_error, ModelCrashed)
    assert "crashed 3 times" in runner.load_error.message
    with pytest.raises(ModelCrashed):
        runner.submit(request()[0])
    assert runner.snapshot()["runner"]["state"] == "error"


def test_a_step_stuck_in_native_code_ends_the_runner_not_the_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """llama.cpp once ran one sampling step for over ten minutes (its grammar matcher on a
    pattern repeating what can match nothing): the slot stayed taken, the requests behind it
    waited and /health said ok. Past ``step_timeout`` the runner process ends itself; the
    request in the stuck step fails at once (sent again it would hang the next runner too),
    the one queued behind it is answered by the restarted runner."""
    monkeypatch.setattr(crashes, "BACKOFF_S", 0.05)
    model = tmp_path / "fake.gguf"
    model.write_bytes(b"fake")
    factory = FakeProcessFactory(child_factory="edgeinfer.engine.fake:stuck_engine")
    r = RunnerProcess("fake", model, EngineParams(n_ctx=8192, slots=1), factory, step_timeout=1.0)
    r.start()
    try:
        r.wait_loaded(30)
        out = Collector()
        r.submit(GenRequest([11, STUCK_TOKEN], Sampling(temperature=0.0), 8, out))
        queued, answered = request(max_tokens=3)
        r.submit(queued)
        failed = out.end(60)
        assert isinstance(failed, Failed) and isinstance(failed.error, ModelCrashed)
        assert "step_timeout" in failed.error.message and "SIGKILL" in failed.error.message
        assert isinstance(answered.end(30), Finished)
        assert r.restarts == 1  # the stuck request was not sent again
    finally:
        r.stop()


def test_a_models_step_timeout_reaches_its_runner(tmp_path: Path) -> None:
    made: dict[str, Any] = {}

    def capture(*args: Any, **kwargs: Any) -> Any:
        made.update(kwargs)

    source = PathSource(type="path", path=str(tmp_path / "m.gguf"))
    maker = RunnerMaker(FakeEngineFactory({}), runner=capture)
    maker(ModelSpec(name="m", source=source, step_timeout=42), tmp_path / "m.gguf", None)
    assert made["step_timeout"] == 42
    maker(ModelSpec(name="m", source=source), tmp_path / "m.gguf", None)
    assert made["step_timeout"] == 300  # the default: far above any step seen on a CPU
