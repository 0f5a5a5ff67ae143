"""Continuous batching and prefix reuse on the real `tiny` model: correct, isolated, visible."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from edgeinfer.config.load import bundled_catalogue_path, load_catalogue
from edgeinfer.core.options import GenerateOptions
from edgeinfer.core.values import Sampling
from edgeinfer.engine import llama
from edgeinfer.errors import InvalidRequest
from edgeinfer.pool.scheduler import ModelPool
from edgeinfer.pool.slots import common_prefix
from edgeinfer.service.pipeline import InferenceService
from tests.conftest import start_daemon

pytestmark = pytest.mark.real

GREEDY = GenerateOptions(max_tokens=48, sampling=Sampling(temperature=0))


class Pool:
    """A real in-process pool over the real engine (no HTTP), for precise scheduling tests."""

    def __init__(self, path: Path, state_dir: Path | None = None, **spec: Any) -> None:
        base = load_catalogue([bundled_catalogue_path()]).models["tiny"]
        self.pool = ModelPool(llama.load, state_dir=state_dir)
        self.pool.add(base.model_copy(update=spec), path, "0" * 64)
        self.pool.wait_loaded()
        self.service = InferenceService(self.pool)

    def chat(self, *conversations: list[dict[str, str]], options: GenerateOptions = GREEDY) -> Any:
        async def one(messages: list[dict[str, str]]) -> tuple[str, Any]:
            gen = await self.service.chat("tiny", messages, options)
            return await gen.text(), gen.result

        async def many() -> list[tuple[str, Any]]:
            return await asyncio.gather(*(one(m) for m in conversations))

        return asyncio.run(many())

    def stats(self) -> dict[str, Any]:
        snapshot: dict[str, Any] = self.pool.snapshot()["tiny"]
        return snapshot

    def tokens(self, messages: list[dict[str, str]]) -> list[int]:
        from edgeinfer.prompt.template import render_chat

        engine = self.pool.get("tiny")[1].engine
        prompt = render_chat(engine.info.chat_template, messages)
        return engine.tokenize(prompt, add_special=False)

    def close(self) -> None:
        self.pool.stop()


@pytest.fixture
def pools(tiny_path: Path) -> Iterator[list[Pool]]:
    made: list[Pool] = []
    yield made
    for p in made:
        p.close()


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


QUESTIONS = [
    "What is the tallest mountain on Earth?",
    "Write a haiku about autumn leaves.",
    "Explain what a CPU does in two sentences.",
    "List three uses of copper.",
    "Why do cats purr?",
    "Translate 'good morning' into French.",
    "What is 12 times 12?",
    "Describe the color blue to someone who cannot see.",
]


def test_greedy_output_alone_equals_output_among_seven_concurrent(
    tiny_path: Path, pools: list[Pool]
) -> None:
    alone = []
    for q in QUESTIONS:
        fresh = Pool(tiny_path, slots=8)
        pools.append(fresh)
        alone.append(fresh.chat(user(q))[0][0])
    shared = Pool(tiny_path, slots=8)
    pools.append(shared)
    together = [text for text, _ in shared.chat(*(user(q) for q in QUESTIONS))]
    assert together == alone
    assert shared.stats()["requests"] == 8


def test_interleaved_conversations_never_see_each_other(tiny_path: Path, pools: list[Pool]) -> None:
    topics = {"a": "my dog Rex, a brown beagle", "b": "my car, a red 1967 Mustang"}
    follow_ups = ["What did I just tell you about?", "Give it a nickname.", "Summarise it."]

    def run(pool: Pool, names: list[str]) -> dict[str, list[str]]:
        history = {
            n: [{"role": "user", "content": f"Let me tell you about {topics[n]}."}] for n in names
        }
        answers: dict[str, list[str]] = {n: [] for n in names}
        for turn in range(3):
            for n in names:  # round robin: a, b, a, b, ...
                ((text, result),) = pool.chat(history[n])
                answers[n].append(text)
                # the reused KV is never more than what this conversation itself evaluated
                assert result.usage.cached_tokens <= len(pool.tokens(history[n])) - 1
                history[n] += [
                    {"role": "assistant", "content": text},
                    {"role": "user", "content": follow_ups[turn]},
                ]
        return answers

    together = Pool(tiny_path, slots=2)
    pools.append(together)
    interleaved = run(together, ["a", "b"])
    for name in ("a", "b"):
        alone = Pool(tiny_path, slots=2)
        pools.append(alone)
        assert run(alone, [name])[name] == interleaved[name]
    assert together.stats()["prefix_kept"] >= 4  # each conversation continued in its slot

    # an unrelated new conversation gets at most the chat template's shared head
    fresh = user("Tell me about the history of the printing press.")
    ((_, result),) = together.chat(fresh)
    head = max(
        common_prefix(together.tokens(fresh), together.tokens(user(f"Let me tell you about {t}.")))
        for t in topics.values()
    )
    assert result.usage.cached_tokens <= head


def test_context_shift_off_refuses_an_answer_past_the_window(
    tiny_path: Path, pools: list[Pool]
) -> None:
    """Without context shift, a max_tokens that cannot fit is refused before any work (where a
    generation ends at the window: tests/test_runner_scenarios.py)."""
    pool = Pool(tiny_path, n_ctx=192, slots=1, context_shift=False)
    pools.append(pool)
    with pytest.raises(InvalidRequest, match="at most 192"):
        pool.chat(user("hi"), options=GenerateOptions(max_tokens=300))


def test_disk_tier_serves_a_warm_prompt_after_a_daemon_restart(tiny_path: Path) -> None:
    d = start_daemon("--models", "tiny", wait=False)
    d.stop()  # only to get a home; configure a low save threshold for this test
    (d.home / "config").mkdir(parents=True, exist_ok=True)
    (d.home / "config" / "models.toml").write_text("[models.tiny]\nprompt_cache_min_tokens = 64\n")
    body = {
        "model": "tiny",
        "edgeinfer": {"cache": "off"},  # the KV disk tier, not the response cache
        "max_tokens": 24,
        "temperature": 0,
        "messages": user(
            "Notes: "
            + " ".join(f"Box {i} holds {i * 3} apples." for i in range(40))
            + " How many apples are in box 5?"
        ),
    }
    first = start_daemon("--models", "tiny", home=d.home)
    with first.client() as c:
        cold = c.post("/v1/chat/completions", json=body).json()
    first.stop()
    second = start_daemon("--models", "tiny", home=d.home)
    try:
        with second.client() as c:
            warm = c.post("/v1/chat/completions", json=body).json()
            stats = c.get("/stats").json()["models"]["tiny"]
    finally:
        second.stop()
    assert cold["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    assert (
        warm["usage"]["prompt_tokens_details"]["cached_tokens"]
        == warm["usage"]["prompt_tokens"] - 1
    )
    assert stats["prefix_restored_disk"] == 1
    assert warm["choices"][0]["message"]["content"] == cold["choices"][0]["message"]["content"]


def test_every_cpu_model_decodes_on_one_shared_thread(
    tiny_path: Path, pools: list[Pool], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two loaded models, two runner threads, one decode thread: so ggml keeps one OpenMP team
    however many models are loaded (more teams than cores made workers sleep and wake on every
    step, or spin for minutes after a request when told to stay active)."""
    import threading

    seen: set[str] = set()
    real = llama.C.llama_decode

    def recording(ctx: Any, batch: Any) -> int:
        seen.add(threading.current_thread().name)
        return int(real(ctx, batch))

    monkeypatch.setattr(llama.C, "llama_decode", recording)
    pools.extend([Pool(tiny_path), Pool(tiny_path)])
    for pool in pools:
        ((text, result),) = pool.chat(user("Name a colour."))
        assert text and result.usage.completion_tokens > 0
    assert len(seen) == 1 and next(iter(seen)).startswith("ggml-cpu"), seen


def test_logprobs_can_stop_after_the_first_tokens(tiny_path: Path, pools: list[Pool]) -> None:
    """A cascade's draft needs logprobs only for the answer's head; the rest is plain decoding."""
    pools.append(Pool(tiny_path))
    service = pools[0].service
    question = user("List five fruits, one per line.")

    async def run(options: GenerateOptions) -> tuple[str, int]:
        gen = await service.chat("tiny", question, options)
        text, logprobs = await gen.collect()
        return text, len(logprobs)

    head = GenerateOptions(max_tokens=24, sampling=Sampling(temperature=0), logprobs=2)
    all_text, n_all = asyncio.run(run(head))
    head_text, n_head = asyncio.run(run(replace(head, logprob_tokens=5)))
    assert n_all > 5 and n_head == 5
    assert head_text == all_text  # the same greedy answer either way


def test_logprob_entropy_is_exact_without_alternatives(tiny_path: Path) -> None:
    """The cascade's entropy comes from the engine over the whole vocabulary, so a draft needs
    no top alternatives (their partition costs 1 ms a token); checked against float64 numpy."""
    import numpy as np

    from edgeinfer.engine.base import BatchItem, EngineParams

    engine = llama.load(tiny_path, EngineParams(n_ctx=256, slots=1))
    try:
        tokens = engine.tokenize("The capital of France is", add_special=True)
        last = len(tokens) - 1
        engine.decode([BatchItem(0, i, t, i == last) for i, t in enumerate(tokens)])
        raw = llama.C.llama_get_logits_ith(engine._ctx, last)
        logits = np.ctypeslib.as_array(raw, shape=(engine.info.n_vocab,)).astype(np.float64)
        logp = logits - (logits.max() + np.log(np.exp(logits - logits.max()).sum()))
        token = int(np.argmax(logits))
        expected = float(-(np.exp(logp) * logp).sum())

        bare = engine.logprobs(last, token, 0)
        assert bare.top == () and bare.entropy is not None
        assert bare.entropy == pytest.approx(expected, rel=1e-3, abs=1e-4)
        assert bare.logprob == pytest.approx(float(logp[token]), abs=1e-4)
        with_top = engine.logprobs(last, token, 3)
        assert with_top.top[0][1] == pytest.approx(float(logp[token]), abs=1e-4)
        assert with_top.entropy == bare.entropy
    finally:
        engine.close()
