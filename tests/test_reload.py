"""Hot reload against the fake engine (fast): the diff table, runner swaps that let requests
finish, and the watcher keeping the last good config."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path
from typing import Any

import pytest

from edgeinfer.config.load import load_catalogue
from edgeinfer.config.schema import Catalogue, ModelSpec
from edgeinfer.config.watch import ConfigWatcher
from edgeinfer.core.values import Finished
from edgeinfer.engine.fake import factory
from edgeinfer.errors import IntegrityError, ModelNotFound
from edgeinfer.pool.reload import ReloadPlan, plan_reload
from edgeinfer.pool.retire import Drainer
from edgeinfer.pool.scheduler import ModelPool
from edgeinfer.server.app import health_row
from tests.conftest import Sink, gen_request


def spec(name: str, **kw: Any) -> ModelSpec:
    return ModelSpec.model_validate(
        {"name": name, "source": {"type": "path", "path": "-"}, "slots": 2, "n_ctx": 256, **kw}
    )


A = spec("a")


@pytest.mark.parametrize(
    ("old", "new", "plan"),
    [
        ({"a": A}, {"a": A}, ReloadPlan(unchanged=("a",))),
        ({}, {"a": A}, ReloadPlan(added=("a",))),
        ({"a": A}, {}, ReloadPlan(removed=("a",))),
        ({"a": A}, {"a": spec("a", n_ctx=512)}, ReloadPlan(restarted=("a",))),
        ({"a": A}, {"a": spec("a", kv_type="q8_0")}, ReloadPlan(restarted=("a",))),
        (
            {"a": A},
            {"a": spec("a", source={"type": "path", "path": "x"})},
            ReloadPlan(restarted=("a",)),
        ),
        ({"a": A}, {"a": spec("a", description="new words")}, ReloadPlan(updated=("a",))),
        ({"a": A}, {"a": spec("a", keep_alive=60, pin=True)}, ReloadPlan(updated=("a",))),
        ({"a": A}, {"a": spec("a", quality=0.9, tags=["code"])}, ReloadPlan(updated=("a",))),
        (
            {"a": A, "b": spec("b")},
            {"b": spec("b", slots=4), "c": spec("c")},
            ReloadPlan(added=("c",), removed=("a",), restarted=("b",)),
        ),
    ],
)
def test_plan_reload(
    old: dict[str, ModelSpec], new: dict[str, ModelSpec], plan: ReloadPlan
) -> None:
    assert plan_reload(old, new) == plan


def submit(pool: ModelPool, name: str, max_tokens: int) -> Sink:
    _, runner = pool.get(name)
    req, sink = gen_request([11, 12, 13], max_tokens)
    runner.submit(req)
    return sink


@pytest.fixture
def pool(tmp_path: Path) -> Any:
    path = tmp_path / "fake.gguf"
    path.write_bytes(b"fake")
    made = factory(decode_delay=0.005)
    p = ModelPool(made, resolve=lambda s: (path, None), drainer=Drainer(grace=0.0))
    yield p, made
    p.stop()


def test_changed_model_swaps_runner_and_in_flight_requests_finish(pool: Any) -> None:
    p, made = pool
    p.configure({"a": A})
    p.preload(["a"])
    old_runner = p.get("a")[1]
    long = submit(p, "a", max_tokens=200)  # ~1 s of decoding on the old runner
    p.configure({"a": spec("a", n_ctx=512)})
    assert p.wait_loaded(10)
    new_runner = p.get("a")[1]
    assert new_runner is not old_runner and new_runner.params.n_ctx == 512
    _, done = long.wait()
    assert isinstance(done, Finished) and done.usage.completion_tokens == 200
    assert isinstance(submit(p, "a", max_tokens=4).wait()[1], Finished)
    assert p.drained(10)
    assert made.made[0].closed and not made.made[1].closed


def test_metadata_change_keeps_the_runner_and_its_kv(pool: Any) -> None:
    p, made = pool
    p.configure({"a": A})
    p.preload(["a"])
    runner = p.get("a")[1]
    plan = p.configure({"a": spec("a", description="renamed", keep_alive=30)})
    assert plan.updated == ("a",)
    served, again = p.get("a")
    assert again is runner and served.spec.keep_alive == 30 and len(made.made) == 1


def test_removed_model_drains_then_closes(pool: Any) -> None:
    p, made = pool
    p.configure({"a": A, "b": spec("b")})
    p.preload(["a", "b"])
    running = submit(p, "a", max_tokens=100)
    p.configure({"b": spec("b")})
    with pytest.raises(ModelNotFound):
        p.get("a")
    assert isinstance(running.wait()[1], Finished)
    assert p.drained(10) and made.made[0].closed
    assert [m.name for m in p.models()] == ["b"] and p.default == "b"


def test_a_runner_held_by_a_preparing_request_is_not_retired_under_it(pool: Any) -> None:
    """A request may spend seconds between the pool handing out a runner and submitting to it
    (history summary, context optimisation); a reload that removes the model meanwhile must
    let it through, then close the runner."""
    p, made = pool
    p.configure({"a": A, "b": spec("b")})
    p.preload(["a", "b"])
    _, runner = p.get("a")
    with runner.held():
        p.configure({"b": spec("b")})  # "a" is retired, with no drain grace at all
        time.sleep(0.5)  # ten drain polls
        assert not made.made[0].closed
        req, sink = gen_request([11, 12, 13], 4)
        runner.submit(req)
        assert isinstance(sink.wait()[1], Finished)
    assert p.drained(10) and made.made[0].closed


def test_added_model_becomes_loadable(pool: Any) -> None:
    p, _ = pool
    p.configure({"a": A})
    p.configure({"a": A, "new": spec("new")})
    served, runner = asyncio.run(p.acquire("new"))
    assert served.status() == "ready" and runner.loaded


# -- the watcher ---------------------------------------------------------------------------

BUNDLED = """
[models.a]
source = { type = "path", path = "/x.gguf" }
"""


def write(path: Path, text: str) -> None:
    path.write_text(text)


@pytest.fixture
def files(tmp_path: Path) -> list[Path]:
    bundled, user = tmp_path / "bundled" / "models.toml", tmp_path / "user" / "models.toml"
    bundled.parent.mkdir()
    user.parent.mkdir()
    write(bundled, BUNDLED)
    return [bundled, user]


def watcher_for(files: list[Path], applied: list[Catalogue]) -> ConfigWatcher:
    def load() -> Catalogue:
        return load_catalogue(files)

    return ConfigWatcher(files, load, applied.append, initial=load(), debounce_ms=50)


def test_invalid_file_keeps_the_last_good_config(files: list[Path]) -> None:
    applied: list[Catalogue] = []
    watcher = watcher_for(files, applied)
    write(files[1], "[models.b]\nsource = { type = 'path', path = '/y.gguf' }\n")
    assert watcher.reload().ok and set(watcher.current.models) == {"a", "b"}
    good = watcher.current
    write(files[1], "[models.b]\nn_ctxx = 5\n")
    status = watcher.reload("test")
    assert not status.ok and status.path == str(files[1])
    assert "n_ctxx: unknown key (did you mean 'n_ctx'?)" in (status.error or "")
    assert watcher.current is good and len(applied) == 1 and status.generation == 2
    write(files[1], "")
    assert watcher.reload().ok and watcher.status.generation == 3
    assert set(watcher.current.models) == {"a"}


def test_a_config_that_fails_to_apply_is_reported_and_the_watch_goes_on(
    files: list[Path],
) -> None:
    failures = [OSError("disk full")]

    def apply(_catalogue: Catalogue) -> None:
        if failures:
            raise failures.pop()

    first = load_catalogue(files)
    watcher = ConfigWatcher(files, lambda: load_catalogue(files), apply, initial=first)
    status = watcher.reload("test")
    assert not status.ok and "could not be applied: disk full" in (status.error or "")
    assert watcher.current is first and status.generation == 1
    assert watcher.reload("test").ok and watcher.status.generation == 2


def test_file_changes_trigger_a_reload(files: list[Path]) -> None:
    applied: list[Catalogue] = []

    async def scenario() -> None:
        loop, seen = asyncio.get_running_loop(), asyncio.Event()

        def apply(catalogue: Catalogue) -> None:  # called on a worker thread
            applied.append(catalogue)
            loop.call_soon_threadsafe(seen.set)

        watcher = ConfigWatcher(
            files, lambda: load_catalogue(files), apply, initial=load_catalogue(files)
        )
        async with watcher.running():
            # watchfiles starts watching in the background: edit until a reload is seen
            deadline = time.monotonic() + 20
            while not seen.is_set() and time.monotonic() < deadline:
                write(files[1], "[models.c]\nsource = { type = 'path', path = '/c.gguf' }\n")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(seen.wait(), 1.0)
        assert watcher.status.trigger == "file change"

    asyncio.run(scenario())
    assert applied and set(applied[-1].models) == {"a", "c"}


def test_a_changed_config_that_fails_to_load_keeps_the_running_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Found by an audit: a typo in a sha256 pin, or KV settings llama.cpp refuses, stopped the
    working runner on reload; every request then got 503 while /health said the config was
    fine."""
    good = tmp_path / "fake.gguf"
    good.write_bytes(b"fake")

    def resolve(s: ModelSpec) -> tuple[Path, str | None]:
        if s.n_ctx == 512:
            raise IntegrityError(f"{good}: sha256 does not match the pin")
        return good, None

    p = ModelPool(factory(), resolve=resolve, drainer=Drainer(grace=0.0))
    try:
        p.configure({"a": A})
        p.preload(["a"])
        runner = p.get("a")[1]
        with caplog.at_level("ERROR", "edgeinfer.pool"):
            p.configure({"a": spec("a", n_ctx=512)})
            assert p.wait_loaded(10)
        assert "its changed settings failed to load" in caplog.text
        assert p.get("a")[1] is runner and not runner.params.n_ctx == 512
        assert isinstance(submit(p, "a", max_tokens=3).wait()[1], Finished)
        view = next(m for m in p.models() if m.name == "a")
        row = health_row(view)  # /health says why the change did not take
        assert row["status"] == "ready" and "sha256 does not match the pin" in row["not_applied"]
        p.configure({"a": A})  # back to the settings it runs: nothing to apply
        p.configure({"a": spec("a", n_ctx=300)})  # a change that loads clears it
        assert p.wait_loaded(10) and p.get("a")[1].params.n_ctx == 300
        assert next(m for m in p.models() if m.name == "a").not_applied is None
    finally:
        p.stop()
