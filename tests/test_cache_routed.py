"""Routed (``model: "auto"``) answers in the cache: the service over the fake engine's pool and
the real SQLite store (fast). A routed answer may come from any tier, so it is keyed on every
tier's model, as a named model's answers are on its file's digest."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from edgeinfer.cache.layer import ResponseCache
from edgeinfer.cache.store import CacheStore
from edgeinfer.config.schema import ModelSpec
from edgeinfer.core.generation import Generation
from edgeinfer.core.options import GenerateOptions
from edgeinfer.core.tier import TierCard
from edgeinfer.core.values import Sampling
from edgeinfer.embed.fake import FakeEmbedder
from edgeinfer.engine.fake import factory
from edgeinfer.pool.retire import Drainer
from edgeinfer.pool.scheduler import ModelPool
from edgeinfer.service.pipeline import InferenceService, routed_digest
from tests.cache_fixtures import make_store_fixture  # noqa: F401

QUESTION = [{"role": "user", "content": "What is the capital of Peru?"}]
GREEDY = GenerateOptions(max_tokens=8, sampling=Sampling(temperature=0.0))


def spec(name: str, path: str = "-") -> ModelSpec:
    source = {"type": "path", "path": path}
    return ModelSpec.model_validate({"name": name, "source": source, "slots": 2, "n_ctx": 256})


class Files:
    """The model files as the pool resolves them: a settable sha256 per model."""

    def __init__(self, tmp_path: Path) -> None:
        self.path = tmp_path / "fake.gguf"
        self.path.write_bytes(b"fake")
        self.digests = {"tiny": "a" * 64, "small": "b" * 64}

    def __call__(self, spec: ModelSpec) -> tuple[Path, str]:
        return self.path, self.digests[spec.name]


@pytest.fixture
def served(
    tmp_path: Path, make_store: Callable[..., CacheStore]
) -> Iterator[tuple[InferenceService, ModelPool, Files, CacheStore]]:
    files = Files(tmp_path)
    pool = ModelPool(factory(eos_after=3), resolve=files, drainer=Drainer(grace=0.0))
    pool.configure({"tiny": spec("tiny"), "small": spec("small")})
    pool.preload(["tiny", "small"])
    store = make_store(64)
    service = InferenceService(pool, cache=ResponseCache(store, FakeEmbedder(64), threshold=0.95))
    yield service, pool, files, store
    pool.stop()


def ask(service: InferenceService, store: CacheStore) -> Generation:
    async def go() -> Generation:
        gen = await service.chat("auto", QUESTION, GREEDY)
        await gen.text()
        return gen

    gen = asyncio.run(go())
    store.flush(10)
    return gen


def served_from_cache(gen: Generation) -> bool:
    return gen.route is not None and gen.route["route"] == "cache"


@pytest.mark.parametrize("replaced", ["tiny", "small"])
def test_a_replaced_tier_model_file_misses_routed_answers(served: Any, replaced: str) -> None:
    service, pool, files, store = served
    assert not served_from_cache(ask(service, store))
    assert served_from_cache(ask(service, store))
    files.digests[replaced] = "c" * 64  # a new file under the same name: a reload re-reads it
    pool.configure({"tiny": spec("tiny"), "small": spec("small"), replaced: spec(replaced, "new")})
    assert pool.wait_loaded(10)
    assert [m.digest for m in pool.models() if m.name == replaced] == ["c" * 64]
    assert not served_from_cache(ask(service, store))
    assert served_from_cache(ask(service, store))


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        ([TierCard("tiny", 0.4, 1.0, digest="a")], [TierCard("tiny", 0.4, 1.0, digest="a")], True),
        (
            [TierCard("tiny", 0.4, 1.0, digest="a")],
            [TierCard("tiny", 0.4, 1.0, digest="b")],
            False,
        ),
        (
            [TierCard("tiny", 0.4, 1.0, digest="a")],
            [TierCard("small", 0.4, 1.0, digest="a")],
            False,
        ),
        ([TierCard("a,b", 0.4, 1.0)], [TierCard("a", 0.4, 1.0), TierCard("b", 0.4, 1.0)], False),
        ([TierCard("tiny", 0.4, 1.0, digest="a")], [TierCard("tiny", 0.9, 5.0, digest="a")], True),
    ],
    ids=["same-models", "new-file", "renamed", "no-separator-collision", "quality-and-cost"],
)
def test_routed_digest(a: list[TierCard], b: list[TierCard], same: bool) -> None:
    assert (routed_digest(a) == routed_digest(b)) is same
