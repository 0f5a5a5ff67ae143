"""Snapshot tests of the TUI's screens at 80x24 (the smallest size it supports), against the
fake daemon's fixed data. Update after an intended change with
``pytest tests/test_tui_snapshots.py --snapshot-update`` and look at the SVGs in
``tests/__snapshots__/test_tui_snapshots/``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from textual.pilot import Pilot
from textual.widgets import Input

from edgeinfer.tui.app import EdgeinferApp
from edgeinfer.tui.chat import MessageView
from edgeinfer.tui.fake import FakeClient, snapshot
from edgeinfer.tui.help import HelpScreen
from edgeinfer.tui.stats import StatsPane
from edgeinfer.tui.store import ConversationStore
from tests.test_tui_pilot import until

SIZE = (80, 24)
Compare = Callable[..., bool]


def fixed_app(tmp_path: Path, **kw: object) -> EdgeinferApp:
    fake = FakeClient(
        snapshots=[snapshot(i) for i in range(12)],
        report={"route": {"tiers": [{"model": "tiny", "confidence": {"score": 0.87}}]}},
    )
    store = ConversationStore(tmp_path / "chat.sqlite3", clock=lambda: 0.0)
    return EdgeinferApp(fake, store=store, retry=(0.01, 0.05), **kw)  # type: ignore[arg-type]


async def feed_done(pilot: Pilot[None]) -> None:
    """All 12 fixed snapshots shown: the sparklines are full and stop changing.

    The input's cursor stops blinking too: a blinking cursor is on in some frames and off in
    others, so a loaded machine could catch either (seen in CI).
    """
    for field in pilot.app.query(Input):
        field.cursor_blink = False
    pane = pilot.app.query_one(StatsPane)
    await until(pilot, lambda: pane.events == 12, "all 12 snapshots")


async def answered(pilot: Pilot[None]) -> None:
    await feed_done(pilot)
    await pilot.press(*"What is the capital of France?", "enter")
    views = pilot.app.query(MessageView)
    await until(pilot, lambda: len(views) == 2 and bool(views.last().meta), "answer")
    await pilot.pause()


def test_chat_screen(snap_compare: Compare, tmp_path: Path) -> None:
    assert snap_compare(fixed_app(tmp_path), terminal_size=SIZE, run_before=answered)


def test_stats_screen(snap_compare: Compare, tmp_path: Path) -> None:
    async def stats(pilot: Pilot[None]) -> None:
        await feed_done(pilot)
        await pilot.press("f3")
        await pilot.pause()

    assert snap_compare(fixed_app(tmp_path), terminal_size=SIZE, run_before=stats)


def test_stats_screen_light(snap_compare: Compare, tmp_path: Path) -> None:
    async def stats(pilot: Pilot[None]) -> None:
        await feed_done(pilot)
        await pilot.pause()

    app = EdgeinferApp(
        FakeClient(snapshots=[snapshot(i) for i in range(12)]), mode="top", light=True
    )
    assert snap_compare(app, terminal_size=SIZE, run_before=stats)


def test_help_screen(snap_compare: Compare, tmp_path: Path) -> None:
    async def help_(pilot: Pilot[None]) -> None:
        await feed_done(pilot)
        await pilot.press("f1")
        await until(pilot, lambda: isinstance(pilot.app.screen, HelpScreen), "help")
        await pilot.pause()

    assert snap_compare(fixed_app(tmp_path), terminal_size=SIZE, run_before=help_)


def test_readme_screenshots_are_the_snapshot_baselines() -> None:
    """docs/ holds copies of the baselines above (the README shows them); after
    ``--snapshot-update`` copy them again so the README never shows a stale screen."""
    repo = Path(__file__).resolve().parents[1]
    baselines = repo / "tests" / "__snapshots__" / "test_tui_snapshots"
    for doc, base in (
        ("tui-chat.svg", "test_chat_screen.svg"),
        ("tui-stats.svg", "test_stats_screen.svg"),
    ):
        assert (repo / "docs" / doc).read_bytes() == (baselines / base).read_bytes(), doc
