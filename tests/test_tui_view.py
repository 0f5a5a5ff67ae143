"""The TUI's pure parts: badges, sparklines, stats rows, the savings ledger, key labels, the
conversation store and how streamed chunks are folded (no Textual app involved)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from edgeinfer.tui.chat import merge_chunk
from edgeinfer.tui.fake import snapshot
from edgeinfer.tui.help import key_label
from edgeinfer.tui.store import ConversationStore
from edgeinfer.tui.view import StatsModel, badge, ledger, router_rows, sparkline, tokens_per_s

USAGE = {"completion_tokens": 21, "prompt_tokens_details": {"cached_tokens": 12}}
TIMINGS = {"ttft_ms": 100.0, "total_ms": 1100.0}


@pytest.mark.parametrize(
    ("final", "want"),
    [
        ({"model": "tiny"}, "tiny · generated"),
        (
            {"usage": USAGE, "edgeinfer": {"model": "small", "timings": TIMINGS}},
            "small · generated · 12 cached tok · 21.0 tok/s",
        ),
        (
            {"edgeinfer": {"model": "tiny", "cache": {"layer": "exact", "similarity": 1.0}}},
            "tiny · cache exact",
        ),
        (
            {"edgeinfer": {"model": "t", "cache": {"layer": "semantic", "similarity": 0.9712}}},
            "t · cache semantic 0.97",
        ),
        (  # no usage details: the edgeinfer report's count
            {"edgeinfer": {"model": "t", "cached_tokens": 5}},
            "t · generated · 5 cached tok",
        ),
        (  # a cascade that escalated
            {
                "edgeinfer": {
                    "model": "large",
                    "route": {
                        "tiers": [
                            {"model": "small", "confidence": {"score": 0.412}, "kept": False},
                            {"model": "large"},
                        ],
                        "escalated": True,
                        "escalation_reason": "low_confidence",
                    },
                }
            },
            "large · generated · small→large · conf 0.41 · escalated: low_confidence",
        ),
        (  # one tier, no cascade: nothing to say about routing
            {"edgeinfer": {"model": "tiny", "route": {"tiers": [{"model": "tiny"}]}}},
            "tiny · generated",
        ),
        (
            {"edgeinfer": {"model": "tiny", "prompt": {"tokens_removed": 40}}},
            "tiny · generated · prompt −40 tok",
        ),
    ],
)
def test_badge(final: dict[str, Any], want: str) -> None:
    assert badge(final) == want


@pytest.mark.parametrize(
    ("usage", "timings", "want"),
    [
        ({"completion_tokens": 11}, {"ttft_ms": 100.0, "total_ms": 600.0}, 22.0),
        ({"completion_tokens": 1}, {"ttft_ms": 100.0, "total_ms": 100.0}, 10.0),
        ({"completion_tokens": 7}, {"ttft_ms": 0.0, "total_ms": 0.0}, None),  # cache hit
        ({}, TIMINGS, None),
    ],
)
def test_tokens_per_s(usage: dict[str, Any], timings: dict[str, Any], want: float | None) -> None:
    assert tokens_per_s(usage, timings) == want


@pytest.mark.parametrize(
    ("values", "width", "want"),
    [
        ([], 5, "—"),
        ([0, 0], 5, "▁▁"),
        ([1, 2, 4, 8], 8, "▁▂▄█"),
        ([8, 1, 2, 4, 8], 3, "▂▄█"),
    ],
)
def test_sparkline(values: list[float], width: int, want: str) -> None:
    assert sparkline(values, width) == want


def test_rates_come_from_counter_deltas_and_survive_a_restart() -> None:
    model = StatsModel()
    first = model.update({"time": 10.0, "models": {"m": {"generated_tokens": 100}}})
    assert first.models[0].rate is None  # one snapshot says nothing about speed
    second = model.update({"time": 12.0, "models": {"m": {"generated_tokens": 160}}})
    assert second.models[0].rate == 30.0
    # The daemon restarted: its counter starts again from zero.
    third = model.update({"time": 13.0, "models": {"m": {"generated_tokens": 8}}})
    assert third.models[0].rate == 8.0
    assert third.models[0].trend == sparkline([30.0, 8.0], 12)


def test_model_rows_and_layers_from_a_snapshot() -> None:
    view = StatsModel().update(snapshot(3, requests=2))
    tiny = view.models[0]
    assert (tiny.name, tiny.slots, tiny.queue, tiny.requests) == ("tiny", "1/4", 0, 5)
    assert tiny.ttft_ms == pytest.approx(42.0) and tiny.memory == "128.0MiB"
    layers = {row.layer: row for row in view.layers}
    assert (layers["exact"].hits, layers["exact"].misses) == ("3", "9")
    assert layers["exact"].rate == 0.25
    assert layers["kv prefix"].rate == pytest.approx(70 / 120)


def test_a_model_whose_runner_crashed_says_how_often_it_restarted() -> None:
    snap = {"models": {"a": {"status": "ready", "restarts": 1}, "b": {"status": "ready"}}}
    rows = {row.name: row.status for row in StatsModel().update(snap).models}
    assert rows == {"a": "ready (1 restart)", "b": "ready"}
    again = {"models": {"a": {"status": "error", "restarts": 2}}}
    assert StatsModel().update(again).models[0].status == "error (2 restarts)"


def test_estimated_memory_is_marked() -> None:
    snap = {"models": {"m": {"memory_estimated_bytes": 3 << 20}}}
    assert StatsModel().update(snap).models[0].memory == "~3.0MiB"
    assert StatsModel().update({"models": {"m": {}}}).models[0].memory == "—"


def test_ledger_keeps_measured_and_estimated_apart() -> None:
    measured, estimated = ledger(snapshot(0, requests=2))
    m = dict(measured)
    assert m["tokens not recomputed (KV)"] == "140"  # 70 cached tokens per tiny request
    assert m["requests served from cache"] == "5"
    assert m["tokens skipped by cache"] == "820"
    assert m["generation time saved"] == "12.5s"
    assert m["tokens moved to small tiers"] == "5.4k"
    e = dict(estimated)
    assert e == {
        "API tokens not sent": "820",
        "API cost saved": "$0.0019",
        "compute saved by routing": "41.5s",
    }
    assert not set(m) & set(e)


def test_ledger_shows_missing_layers_as_dashes_not_zeros() -> None:
    measured, estimated = ledger({"models": {}, "cache": None})
    assert dict(measured)["tokens removed (prompt)"] == "—"
    assert dict(measured)["tokens moved to small tiers"] == "—"
    assert dict(estimated)["compute saved by routing"] == "—"
    assert dict(ledger({"prompt": {"tokens_removed": 1500}})[0])["tokens removed (prompt)"] == (
        "1.5k"
    )


def test_router_rows_flatten_what_comes() -> None:
    rows = router_rows({"requests": 4, "by_tier": {"a": 3, "b": 1}, "tiers": ["a", "b"]})
    assert rows == [("requests", "4"), ("by_tier a", "3"), ("by_tier b", "1")]
    assert router_rows(None) == []


@pytest.mark.parametrize(
    ("key", "want"),
    [("f1", "F1"), ("ctrl+r", "Ctrl+R"), ("escape,f1,q", "Esc / F1 / Q"), ("pageup", "PgUp")],
)
def test_key_label(key: str, want: str) -> None:
    assert key_label(key) == want


def test_merge_chunk_keeps_the_report_of_the_last_chunk() -> None:
    final: dict[str, Any] = {}
    assert merge_chunk(final, {"model": "m", "choices": [{"delta": {"role": "x"}}]}) == ""
    assert merge_chunk(final, {"choices": [{"delta": {"content": "Hi"}}]}) == "Hi"
    last = {"choices": [], "usage": {"completion_tokens": 1}, "edgeinfer": {"model": "m"}}
    assert merge_chunk(final, last) == ""
    assert final == {"model": "m", "usage": {"completion_tokens": 1}, "edgeinfer": {"model": "m"}}


def test_store_round_trip_order_and_migrations(tmp_path: Path) -> None:
    ticks = iter(range(100))
    store = ConversationStore(tmp_path / "c.sqlite3", clock=lambda: float(next(ticks)))
    a = store.create("first", "auto")
    b = store.create("second", "tiny")
    store.add(a.id, "user", "q")  # a is now the most recent
    answer = store.add(a.id, "assistant", "**a**", {"model": "tiny"})
    assert [c.title for c in store.conversations()] == ["first", "second"]
    store.set_model(a.id, "large")
    store.close()

    again = ConversationStore(tmp_path / "c.sqlite3")
    assert again.get(a.id) is not None and again.get(a.id).model == "large"  # type: ignore[union-attr]
    msgs = again.messages(a.id)
    assert [(m.role, m.content, m.meta) for m in msgs] == [
        ("user", "q", None),
        ("assistant", "**a**", {"model": "tiny"}),
    ]
    again.remove_message(answer.id)
    assert [m.role for m in again.messages(a.id)] == ["user"]
    again.delete(a.id)
    assert again.messages(a.id) == [] and [c.id for c in again.conversations()] == [b.id]
    version = again._db.execute("PRAGMA user_version").fetchone()[0]
    assert version == 1
    again.close()
