"""The memory budget and the on-demand pool, against the fake engine (fast).

Eviction order, pinning, keep-alive with an injected clock, one load at a time, refusals with
their reason, and the pure decisions behind them (estimate, eviction plan, sizes, GGUF header).
"""

from __future__ import annotations

import asyncio
import struct
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from edgeinfer.config.schema import MemorySettings, ModelSpec
from edgeinfer.config.units import parse_bytes
from edgeinfer.engine.base import EngineParams
from edgeinfer.engine.fake import FakeEngine, factory
from edgeinfer.engine.gguf import read_metadata
from edgeinfer.errors import InsufficientMemory, ModelLoading, ModelUnavailable
from edgeinfer.pool.memory import (
    MemoryEstimate,
    Resident,
    estimate,
    keep_alive_expired,
    plan_evictions,
    shape_from_metadata,
)
from edgeinfer.pool.retire import Drainer
from edgeinfer.pool.scheduler import Budget, ModelPool

MiB = 1 << 20


def spec(name: str, **kw: Any) -> ModelSpec:
    return ModelSpec.model_validate(
        {"name": name, "source": {"type": "path", "path": "-"}, "slots": 1, "n_ctx": 64, **kw}
    )


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def sized(sizes: dict[str, int]) -> Any:
    """An estimator giving each model a fixed RAM size in MiB."""

    def estimator(s: ModelSpec, path: Path) -> MemoryEstimate:
        ram = sizes[s.name] * MiB
        return MemoryEstimate(ram, 0, 0, 0, ram, 0)

    return estimator


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    path = tmp_path / "fake.gguf"
    path.write_bytes(b"fake")
    return path


def make_pool(model_file: Path, sizes: dict[str, int], budget_mib: int | None, **kw: Any) -> Any:
    made = kw.pop("factory", None) or factory()
    pool = ModelPool(
        made,
        resolve=lambda s: (model_file, "0" * 64),
        estimator=sized(sizes),
        budget=Budget(ram=budget_mib * MiB if budget_mib else None),
        rss=lambda: 0,
        drainer=Drainer(grace=0.0),
        **kw,
    )
    return pool, made


def status(pool: ModelPool) -> dict[str, str]:
    return {m.name: m.status() for m in pool.models()}


# -- pure decisions ------------------------------------------------------------------------


def r(name: str, ram: int, *, idle: bool = True, pinned: bool = False, used: float = 0) -> Resident:
    return Resident(name, ram, 0, idle, pinned, used)


@pytest.mark.parametrize(
    ("resident", "need", "budget", "expected"),
    [
        ([], 100, 100, []),  # fits in an empty pool
        ([r("a", 50)], 50, 100, []),  # fits beside a
        ([r("a", 50, used=2), r("b", 50, used=1)], 50, 100, ["b"]),  # least recently used first
        ([r("a", 50, used=1), r("b", 50, used=2)], 100, 100, ["a", "b"]),  # both must go
        ([r("a", 50, pinned=True), r("b", 50)], 50, 100, ["b"]),  # pinned stays
        ([r("a", 50, pinned=True), r("b", 50)], 60, 50, None),  # pinned makes it impossible
        ([r("a", 50, idle=False), r("b", 50)], 100, 100, None),  # busy is never unloaded
        ([r("a", 10)], 200, 100, None),  # bigger than the whole budget
        ([r("a", 50)], 10**9, None, []),  # no budget: everything fits
    ],
)
def test_plan_evictions(
    resident: list[Resident], need: int, budget: int | None, expected: list[str] | None
) -> None:
    assert plan_evictions(resident, need, 0, ram_budget=budget, vram_budget=None) == expected


def test_plan_evictions_checks_vram_only_for_offloaded_models() -> None:
    gpu = [Resident("a", 10, 80, True, False, 0)]
    assert plan_evictions(gpu, 10, 0, ram_budget=None, vram_budget=100) == []
    assert plan_evictions(gpu, 10, 50, ram_budget=None, vram_budget=100) == ["a"]


@pytest.mark.parametrize(
    ("keep_alive", "idle_since", "now", "expired"),
    [(-1, 0, 10**9, False), (0, 5, 5, True), (10, 0, 9.9, False), (10, 0, 10, True)],
)
def test_keep_alive_expired(
    keep_alive: float, idle_since: float, now: float, expired: bool
) -> None:
    assert keep_alive_expired(keep_alive, idle_since, now) is expired


@pytest.mark.parametrize(
    ("text", "size"),
    [("8GiB", 8 << 30), ("512 MB", 512_000_000), ("1.5g", 1_500_000_000), ("2KiB", 2048), (7, 7)],
)
def test_parse_bytes(text: object, size: int) -> None:
    assert parse_bytes(text) == size
    assert MemorySettings.model_validate({"budget": text}).budget == size


@pytest.mark.parametrize("bad", ["lots", "-1", 0, True, "8 XB"])
def test_parse_bytes_refuses(bad: object) -> None:
    with pytest.raises(ValueError, match="bytes|positive"):
        parse_bytes(bad)


def test_estimate_counts_weights_kv_compute_and_prompt_cache() -> None:
    meta = {
        "general.architecture": "llama",
        "llama.block_count": 30,
        "llama.embedding_length": 576,
        "llama.attention.head_count": 9,
        "llama.attention.head_count_kv": 3,
        "tokenizer.ggml.tokens": 49152,
    }
    shape = shape_from_metadata(meta, 100 * MiB)
    est = estimate(shape, spec("m", n_ctx=4096, slots=4, prompt_cache_ram_mb=256))
    assert est.kv_cache == 30 * 4096 * 4 * 3 * (64 + 64) * 2  # 360 MiB of f16 K and V
    assert est.weights == 100 * MiB and est.prompt_cache == 256 * MiB
    assert est.ram == est.weights + est.kv_cache + est.compute + est.prompt_cache
    assert est.vram == 0
    q8 = estimate(shape, spec("m", n_ctx=4096, slots=4, kv_type="q8_0"))
    assert q8.kv_cache < est.kv_cache
    offloaded = estimate(shape, spec("m", n_ctx=4096, slots=4, gpu_layers=-1))
    assert offloaded.vram == offloaded.weights + offloaded.kv_cache + offloaded.compute
    assert offloaded.ram == offloaded.prompt_cache


def test_gguf_header_of_the_real_tiny_model(tiny_path: Path) -> None:
    meta = read_metadata(tiny_path)
    assert meta["general.architecture"] == "llama"
    shape = shape_from_metadata(meta, tiny_path.stat().st_size)
    assert (shape.n_layer, shape.n_head_kv, shape.k_dim, shape.n_vocab) == (30, 3, 64, 49152)


def test_gguf_reader_refuses_other_files(model_file: Path) -> None:
    with pytest.raises(ModelUnavailable, match="not a GGUF file"):
        read_metadata(model_file)


# -- the pool ------------------------------------------------------------------------------


def test_on_demand_load_then_serve(model_file: Path) -> None:
    pool, _ = make_pool(model_file, {"a": 10}, 100)
    pool.configure({"a": spec("a")})
    assert status(pool) == {"a": "unloaded"}
    with pytest.raises(ModelLoading):
        pool.get("a")  # starts the load, asks to retry
    assert pool.wait_loaded(10)
    served, runner = pool.get("a")
    assert served.status() == "ready" and runner.loaded
    pool.stop()


def test_acquire_waits_for_the_load(model_file: Path) -> None:
    pool, _ = make_pool(model_file, {"a": 10}, 100)
    pool.configure({"a": spec("a")})
    served, runner = asyncio.run(pool.acquire("a"))
    assert served.status() == "ready" and runner.loaded
    pool.stop()


def test_lru_idle_model_is_unloaded_to_make_room(model_file: Path) -> None:
    clock = Clock()
    pool, made = make_pool(model_file, {"a": 40, "b": 40, "c": 40}, 100, clock=clock)
    pool.configure({n: spec(n) for n in "abc"})
    pool.load("a")
    clock.now += 1
    pool.load("b")
    clock.now += 1
    pool.get("a")  # a is now more recent than b
    pool.load("c")
    assert status(pool) == {"a": "ready", "b": "unloaded", "c": "ready"}
    assert pool.drained(10)
    assert [e.closed for e in made.made] == [False, True, False]  # b's engine was freed
    assert pool.memory()["used_bytes"] == 80 * MiB
    pool.stop()


def test_pinned_models_are_never_unloaded(model_file: Path) -> None:
    pool, _ = make_pool(model_file, {"a": 60, "b": 60}, 100)
    pool.configure({"a": spec("a", pin=True), "b": spec("b")})
    pool.load("a")
    with pytest.raises(InsufficientMemory) as info:
        pool.load("b")
    assert "needs about 60 MiB" in info.value.message and "a 60 MiB (pinned)" in info.value.message
    assert status(pool) == {"a": "ready", "b": "unloaded"}
    with pytest.raises(InsufficientMemory):
        pool.get("b")  # the refusal is told to the next request, not a silent retry loop
    pool.stop()


def test_a_model_bigger_than_the_budget_is_refused_and_the_daemon_serves_on(
    model_file: Path,
) -> None:
    pool, _ = make_pool(model_file, {"a": 10, "huge": 500}, 100)
    pool.configure({"a": spec("a"), "huge": spec("huge")})
    pool.load("a")
    with pytest.raises(InsufficientMemory):
        asyncio.run(pool.acquire("huge"))
    assert pool.get("a")[1].loaded
    pool.stop()


def test_keep_alive_unloads_idle_models_with_an_injected_clock(model_file: Path) -> None:
    clock = Clock()
    pool, _ = make_pool(model_file, {"a": 1, "b": 1, "p": 1}, None, clock=clock)
    pool.configure(
        {"a": spec("a", keep_alive=10), "b": spec("b"), "p": spec("p", keep_alive=0, pin=True)}
    )
    for name in "abp":
        pool.load(name)
    clock.now += 9
    assert pool.expire_idle() == []
    clock.now += 1
    assert pool.expire_idle() == ["a"]  # b keeps forever (-1), p is pinned
    assert status(pool) == {"a": "unloaded", "b": "ready", "p": "ready"}
    pool.stop()


def test_one_load_at_a_time(model_file: Path) -> None:
    active, peak, lock = [0], [0], threading.Lock()
    release = threading.Event()

    def slow_factory(path: Path, params: EngineParams) -> FakeEngine:
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        release.wait(10)
        time.sleep(0.05)
        with lock:
            active[0] -= 1
        return FakeEngine(params=params)

    pool, _ = make_pool(model_file, {n: 1 for n in "abcd"}, None, factory=slow_factory)
    pool.configure({n: spec(n) for n in "abcd"})
    for name in "abcd":
        with pytest.raises(ModelLoading):
            pool.get(name)
    assert {m.status() for m in pool.models()} == {"loading"}
    release.set()
    assert pool.wait_loaded(20)
    assert peak[0] == 1
    assert set(status(pool).values()) == {"ready"}
    pool.stop()


def test_a_model_that_fails_to_load_is_reported_and_others_serve(model_file: Path) -> None:
    missing = model_file.parent / "missing.gguf"

    def resolve(s: ModelSpec) -> tuple[Path, str | None]:
        return (missing if s.name == "bad" else model_file), None

    pool = ModelPool(factory(), resolve=resolve, estimator=sized({"ok": 1, "bad": 1}))
    pool.configure({"ok": spec("ok"), "bad": spec("bad")})
    assert pool.preload(["ok", "bad"]) == ["ok"]
    bad = next(m for m in pool.models() if m.name == "bad")
    assert bad.status() == "error" and "missing.gguf" in (bad.reason() or "")
    with pytest.raises(ModelUnavailable, match="missing.gguf"):
        pool.get("bad")
    assert pool.get("ok")[1].loaded
    pool.stop()


def test_preload_loads_what_fits_and_leaves_the_rest_on_demand(model_file: Path) -> None:
    pool, _ = make_pool(model_file, {"a": 60, "b": 60, "c": 30}, 100)
    pool.configure({n: spec(n) for n in "abc"})
    assert pool.preload(["a", "b", "c"]) == ["a", "c"]
    assert status(pool) == {"a": "ready", "b": "unloaded", "c": "ready"}
    snap = pool.snapshot()
    assert snap["a"]["memory_estimated_bytes"] == 60 * MiB
    assert snap["b"]["memory"]["estimated"] is None
    pool.stop()


def test_gguf_reader_survives_a_corrupt_length(model_file: Path) -> None:
    model_file.write_bytes(b"GGUF" + struct.pack("<IQQQ", 3, 0, 1, 1 << 62) + b"x" * 64)
    with pytest.raises(ModelUnavailable, match="implausible string length"):
        read_metadata(model_file)


def test_requests_awaiting_a_load_park_no_threads_and_get_503_after_the_wait(
    model_file: Path,
) -> None:
    gate = threading.Event()
    made = factory()

    def slow(path: Path, params: EngineParams) -> Any:
        gate.wait(10)
        return made(path, params)

    pool, _ = make_pool(model_file, {"a": 10}, 100, factory=slow, load_wait_s=0.5)
    pool.configure({"a": spec("a")})

    async def six_waiting() -> tuple[int, list[Any]]:
        before = threading.active_count()
        tasks = [asyncio.create_task(pool.acquire("a")) for _ in range(6)]
        await asyncio.sleep(0.2)
        grew = threading.active_count() - before
        return grew, await asyncio.gather(*tasks, return_exceptions=True)

    grew, results = asyncio.run(six_waiting())
    assert grew <= 2, grew  # the load thread and the runner it starts, none per request
    assert all(isinstance(r, ModelLoading) for r in results), results

    async def released_while_waiting() -> Any:
        task = asyncio.create_task(pool.acquire("a"))
        await asyncio.sleep(0.1)
        gate.set()  # the load ends during the wait: the waiter is woken, not timed out
        return await task

    pool.load_wait_s = 30.0
    served, runner = asyncio.run(released_while_waiting())
    assert served.status() == "ready" and runner.loaded
    pool.stop()


def test_a_reload_that_does_not_fit_is_tried_once_and_the_running_model_stays(
    model_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Found by an audit: n_ctx = 1048576 with 64 slots on a running daemon restarted the
    refused load at the end of each try, every ~17 ms (93% CPU, 265 KB of log in 20 s) until
    the file was fixed."""
    tries = []

    def estimator(s: ModelSpec, path: Path) -> MemoryEstimate:
        tries.append(s.n_ctx)
        ram = (10 if s.n_ctx == 64 else 10_000) * MiB
        return MemoryEstimate(ram, 0, 0, 0, ram, 0)

    made = factory()
    pool = ModelPool(
        made,
        resolve=lambda s: (model_file, "0" * 64),
        estimator=estimator,
        budget=Budget(ram=100 * MiB),
        rss=lambda: 0,
        drainer=Drainer(grace=0.0),
    )
    try:
        pool.configure({"a": spec("a")})
        pool.preload(["a"])
        runner = pool.get("a")[1]
        with caplog.at_level("ERROR", "edgeinfer.pool"):
            pool.configure({"a": spec("a", n_ctx=128)})
            pool.wait_loaded(5)
            time.sleep(0.5)  # a loop would have tried dozens of times by now
        assert tries.count(128) == 1
        assert "its changed settings do not fit" in caplog.text
        assert pool.get("a")[1] is runner and status(pool) == {"a": "ready"}
    finally:
        pool.stop()
