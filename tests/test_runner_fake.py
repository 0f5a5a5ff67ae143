"""Scheduling logic of the runner against the deterministic fake engine (fast). Scenarios that
must hold on llama.cpp too run over both engines in tests/test_runner_scenarios.py."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from edgeinfer.core.values import Delta, Failed, Finished, Sampling
from edgeinfer.engine.base import EngineParams
from edgeinfer.engine.fake import FakeEngine, factory
from edgeinfer.errors import Busy, ContextLengthExceeded, RequestTimeout
from edgeinfer.pool.events import GenRequest
from edgeinfer.pool.runner import ModelRunner
from tests.conftest import Sink, gen_request, start_runner


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    path = tmp_path / "fake.gguf"
    path.write_bytes(b"fake")
    return path


def make_runner(model_file: Path, **kw: Any) -> tuple[ModelRunner, FakeEngine]:
    params = EngineParams(
        n_ctx=kw.pop("n_ctx", 256), slots=kw.pop("slots", 4), n_batch=kw.pop("n_batch", 64)
    )
    options = {
        k: kw.pop(k) for k in ("max_queue", "context_shift", "n_keep", "prefix_store") if k in kw
    }
    make = factory(**kw)
    return start_runner(model_file, make, params, **options), make.made[0]


def run_alone(model_file: Path, prompt: list[int], max_tokens: int = 8) -> str:
    runner, _ = make_runner(model_file)
    try:
        req, sink = gen_request(prompt, max_tokens)
        runner.submit(req)
        return sink.wait()[0]
    finally:
        runner.stop()


def test_concurrent_answers_equal_answers_alone(model_file: Path) -> None:
    prompts = [[10 + i, 20 + i, 30 + i] * (i + 1) for i in range(7)]
    alone = [run_alone(model_file, p) for p in prompts]
    runner, engine = make_runner(model_file)
    try:
        pairs = [gen_request(p) for p in prompts]
        for req, _ in pairs:
            runner.submit(req)
        together = [sink.wait()[0] for _, sink in pairs]
    finally:
        runner.stop()
    assert together == alone
    # they really were batched: some decode step held tokens of several sequences
    assert max(len({item.seq for item in b}) for b in engine.batches) >= 4


def test_long_prompt_is_chunked_and_never_stalls_a_running_stream(model_file: Path) -> None:
    runner, engine = make_runner(model_file, n_batch=16, decode_delay=0.002)
    try:
        short, short_sink = gen_request([1, 2], max_tokens=40)
        runner.submit(short)
        time.sleep(0.05)  # let it start generating
        long, long_sink = gen_request(list(range(200, 300)), max_tokens=2)
        runner.submit(long)
        assert isinstance(long_sink.wait()[1], Finished)
        assert isinstance(short_sink.wait()[1], Finished)
    finally:
        runner.stop()
    assert max(len(b) for b in engine.batches) <= 16
    long_steps = [b for b in engine.batches if any(i.seq != engine.batches[0][0].seq for i in b)]
    chunked = [b for b in long_steps if len(b) > 2]
    assert len(chunked) >= 100 // 16  # the 100-token prompt took several steps
    # while both were active, every step still carried the short request's next token
    short_seq = engine.batches[0][0].seq
    mixed = [b for b in chunked if any(i.seq == short_seq for i in b)]
    assert mixed, "prefill chunks and the running stream shared steps"


def test_full_queue_is_busy(model_file: Path) -> None:
    runner, _ = make_runner(model_file, slots=1, max_queue=2, decode_delay=0.01)
    try:
        reqs = [gen_request([1, 2], max_tokens=1000) for _ in range(3)]
        runner.submit(reqs[0][0])
        time.sleep(0.05)  # admitted into the only slot
        runner.submit(reqs[1][0])
        runner.submit(reqs[2][0])
        extra, _ = gen_request([1])
        with pytest.raises(Busy):
            runner.submit(extra)
        for req, _ in reqs:
            req.cancel()
    finally:
        runner.stop()


def test_prompt_longer_than_context_is_refused(model_file: Path) -> None:
    runner, _ = make_runner(model_file, n_ctx=64)
    try:
        req, _ = gen_request(list(range(64)))
        with pytest.raises(ContextLengthExceeded):
            runner.submit(req)
    finally:
        runner.stop()


def test_eos_and_stop_strings(model_file: Path) -> None:
    runner, _ = make_runner(model_file, eos_after=3)
    try:
        req, sink = gen_request([1, 2, 3], max_tokens=50)
        runner.submit(req)
        text, done = sink.wait()
        assert isinstance(done, Finished) and done.reason == "stop"
        assert done.usage.completion_tokens == 3 and len(text.split()) == 3
        word = text.split()[1]
        req, sink = gen_request([1, 2, 3], max_tokens=50, stop=(word,))
        runner.submit(req)
        text2, done = sink.wait()
        assert isinstance(done, Finished) and done.reason == "stop"
        assert word not in text2
    finally:
        runner.stop()


def test_deadline_fails_with_timeout(model_file: Path) -> None:
    runner, _ = make_runner(model_file, decode_delay=0.01)
    try:
        req, sink = gen_request([1, 2], max_tokens=10_000, deadline=time.monotonic() + 0.1)
        runner.submit(req)
        _, done = sink.wait()
        assert isinstance(done, Failed) and isinstance(done.error, RequestTimeout)
    finally:
        runner.stop()


def test_stop_fails_queued_requests_and_closes_engine(model_file: Path) -> None:
    runner, engine = make_runner(model_file, slots=1, decode_delay=0.01)
    running, running_sink = gen_request([1], max_tokens=10_000)
    queued, queued_sink = gen_request([2])
    runner.submit(running)
    runner.submit(queued)
    time.sleep(0.05)
    threading.Thread(target=runner.stop).start()
    assert isinstance(queued_sink.wait()[1], Failed)
    assert isinstance(running_sink.wait()[1], Failed)
    time.sleep(0.1)
    assert engine.closed


def test_missing_model_file_is_a_load_error(tmp_path: Path) -> None:
    runner = ModelRunner("gone", tmp_path / "nope.gguf", EngineParams(), factory())
    runner.start()
    with pytest.raises(Exception, match="no model file"):
        runner.wait_loaded(5)


def test_logprobs_travel_with_their_text(model_file: Path) -> None:
    runner, _ = make_runner(model_file, eos_after=4)
    try:
        sink = Sink()
        req = GenRequest([1, 2], Sampling(temperature=0), 10, sink, logprobs=2)
        runner.submit(req)
        deltas = []
        while True:
            event = sink.events.get(timeout=5)
            if not isinstance(event, Delta):
                break
            deltas.append(event)
        pieces = [lp.piece for d in deltas for lp in d.logprobs]
        assert len(pieces) == 4  # one per generated token, none for the end-of-generation token
        assert b"".join(pieces).decode() == "".join(d.text for d in deltas)
        assert all(len(lp.top) == 2 for d in deltas for lp in d.logprobs)
    finally:
        runner.stop()


def events_of(sink: Sink) -> tuple[list[Delta], Finished | Failed]:
    deltas = []
    while isinstance(event := sink.events.get(timeout=5), Delta):
        deltas.append(event)
    return deltas, event


def test_a_whole_request_gets_its_answer_in_one_delta(model_file: Path) -> None:
    """A non-streamed answer (``whole``): the same text, stop strings and all, handed over in
    one event at the end instead of one per token."""
    runner, _ = make_runner(model_file)
    try:
        for stop in ((), ("zz-never",)):
            streamed, s_sink = gen_request([5, 6, 7], max_tokens=12, stop=stop)
            whole, w_sink = gen_request([5, 6, 7], max_tokens=12, stop=stop, whole=True)
            runner.submit(streamed)
            runner.submit(whole)
            s_deltas, s_done = events_of(s_sink)
            w_deltas, w_done = events_of(w_sink)
            assert len(s_deltas) == 12
            assert len(w_deltas) == 1
            assert w_deltas[0].text == "".join(d.text for d in s_deltas)
            assert isinstance(w_done, Finished) and isinstance(s_done, Finished)
            assert w_done.reason == s_done.reason == "length"
            assert w_done.usage.completion_tokens == 12
        words = "".join(d.text for d in s_deltas).split()
        word = next(w for k, w in enumerate(words) if k >= 2 and w not in words[:k])
        cut, sink = gen_request([5, 6, 7], max_tokens=12, stop=(word,), whole=True)
        runner.submit(cut)
        deltas, done = events_of(sink)
        assert isinstance(done, Finished) and done.reason == "stop"
        assert len(deltas) == 1 and deltas[0].text and word not in deltas[0].text
    finally:
        runner.stop()


def test_a_whole_request_still_streams_the_head_whose_logprobs_are_read(
    model_file: Path,
) -> None:
    """A cascade judges a draft's head token by token, even for a non-streaming client: the
    tokens with logprobs come as generated, the rest in one delta at the end."""
    runner, _ = make_runner(model_file)
    try:
        req, sink = gen_request([1, 2], max_tokens=10, logprobs=0, logprob_tokens=3, whole=True)
        runner.submit(req)
        deltas, done = events_of(sink)
        assert isinstance(done, Finished) and done.usage.completion_tokens == 10
        assert [len(d.logprobs) for d in deltas] == [1, 1, 1, 0]
        assert len(deltas[-1].text.split()) == 7
    finally:
        runner.stop()


def test_a_sampler_the_engine_refuses_fails_only_that_request(model_file: Path) -> None:
    runner, _ = make_runner(model_file)
    try:
        sink = Sink()
        runner.submit(GenRequest([1], Sampling(grammar="bad grammar"), 5, sink))
        _, done = sink.wait()
        assert isinstance(done, Failed) and "refuses" in done.error.message
        ok, ok_sink = gen_request([1, 2])
        runner.submit(ok)
        assert isinstance(ok_sink.wait()[1], Finished)
    finally:
        runner.stop()


def test_an_engine_bug_fails_the_requests_but_the_runner_lives(model_file: Path) -> None:
    runner, engine = make_runner(model_file)
    try:
        original = engine.decode
        calls = {"n": 0}

        def flaky(batch: object) -> None:
            calls["n"] += 1
            if calls["n"] == 2:
                raise TypeError("a binding bug")
            original(batch)  # type: ignore[arg-type]

        engine.decode = flaky  # type: ignore[method-assign]
        req, sink = gen_request([1, 2, 3], max_tokens=20)
        runner.submit(req)
        _, done = sink.wait()
        assert isinstance(done, Failed) and "binding bug" in done.error.message
        ok, ok_sink = gen_request([4, 5])
        runner.submit(ok)
        assert isinstance(ok_sink.wait()[1], Finished)
    finally:
        runner.stop()


class GatedSampler(FakeEngine):
    """A fake whose sampler building (a grammar parse, in llama.cpp) waits for a gate: the
    runner is then mid-admission, the request neither queued nor in a slot."""

    gate: threading.Event
    entered: threading.Event

    def new_sampler(self, sampling: Sampling) -> object:
        self.entered.set()
        assert self.gate.wait(30)
        return super().new_sampler(sampling)


def gated_runner(model_file: Path) -> tuple[ModelRunner, threading.Event, threading.Event]:
    gate, entered = threading.Event(), threading.Event()

    def make(path: Path, params: EngineParams) -> FakeEngine:
        engine = GatedSampler(params=params)
        engine.gate, engine.entered = gate, entered
        return engine

    runner = start_runner(model_file, make, EngineParams(n_ctx=256, slots=2, n_batch=64))
    return runner, gate, entered


def test_admission_runs_outside_the_lock_the_event_loop_takes(model_file: Path) -> None:
    """submit() and held() (event-loop side) never wait for engine work of the runner."""
    runner, gate, entered = gated_runner(model_file)
    try:
        first, first_sink = gen_request([5, 6, 7])
        runner.submit(first)
        assert entered.wait(10)  # the runner is inside new_sampler now

        def loop_side() -> None:
            with runner.held():
                runner.submit(gen_request([8, 9])[0])

        t = threading.Thread(target=loop_side)
        t.start()
        t.join(10)
        assert not t.is_alive(), "submit() waited for the runner's admission"
    finally:
        gate.set()
    assert isinstance(first_sink.wait()[1], Finished)
    runner.stop()


def test_a_request_between_queue_and_slot_keeps_the_runner_busy_and_drain_waits(
    model_file: Path,
) -> None:
    from edgeinfer.pool.retire import Drainer, Retiring

    runner, gate, entered = gated_runner(model_file)
    req, sink = gen_request([5, 6, 7])
    runner.submit(req)
    assert entered.wait(10)
    snap = runner.snapshot()
    assert snap["queue_depth"] == 0 and snap["slots_busy"] == 0  # invisible to the counts
    assert runner.busy  # but in flight
    drainer = Drainer(grace=0.0, timeout=30)
    drainer.retire(Retiring(runner, 0, 0, "test"), handed_out=0.0)
    time.sleep(0.2)
    gate.set()
    text, done = sink.wait()
    assert isinstance(done, Finished) and done.reason != "cancelled", done  # not cut by the stop
    assert drainer.wait(10) and not runner.busy
