"""Savings counters (measured vs estimated) and the offline tiktoken recipe."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

import pytest

from edgeinfer.cache.entry import CacheHit, GuardRejection
from edgeinfer.cache.savings import CostEstimator, Price, Savings, load_encoding, parse_prices
from edgeinfer.errors import ConfigError
from edgeinfer.models.assets import ensure_asset
from tests.conftest import MODELS_DIR


def _hit(layer: str, rejections: int = 0) -> CacheHit:
    rejected = tuple(GuardRejection("q", 0.9, "number: 1 vs 2") for _ in range(rejections))
    return CacheHit(layer, {}, 1.0, 100, 40, 2.0, 1, "q", rejected)  # type: ignore[arg-type]


def test_counters_per_layer_keep_measured_and_estimated_apart() -> None:
    savings = Savings()
    estimator = CostEstimator(
        Price(input_per_1m=1.0, output_per_1m=4.0), count=lambda t: len(t.split())
    )
    estimate = estimator.estimate([{"role": "user", "content": "one two three"}], "four five")
    savings.hit(_hit("exact"), estimate)
    savings.hit(_hit("semantic", rejections=2))
    savings.miss("semantic", guard_rejections=1)
    savings.miss("exact")
    snap = savings.snapshot()
    assert snap["exact"]["hits"] == 1 and snap["exact"]["misses"] == 1
    assert snap["exact"]["hit_rate"] == 0.5
    assert snap["exact"]["measured"] == {
        "prompt_tokens_saved": 100, "completion_tokens_saved": 40, "time_saved_s": 2.0,
    }  # fmt: skip
    # 3 priming + (3 framing + 1 "user" + 3 words) = 10 prompt tokens; 2 completion tokens
    assert snap["exact"]["estimated"] == {
        "prompt_tokens": 10, "completion_tokens": 2, "api_cost_saved_usd": 1.8e-05,
    }  # fmt: skip
    assert snap["semantic"]["guard_rejections"] == 3
    assert snap["semantic"]["estimated"]["api_cost_saved_usd"] == 0.0


def test_counters_are_thread_safe() -> None:
    savings = Savings()

    def record() -> None:
        for _ in range(500):
            savings.hit(_hit("semantic"))

    threads = [threading.Thread(target=record) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert savings.raw()["semantic"]["hits"] == 2000


def test_parse_prices() -> None:
    prices = parse_prices({"gpt-4o-mini": {"input_per_1m": 0.15, "output_per_1m": 0.6,
                                           "encoding": "o200k_base"}})  # fmt: skip
    assert prices["gpt-4o-mini"] == Price(0.15, 0.6, "o200k_base")
    with pytest.raises(ConfigError, match="prices.x"):
        parse_prices({"x": {"input_per_1m": 1.0}})
    with pytest.raises(ConfigError, match="encoding"):
        parse_prices({"x": {"input_per_1m": 1.0, "output_per_1m": 1.0, "encoding": "p50k_base"}})


@pytest.mark.real
def test_tiktoken_works_offline_from_the_quicktok_vocabulary(tmp_path: Path) -> None:
    """The converted file is tiktoken's own, and gives the reference token ids
    (docs/architecture.md, "Models")."""
    vocab = ensure_asset(MODELS_DIR, "cl100k-vocab")
    cache = tmp_path / "tiktoken"
    encoding = load_encoding("cl100k_base", vocab, cache)
    assert encoding.encode("Hello world! How do I reset my password?") == [
        9906, 1917, 0, 2650, 656, 358, 7738, 856, 3636, 30,
    ]  # fmt: skip
    (written,) = cache.iterdir()
    digest = hashlib.sha256(written.read_bytes()).hexdigest()
    assert digest.startswith("223921b7")
    assert "TIKTOKEN_CACHE_DIR" not in os.environ or os.environ["TIKTOKEN_CACHE_DIR"] != str(cache)
    assert load_encoding("cl100k_base", vocab, cache) is not None  # second time: load only
    o200k = load_encoding("o200k_base", ensure_asset(MODELS_DIR, "o200k-vocab"), cache)
    assert o200k.encode("Hello world!") == [13225, 2375, 0]
