"""Scheduling logic of the runner against the deterministic fake engine (fast)."""

from __future__ import annotations

import queue
import threading
import time
from pathlib import Path

import pytest

from edgeinfer.core.values import Delta, Event, Failed, Finished, Sampling
from edgeinfer.engine.base import EngineParams
from edgeinfer.engine.fake import FakeEngine, factory
from edgeinfer.errors import Busy, ContextLengthExceeded, RequestTimeout
from edgeinfer.pool.events import GenRequest
from edgeinfer.pool.prefix_store import PrefixStore
from edgeinfer.pool.runner import ModelRunner


class Sink:
    """Collects one request's events from the runner thread."""

    def __init__(self) -> None:
        self.events: queue.Queue[Event] = queue.Queue()

    def __call__(self, event: Event) -> None:
        self.events.put(event)

    def wait(self, timeout: float = 10.0) -> tuple[str, Finished | Failed]:
        text = ""
        while True:
            event = self.events.get(timeout=timeout)
            if isinstance(event, Delta):
                text += event.text
            else:
                return text, event


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    path = tmp_path / "fake.gguf"
    path.write_bytes(b"fake")
    return path


def make_runner(model_file: Path, **kw: object) -> tuple[ModelRunner, FakeEngine]:
    params = EngineParams(
        n_ctx=int(kw.pop("n_ctx", 256)),  # type: ignore[call-overload]
        slots=int(kw.pop("slots", 4)),  # type: ignore[call-overload]
        n_batch=int(kw.pop("n_batch", 64)),  # type: ignore[call-overload]
    )
    max_queue = int(kw.pop("max_queue", 64))  # type: ignore[call-overload]
    options = {k: kw.pop(k) for k in ("context_shift", "n_keep", "prefix_store") if k in kw}
    make = factory(**kw)
    runner = ModelRunner(
        "fake",
        model_file,
        params,
        make,
        max_queue=max_queue,
        **options,  # type: ignore[arg-type]
    )
    runner.start()
    runner.wait_loaded(5)
    return runner, make.made[0]


def request(prompt: list[int], max_tokens: int = 8, **kw: object) -> tuple[GenRequest, Sink]:
    sink = Sink()
    req = GenRequest(prompt, Sampling(temperature=0), max_tokens, sink, **kw)  # type: ignore[arg-type]
    return req, sink


def run_alone(model_file: Path, prompt: list[int], max_tokens: int = 8) -> str:
    runner, _ = make_runner(model_file)
    try:
        req, sink = request(prompt, max_tokens)
        runner.submit(req)
        return sink.wait()[0]
    finally:
        runner.stop()


def test_concurrent_answers_equal_answers_alone(model_file: Path) -> None:
    prompts = [[10 + i, 20 + i, 30 + i] * (i + 1) for i in range(7)]
    alone = [run_alone(model_file, p) for p in prompts]
    runner, engine = make_runner(model_file)
    try:
        pairs = [request(p) for p in prompts]
        for req, _ in pairs:
            runner.submit(req)
        together = [sink.wait()[0] for _, sink in pairs]
    finally:
        runner.stop()
    assert together == alone
    # they really were batched: some decode step held tokens of several sequences
    assert max(len({item.seq for item in b}) for b in engine.batches) >= 4


def test_prefix_reuse_evaluates_only_the_new_tokens(model_file: Path) -> None:
    runner, engine = make_runner(model_file)
    try:
        system = list(range(100, 160))
        first, sink = request(system + [1, 2, 3])
        runner.submit(first)
        _, done = sink.wait()
        assert isinstance(done, Finished) and done.usage.cached_tokens == 0
        before = sum(len(b) for b in engine.batches)
        second, sink = request(system + [4, 5])
        runner.submit(second)
        _, done = sink.wait()
        assert isinstance(done, Finished)
        assert done.usage.cached_tokens == len(system)
        evaluated = sum(len(b) for b in engine.batches) - before
        assert evaluated == 2 + done.usage.completion_tokens - 1
    finally:
        runner.stop()


def test_long_prompt_is_chunked_and_never_stalls_a_running_stream(model_file: Path) -> None:
    runner, engine = make_runner(model_file, n_batch=16, decode_delay=0.002)
    try:
        short, short_sink = request([1, 2], max_tokens=40)
        runner.submit(short)
        time.sleep(0.05)  # let it start generating
        long, long_sink = request(list(range(200, 300)), max_tokens=2)
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


def test_cancel_frees_the_slot_within_a_step(model_file: Path) -> None:
    runner, _ = make_runner(model_file, slots=1, decode_delay=0.005)
    try:
        hog, hog_sink = request([1, 2, 3], max_tokens=10_000, stop=())
        runner.submit(hog)
        time.sleep(0.05)
        hog.cancel()
        _, done = hog_sink.wait()
        assert isinstance(done, Finished) and done.reason == "cancelled"
        nxt, sink = request([4, 5])
        runner.submit(nxt)
        assert isinstance(sink.wait(timeout=5)[1], Finished)
        assert runner.snapshot()["cancelled"] == 1
    finally:
        runner.stop()


def test_full_queue_is_busy(model_file: Path) -> None:
    runner, _ = make_runner(model_file, slots=1, max_queue=2, decode_delay=0.01)
    try:
        reqs = [request([1, 2], max_tokens=1000) for _ in range(3)]
        runner.submit(reqs[0][0])
        time.sleep(0.05)  # admitted into the only slot
        runner.submit(reqs[1][0])
        runner.submit(reqs[2][0])
        extra, _ = request([1])
        with pytest.raises(Busy):
            runner.submit(extra)
        for req, _ in reqs:
            req.cancel()
    finally:
        runner.stop()


def test_prompt_longer_than_context_is_refused(model_file: Path) -> None:
    runner, _ = make_runner(model_file, n_ctx=64)
    try:
        req, _ = request(list(range(64)))
        with pytest.raises(ContextLengthExceeded):
            runner.submit(req)
    finally:
        runner.stop()


def test_without_context_shift_generation_stops_at_the_context_end(model_file: Path) -> None:
    runner, _ = make_runner(model_file, n_ctx=64, context_shift=False)
    try:
        req, sink = request(list(range(60)), max_tokens=1000)
        runner.submit(req)
        _, done = sink.wait()
        assert isinstance(done, Finished) and done.reason == "length"
        assert done.usage.prompt_tokens + done.usage.completion_tokens <= 64
    finally:
        runner.stop()


def test_eos_and_stop_strings(model_file: Path) -> None:
    runner, _ = make_runner(model_file, eos_after=3)
    try:
        req, sink = request([1, 2, 3], max_tokens=50)
        runner.submit(req)
        text, done = sink.wait()
        assert isinstance(done, Finished) and done.reason == "stop"
        assert done.usage.completion_tokens == 3 and len(text.split()) == 3
        word = text.split()[1]
        req, sink = request([1, 2, 3], max_tokens=50, stop=(word,))
        runner.submit(req)
        text2, done = sink.wait()
        assert isinstance(done, Finished) and done.reason == "stop"
        assert word not in text2
    finally:
        runner.stop()


def test_deadline_fails_with_timeout(model_file: Path) -> None:
    runner, _ = make_runner(model_file, decode_delay=0.01)
    try:
        req, sink = request([1, 2], max_tokens=10_000, deadline=time.monotonic() + 0.1)
        runner.submit(req)
        _, done = sink.wait()
        assert isinstance(done, Failed) and isinstance(done.error, RequestTimeout)
    finally:
        runner.stop()


def test_stop_fails_queued_requests_and_closes_engine(model_file: Path) -> None:
    runner, engine = make_runner(model_file, slots=1, decode_delay=0.01)
    running, running_sink = request([1], max_tokens=10_000)
    queued, queued_sink = request([2])
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


def test_context_shift_slides_the_window_and_keeps_the_head(model_file: Path) -> None:
    runner, engine = make_runner(model_file, n_ctx=64, n_keep=8, slots=1)
    try:
        prompt = list(range(100, 140))
        req, sink = request(prompt, max_tokens=100)
        runner.submit(req)
        _, done = sink.wait()
        assert isinstance(done, Finished) and done.reason == "length"
        assert done.usage.completion_tokens == 100  # went on past the 64-token context
        assert runner.snapshot()["context_shifts"] >= 2
        # the first n_keep tokens stayed at their positions; after release only they remain
        assert engine.kv[0] == {p: prompt[p] for p in range(8)}
    finally:
        runner.stop()


def test_busy_slot_prefix_is_copied_not_recomputed(model_file: Path) -> None:
    runner, engine = make_runner(model_file, slots=2, decode_delay=0.002)
    try:
        shared = list(range(300, 400))
        first, first_sink = request(shared + [1], max_tokens=200)
        runner.submit(first)
        time.sleep(0.05)  # first is generating in its slot
        second, sink = request(shared + [2], max_tokens=3)
        runner.submit(second)
        text, done = sink.wait()
        assert isinstance(done, Finished)
        assert done.usage.cached_tokens == len(shared)
        assert runner.snapshot()["prefix_copied"] == 1
        first.cancel()
        first_sink.wait()
    finally:
        runner.stop()
    # the fake's answer is a function of the whole sequence: equal answers, equal histories
    assert text == run_alone(model_file, shared + [2], max_tokens=3)


def test_evicted_prefix_is_restored_from_the_ram_tier(model_file: Path, tmp_path: Path) -> None:
    store = PrefixStore(ram_bytes=1 << 20, disk_dir=None, disk_bytes=0, min_tokens=32)
    runner, _ = make_runner(model_file, slots=1, prefix_store=store)
    try:
        conv_a = list(range(500, 600))
        text_a, _ = _run(runner, conv_a + [1])
        _run(runner, list(range(700, 800)))  # an unrelated prompt evicts conversation A
        text, done = _run(runner, conv_a + [1])
        assert isinstance(done, Finished) and done.usage.cached_tokens == len(conv_a)
        assert text == text_a
        assert runner.snapshot()["prefix_restored_ram"] == 1
    finally:
        runner.stop()


def test_disk_tier_survives_a_restart(model_file: Path, tmp_path: Path) -> None:
    def store() -> PrefixStore:
        return PrefixStore(
            ram_bytes=1 << 20, disk_dir=tmp_path / "kv", disk_bytes=1 << 20, min_tokens=32
        )

    conv = list(range(500, 600))
    runner, _ = make_runner(model_file, slots=1, prefix_store=store())
    text_a, _ = _run(runner, conv + [1])
    runner.stop()  # saves the slot's state to disk
    runner, _ = make_runner(model_file, slots=1, prefix_store=store())
    try:
        text, done = _run(runner, conv + [1])
        assert isinstance(done, Finished) and done.usage.cached_tokens == len(conv)
        assert text == text_a
        assert runner.snapshot()["prefix_restored_disk"] == 1
        # an unrelated prompt of the same length restores nothing
        _, other = _run(runner, list(range(900, 1001)))
        assert isinstance(other, Finished) and other.usage.cached_tokens == 0
    finally:
        runner.stop()


def _run(runner: ModelRunner, prompt: list[int]) -> tuple[str, Finished | Failed]:
    req, sink = request(prompt, max_tokens=4)
    runner.submit(req)
    return sink.wait()


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


def test_a_sampler_the_engine_refuses_fails_only_that_request(model_file: Path) -> None:
    runner, _ = make_runner(model_file)
    try:
        sink = Sink()
        runner.submit(GenRequest([1], Sampling(grammar="bad grammar"), 5, sink))
        _, done = sink.wait()
        assert isinstance(done, Failed) and "refuses" in done.error.message
        ok, ok_sink = request([1, 2])
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
        req, sink = request([1, 2, 3], max_tokens=20)
        runner.submit(req)
        _, done = sink.wait()
        assert isinstance(done, Failed) and "binding bug" in done.error.message
        ok, ok_sink = request([4, 5])
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

    runner = ModelRunner("fake", model_file, EngineParams(n_ctx=256, slots=2, n_batch=64), make)
    runner.start()
    runner.wait_loaded(5)
    return runner, gate, entered


def test_admission_runs_outside_the_lock_the_event_loop_takes(model_file: Path) -> None:
    """submit() and held() (event-loop side) never wait for engine work of the runner."""
    runner, gate, entered = gated_runner(model_file)
    try:
        first, first_sink = request([5, 6, 7])
        runner.submit(first)
        assert entered.wait(10)  # the runner is inside new_sampler now

        def loop_side() -> None:
            with runner.held():
                runner.submit(request([8, 9])[0])

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
    req, sink = request([5, 6, 7])
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
