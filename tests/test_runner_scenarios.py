"""One set of runner scenarios over both engines, so the fake cannot drift from llama.cpp.

Every test runs twice through the same :class:`ModelRunner` and the same assertions: on
``engine/fake.py`` and on ``engine/llama.py`` with the real `tiny` model. The two legitimately
differ in their text and in how many tokens a text makes, so the tests assert what both must
satisfy: finish reasons, token counts, ``cached_tokens``, which prompt positions the engine was
asked to decode, and equal answers from two runs of the same engine. Scenarios act between two
steps from the runner thread (:class:`Watch`), never after a sleep, so they hold at any speed.
"""

from __future__ import annotations

import math
import queue
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from edgeinfer.core.values import Delta, Event, Finished, Sampling
from edgeinfer.engine import llama
from edgeinfer.engine.base import BatchItem, Engine, EngineFactory, EngineParams
from edgeinfer.engine.fake import FakeEngine
from edgeinfer.pool.events import GenRequest
from edgeinfer.pool.prefix_store import PrefixStore
from edgeinfer.pool.runner import ModelRunner
from edgeinfer.pool.slots import common_prefix
from tests.conftest import Sink, gen_request, start_runner

NOTES = "Here are my notes. " + " ".join(f"Box {i} holds {i * 3} apples." for i in range(10))
OTHER = "Something else entirely. " + " ".join(f"Town {i} has {i + 2} bridges." for i in range(14))


@dataclass
class Backend:
    """One engine under test: builds runners over it and records every batch it decodes."""

    path: Path
    load: EngineFactory
    batches: list[list[BatchItem]] = field(default_factory=list)
    runners: list[ModelRunner] = field(default_factory=list)
    # greedy, every end-of-generation token banned: a real answer runs to max_tokens, so
    # scenarios compare answers of a known length (set when the first runner has loaded)
    greedy: Sampling = field(default_factory=lambda: Sampling(temperature=0))

    def runner(
        self, *, n_ctx: int = 256, slots: int = 2, n_batch: int = 64, **options: Any
    ) -> ModelRunner:
        # One thread: two OpenMP threads on a 2-core box shared with other test runs took ten
        # times as long. Flash attention off: llama.cpp's CPU kernel for it takes another path
        # for ubatches of 64 tokens or more, whose logits differ by up to 0.5 from smaller
        # ubatches', so a prompt evaluated in other chunks may get another greedy answer; the
        # scenarios compare answers across batchings, which without it are bit-identical.
        params = EngineParams(
            n_ctx=n_ctx, slots=slots, n_batch=n_batch, threads=1, flash_attn="off"
        )
        runner = start_runner(self.path, self._recording, params, **options)
        self.runners.append(runner)
        engine = runner.engine
        ban = {t: -math.inf for t in range(engine.info.n_vocab) if engine.is_eog(t)}
        self.greedy = Sampling(temperature=0, logit_bias=ban)
        return runner

    def request(self, prompt: list[int], max_tokens: int = 8, **kw: Any) -> tuple[GenRequest, Sink]:
        return gen_request(prompt, max_tokens, sampling=self.greedy, **kw)

    def run(
        self, runner: ModelRunner, prompt: list[int], max_tokens: int = 8
    ) -> tuple[str, Finished]:
        """Run one request to its end: its text, and its Finished event."""
        req, sink = self.request(prompt, max_tokens)
        runner.submit(req)
        return ended(sink)

    def answer_alone(self, prompt: list[int], max_tokens: int = 8) -> str:
        """The answer of a fresh runner, where nothing can be reused."""
        text, done = self.run(self.runner(slots=1), prompt, max_tokens)
        assert done.usage.cached_tokens == 0
        return text

    def _recording(self, path: Path, params: EngineParams) -> Engine:
        engine = self.load(path, params)
        decode = engine.decode

        def recorded(batch: Sequence[BatchItem]) -> None:
            self.batches.append(list(batch))
            decode(batch)

        engine.decode = recorded  # type: ignore[method-assign]
        return engine

    def prompt_positions(self, since: int, n_prompt: int, skip: set[int]) -> list[int]:
        """The prompt positions (below ``n_prompt``) the engine decoded since batch ``since``,
        in sequences other than ``skip``."""
        return sorted(
            item.pos
            for batch in self.batches[since:]
            for item in batch
            if item.seq not in skip and item.pos < n_prompt
        )

    def seqs(self, start: int, end: int) -> set[int]:
        """The sequences of the batches ``start`` to ``end``."""
        return {item.seq for batch in self.batches[start:end] for item in batch}


@pytest.fixture(params=["fake", pytest.param("llama", marks=pytest.mark.real)])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """The fake engine, then llama.cpp over the real `tiny` model (marked ``real``)."""
    if request.param == "fake":
        path = tmp_path / "fake.gguf"
        path.write_bytes(b"fake")
        made = Backend(path, lambda p, params: FakeEngine(params=params))
    else:
        made = Backend(request.getfixturevalue("tiny_path"), llama.load)
    yield made
    for runner in made.runners:
        runner.stop()


class Watch(Sink):
    """A Sink that calls ``action`` on the runner thread as the ``at``-th Delta arrives: a
    client acting between two steps of the runner, exactly, whatever the engine's speed. Notes
    how many batches the engine had decoded then and at the request's end."""

    def __init__(self, backend: Backend, at: int, action: Callable[[], object]) -> None:
        super().__init__()
        self._backend, self._at, self._action = backend, at, action
        self.deltas = 0
        self.decoded_at_action = -1
        self.decoded_at_end = -1

    def __call__(self, event: Event) -> None:
        super().__call__(event)
        if isinstance(event, Delta):
            self.deltas += 1
            if self.deltas == self._at:
                self.decoded_at_action = len(self._backend.batches)
                self._action()
        else:
            self.decoded_at_end = len(self._backend.batches)


def tokens(runner: ModelRunner, text: str, *, first: bool = True) -> list[int]:
    return runner.engine.tokenize(text, add_special=first)


def ended(sink: Sink) -> tuple[str, Finished]:
    """A request's text and its Finished event (a Failed one fails the test)."""
    try:
        text, done = sink.wait(timeout=120)  # a hang guard, not a speed claim
    except queue.Empty:
        pytest.fail("the request never ended")
    assert isinstance(done, Finished), done
    return text, done


@pytest.mark.parametrize("source", ["finished", "in_flight"])
def test_a_shared_prefix_is_reused_and_the_answer_is_unchanged(
    backend: Backend, source: str
) -> None:
    """A second request sharing a long prefix with a finished request (kept in its slot) or
    with one still generating (copied from its slot) starts from that prefix: the engine
    evaluates only the rest, and the answer is the one a fresh runner gives."""
    runner = backend.runner(slots=2)
    prefix = tokens(runner, NOTES)
    first_prompt = prefix + tokens(runner, " How many apples are in box 3?", first=False)
    prompt = prefix + tokens(runner, " Which box holds the most apples?", first=False)
    assert len(prefix) >= 32 and first_prompt[len(prefix)] != prompt[len(prefix)]
    second, sink = backend.request(prompt)
    marks: list[int] = []

    def submit_second() -> None:
        marks.append(len(backend.batches))
        runner.submit(second)

    # in flight: the second arrives as the first's first piece of text goes out
    first_sink = Watch(backend, 1, submit_second if source == "in_flight" else lambda: None)
    first, _ = backend.request(first_prompt, max_tokens=16, sink=first_sink)
    runner.submit(first)
    if source == "finished":
        ended(first_sink)
        submit_second()
    text, done = ended(sink)
    if source == "in_flight":
        ended(first_sink)

    assert (done.reason, done.usage.completion_tokens) == ("length", 8)
    assert done.usage.cached_tokens == len(prefix)
    first_seqs = backend.seqs(0, marks[0])
    positions = backend.prompt_positions(
        marks[0], len(prompt), skip=first_seqs if source == "in_flight" else set()
    )
    assert positions == list(range(len(prefix), len(prompt)))  # what the engine evaluated
    stats = runner.snapshot()
    assert (stats["prefix_kept"], stats["prefix_copied"]) == (
        (1, 0) if source == "finished" else (0, 1)
    )
    assert text == backend.answer_alone(prompt)


def test_a_prompt_longer_than_n_batch_is_prefilled_in_chunks_to_the_same_answer(
    backend: Backend,
) -> None:
    """A prompt over n_batch goes to the engine in n_batch-sized chunks, one a step, and
    answers as the same prompt evaluated in one batch does."""
    chunked = backend.runner(slots=1, n_batch=16)
    prompt = tokens(chunked, NOTES + " How many apples are in box 7?")
    n = len(prompt)
    assert n > 3 * 16 and n % 16
    text, done = backend.run(chunked, prompt)
    assert prefill_steps(backend.batches, n) == [16] * (n // 16) + [n % 16]
    assert backend.prompt_positions(0, n, skip=set()) == list(range(n))

    mark = len(backend.batches)
    text_whole, done_whole = backend.run(backend.runner(slots=1, n_batch=256), prompt)
    assert prefill_steps(backend.batches[mark:], n) == [n]
    assert counts(done) == counts(done_whole) == ("length", n, 8, 0)
    assert text == text_whole


def prefill_steps(batches: list[list[BatchItem]], n_prompt: int) -> list[int]:
    """The size of each batch that evaluated prompt tokens (one request alone)."""
    return [len(b) for b in batches if any(item.pos < n_prompt for item in b)]


def counts(done: Finished) -> tuple[str, int, int, int]:
    usage = done.usage
    return done.reason, usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens


STORY = (
    "Once upon a time, in a small village at the edge of a dark forest, there lived an old"
    " clockmaker who"
)


@pytest.mark.parametrize("shift", [True, False], ids=["shift", "no_shift"])
def test_a_generation_past_the_context(backend: Backend, shift: bool) -> None:
    """With context shift a generation slides past its slot's context and keeps the first
    n_keep tokens, which a later request reuses; without it, it ends at the context's end."""
    n_ctx, n_keep = 64, 16
    runner = backend.runner(slots=1, n_ctx=n_ctx, n_keep=n_keep, context_shift=shift)
    prompt = tokens(runner, STORY)
    assert n_keep < len(prompt) < n_ctx // 2
    text, done = backend.run(runner, prompt, max_tokens=100)
    shifts = runner.snapshot()["context_shifts"]
    if not shift:
        assert counts(done) == ("length", len(prompt), n_ctx - len(prompt), 0)
        assert shifts == 0
        return
    assert counts(done) == ("length", len(prompt), 100, 0)
    assert len(prompt) + 100 > n_ctx and shifts >= 1
    # the shifted KV is dropped but for its head, which was never moved: a request with the
    # same prompt reuses exactly n_keep tokens and answers as with nothing reused
    again, done = backend.run(runner, prompt)
    assert done.usage.cached_tokens == n_keep
    assert again == backend.answer_alone(prompt) and text.startswith(again)


@pytest.mark.parametrize("tier", ["ram", "disk"])
def test_a_saved_prefix_is_restored_into_a_slot(
    backend: Backend, tier: str, tmp_path: Path
) -> None:
    """A conversation's KV, saved when another request takes its slot (RAM tier) or when the
    runner stops (disk tier), is restored for its next request: same answer, one token left to
    evaluate; a prompt that matches no saved prefix restores nothing."""

    def store() -> PrefixStore:
        disk = tmp_path / "kv" if tier == "disk" else None
        return PrefixStore(ram_bytes=64 << 20, disk_dir=disk, disk_bytes=64 << 20, min_tokens=32)

    runner = backend.runner(slots=1, prefix_store=store())
    conv = tokens(runner, NOTES + " How many apples are in box 3?")
    other = tokens(runner, OTHER)
    # longer than every saved state, so a lookup for it compares against all their prefixes
    assert len(other) > len(conv) + 8 and common_prefix(conv, other) == 0
    text, cold = backend.run(runner, conv)
    if tier == "ram":
        backend.run(runner, other)  # takes the only slot: conv's KV goes to the RAM tier
    else:
        runner.stop()  # writes the slot's KV to the disk tier
        runner = backend.runner(slots=1, prefix_store=store())
    mark = len(backend.batches)
    again, warm = backend.run(runner, conv)
    assert counts(cold) == ("length", len(conv), 8, 0)
    assert counts(warm) == ("length", len(conv), 8, len(conv) - 1)
    assert backend.prompt_positions(mark, len(conv), skip=set()) == [len(conv) - 1]
    assert again == text
    restored = {k: v for k, v in runner.snapshot().items() if k.startswith("prefix_restored")}
    assert restored == {f"prefix_restored_{t}": int(t == tier) for t in ("ram", "disk")}

    _, unrelated = backend.run(runner, other[::-1])  # as long, and no saved state's prefix
    assert unrelated.usage.cached_tokens == 0
    assert runner.snapshot()[f"prefix_restored_{tier}"] == 1


def test_a_cancelled_request_ends_within_a_step_and_frees_its_slot(backend: Backend) -> None:
    """A request cancelled while it generates ends "cancelled" at the next step, before the
    engine decodes anything more, and the request queued behind it gets the only slot."""
    runner = backend.runner(slots=1)
    hog_sink = Watch(backend, 3, lambda: hog.cancel())  # the client hangs up after 3 pieces
    hog, _ = backend.request(tokens(runner, "Tell me a long story."), 200, sink=hog_sink)
    nxt, nxt_sink = backend.request(tokens(runner, "Name a colour."), 4)
    runner.submit(hog)
    runner.submit(nxt)  # waits for the only slot
    _, done = ended(hog_sink)
    assert done.reason == "cancelled"
    assert 3 <= done.usage.completion_tokens < 200
    assert hog_sink.decoded_at_end == hog_sink.decoded_at_action  # no decode after the cancel
    _, done = ended(nxt_sink)
    assert counts(done) == ("length", done.usage.prompt_tokens, 4, 0)
    stats = runner.snapshot()
    assert (stats["cancelled"], stats["slots_busy"], stats["requests"]) == (1, 0, 2)
