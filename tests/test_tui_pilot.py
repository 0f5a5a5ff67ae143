"""The TUI driven by Textual's Pilot against the fake daemon (``edgeinfer.tui.fake``).

Each test presses keys as a user would and checks what the screen, the fake daemon and the
conversation database saw.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from textual.pilot import Pilot
from textual.widgets import Input, Markdown, Select, Static, TabbedContent

from edgeinfer.tui.app import EdgeinferApp
from edgeinfer.tui.chat import ChatPane, MessageView
from edgeinfer.tui.fake import ANSWER, FakeClient, snapshot
from edgeinfer.tui.help import HelpScreen
from edgeinfer.tui.stats import StatsPane
from edgeinfer.tui.store import ConversationStore

FULL = "".join(ANSWER)


async def until(pilot: Pilot[None], cond: Callable[[], bool], what: str) -> None:
    """Let the app run until ``cond()`` holds (a generous deadline, then fail saying what)."""
    deadline = time.monotonic() + 20
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for: {what}"
        await pilot.pause(0.02)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ConversationStore]:
    s = ConversationStore(tmp_path / "chat.sqlite3")
    yield s
    s.close()


def make_app(fake: FakeClient, store: ConversationStore, **kw: object) -> EdgeinferApp:
    return EdgeinferApp(fake, store=store, retry=(0.01, 0.05), **kw)  # type: ignore[arg-type]


def answers(app: EdgeinferApp) -> list[MessageView]:
    return [v for v in app.query(MessageView) if v.role == "assistant"]


def conn_text(app: EdgeinferApp) -> str:
    return str(app.query_one("#conn", Static).render())


async def ask(pilot: Pilot[None], question: str) -> None:
    await until(pilot, lambda: pilot.app.connected, "connected")
    pilot.app.query_one("#prompt", Input).focus()
    await pilot.press(*question, "enter")


async def test_streamed_answer_is_rendered_badged_and_stored(store: ConversationStore) -> None:
    fake = FakeClient()
    app = make_app(fake, store, params={"max_tokens": 64})
    async with app.run_test(size=(80, 24)) as pilot:
        await ask(pilot, "Capital of France?")
        await until(pilot, lambda: bool(answers(app)) and answers(app)[-1].meta, "answer")
        view = answers(app)[-1]
        assert view.text == FULL
        assert view.query_one(Markdown).source == FULL
        badge = str(view.query_one(".badge", Static).render())
        assert badge == "tiny · generated · 24 cached tok · 50.0 tok/s"
    sent = fake.requests[0]
    assert sent["messages"] == [{"role": "user", "content": "Capital of France?"}]
    assert sent["model"] == "auto" and sent["max_tokens"] == 64
    [conv] = store.conversations()
    assert conv.title == "Capital of France?"
    rows = store.messages(conv.id)
    assert [(m.role, m.content) for m in rows] == [
        ("user", "Capital of France?"),
        ("assistant", FULL),
    ]
    assert rows[1].meta is not None and rows[1].meta["edgeinfer"]["model"] == "tiny"


async def test_markdown_grows_while_the_answer_streams(store: ConversationStore) -> None:
    fake = FakeClient(hold=True)
    app = make_app(fake, store)
    async with app.run_test(size=(80, 24)) as pilot:
        await ask(pilot, "hi")
        await until(pilot, lambda: bool(answers(app)), "answer view")
        md = answers(app)[-1].query_one(Markdown)
        seen = []
        for n in range(1, len(ANSWER) + 1):
            fake.release()
            want = "".join(ANSWER[:n])
            await until(pilot, lambda want=want: md.source == want, f"{n} chunks shown")
            seen.append(md.source)
        assert seen == ["".join(ANSWER[:n]) for n in range(1, len(ANSWER) + 1)]
        fake.release()
        await until(pilot, lambda: bool(answers(app)[-1].meta), "final chunk")


async def test_escape_stops_generation_and_keeps_the_partial_answer(
    store: ConversationStore,
) -> None:
    fake = FakeClient(hold=True)
    app = make_app(fake, store)
    async with app.run_test(size=(80, 24)) as pilot:
        await ask(pilot, "Tell me everything")
        fake.release(2)
        partial = "".join(ANSWER[:2])
        await until(pilot, lambda: answers(app)[-1].query_one(Markdown).source == partial, "2")
        await pilot.press("escape")
        await until(pilot, lambda: fake.streams_closed == 1, "the stream closed (slot freed)")
        await until(pilot, lambda: bool(answers(app)[-1].meta), "stopped badge")
        assert "stopped" in str(answers(app)[-1].query_one(".badge", Static).render())
        fake.release(10)  # nothing more may arrive once stopped
        await pilot.pause(0.1)
        assert answers(app)[-1].text == partial
    [conv] = store.conversations()
    last = store.messages(conv.id)[-1]
    assert (last.role, last.content) == ("assistant", partial)
    assert last.meta == {"model": "tiny", "stopped": True}


async def test_model_picker_switches_the_model_sent(store: ConversationStore) -> None:
    fake = FakeClient()
    app = make_app(fake, store)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: app.connected, "connected")
        select = app.query_one("#model", Select)
        chat = app.query_one(ChatPane)
        await until(pilot, lambda: chat.choices == ["auto", "tiny", "small", "large"], "listed")
        await pilot.press("ctrl+o")  # opens the picker; down twice: auto -> tiny -> small
        await until(pilot, lambda: select.expanded, "picker open")
        await pilot.press("down", "down", "enter")
        await until(pilot, lambda: select.value == "small", "small picked")
        await ask(pilot, "Which model?")
        await until(pilot, lambda: bool(answers(app)) and answers(app)[-1].meta, "answer")
        assert str(answers(app)[-1].query_one(".badge", Static).render()).startswith("small ·")
    assert [r["model"] for r in fake.requests] == ["small"]
    assert store.conversations()[0].model == "small"


async def test_reconnects_after_the_daemon_restarts(store: ConversationStore) -> None:
    fake = FakeClient()
    app = make_app(fake, store)
    async with app.run_test(size=(80, 24)) as pilot:
        pane = app.query_one(StatsPane)
        await until(pilot, lambda: pane.last is not None and app.connected, "first feed")
        assert pane.last is not None and pane.last.models[0].requests == 1
        fake.stop()
        await until(pilot, lambda: not app.connected, "disconnect noticed")
        assert "no daemon" in conn_text(app)
        await ask_fails_cleanly(pilot, app, fake)
        fake.start(snapshots=[snapshot(0, requests=41), snapshot(1, requests=41)])
        await until(pilot, lambda: app.connected, "reconnected")
        await until(pilot, lambda: pane.last.models[0].requests == 42, "stats after restart")
        assert "connected" in conn_text(app)
        await ask(pilot, "Back?")
        await until(pilot, lambda: answers(app)[-1].text == FULL, "answer after restart")
    assert fake.stats_connects == 2


async def ask_fails_cleanly(pilot: Pilot[None], app: EdgeinferApp, fake: FakeClient) -> None:
    """A question while the daemon is down is answered by an error badge, not a crash."""
    app.query_one("#prompt", Input).focus()
    await pilot.press(*"Anyone there?", "enter")
    await until(pilot, lambda: bool(answers(app)) and answers(app)[-1].meta, "error shown")
    assert "no edgeinfer daemon answers" in str(answers(app)[-1].query_one(".badge").render())
    assert answers(app)[-1].record is None  # not stored, not sent as history later


async def test_regenerate_replaces_the_last_answer(store: ConversationStore) -> None:
    fake = FakeClient()
    app = make_app(fake, store)
    async with app.run_test(size=(80, 24)) as pilot:
        await ask(pilot, "Again?")
        await until(pilot, lambda: bool(answers(app)) and answers(app)[-1].meta, "answer")
        fake.answer = ["A different ", "answer."]
        await pilot.press("ctrl+r")
        await until(pilot, lambda: answers(app)[-1].text == "A different answer.", "regenerated")
        assert len(answers(app)) == 1
    assert fake.requests[0]["messages"] == fake.requests[1]["messages"]
    [conv] = store.conversations()
    assert [m.content for m in store.messages(conv.id)] == ["Again?", "A different answer."]


async def test_copy_puts_the_last_answer_on_the_clipboard(store: ConversationStore) -> None:
    app = make_app(FakeClient(), store)
    async with app.run_test(size=(80, 24)) as pilot:
        await ask(pilot, "Copy me")
        await until(pilot, lambda: bool(answers(app)) and answers(app)[-1].meta, "answer")
        assert app.clipboard == ""
        await pilot.press("ctrl+y")
        assert app.clipboard == FULL


async def test_new_conversation_and_reopening_a_stored_one(store: ConversationStore) -> None:
    fake = FakeClient()
    app = make_app(fake, store)
    async with app.run_test(size=(80, 24)) as pilot:
        await ask(pilot, "First topic")
        await until(pilot, lambda: bool(answers(app)) and answers(app)[-1].meta, "answer 1")
        await pilot.press("ctrl+n")
        await until(pilot, lambda: not app.query(MessageView), "empty log")
        await ask(pilot, "Second topic")
        await until(
            pilot, lambda: len(fake.requests) == 2 and bool(answers(app)[-1].meta), "answer 2"
        )
        # The second conversation starts fresh: no history from the first.
        assert fake.requests[1]["messages"] == [{"role": "user", "content": "Second topic"}]
        assert [c.title for c in store.conversations()] == ["Second topic", "First topic"]
        await pilot.press("ctrl+l", "down", "enter")  # the list, most recent first
        await until(
            pilot,
            lambda: [v.text for v in app.query(MessageView)] == ["First topic", FULL],
            "first conversation reopened",
        )
        badge = str(answers(app)[-1].query_one(".badge", Static).render())
        assert badge.startswith("tiny · generated")
        await ask(pilot, "Follow-up")
        await until(pilot, lambda: len(fake.requests) == 3, "third request")
    assert [m["content"] for m in fake.requests[2]["messages"]] == [
        "First topic",
        FULL,
        "Follow-up",
    ]


async def test_conversations_survive_a_restart_of_the_tui(tmp_path: Path) -> None:
    path = tmp_path / "chat.sqlite3"
    first = ConversationStore(path)
    app = make_app(FakeClient(), first)
    async with app.run_test(size=(80, 24)) as pilot:
        await ask(pilot, "Remember me")
        await until(pilot, lambda: bool(answers(app)) and answers(app)[-1].meta, "answer")
    first.close()
    second = ConversationStore(path)
    app = make_app(FakeClient(), second)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: len(app.query("#conversations ListItem")) == 1, "listed")
        await pilot.press("ctrl+l", "enter")
        await until(pilot, lambda: len(app.query(MessageView)) == 2, "reopened")
    second.close()


async def test_tabs_and_help_list_every_binding(store: ConversationStore) -> None:
    app = make_app(FakeClient(), store)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("f3")
        await until(pilot, lambda: app.query_one(TabbedContent).active == "stats", "stats tab")
        await pilot.press("f2")
        await until(pilot, lambda: isinstance(app.focused, Input), "back in the prompt")
        await pilot.press("f1")
        await until(pilot, lambda: isinstance(app.screen, HelpScreen), "help open")
        keys = {key for _, key, _ in app.screen.help_rows}  # type: ignore[attr-defined]
        want = {"F1", "F2", "F3", "F5", "Ctrl+Q", "Enter", "Esc", "Ctrl+R", "Ctrl+Y", "Ctrl+N"}
        assert want | {"Ctrl+O", "Ctrl+L", "Ctrl+B", "PgUp", "PgDn"} <= keys
        await pilot.press("escape")
        await until(pilot, lambda: not isinstance(app.screen, HelpScreen), "help closed")


async def test_top_mode_shows_stats_only() -> None:
    app = EdgeinferApp(FakeClient(), mode="top", retry=(0.01, 0.05))
    async with app.run_test(size=(80, 24)) as pilot:
        pane = app.query_one(StatsPane)
        await until(pilot, lambda: pane.last is not None and len(pane.last.models) == 3, "feed")
        assert not app.query(TabbedContent)
        assert [key for _, key, _ in app.help_rows()] == ["F1", "F5", "Ctrl+Q"]


async def test_a_config_error_of_the_daemon_is_shown_until_fixed() -> None:
    """Hot reload keeps the last good config on an invalid file; the stats tab says so."""
    bad = {
        **snapshot(0),
        "config": {
            "ok": False,
            "error": "models.tiny.slotz: unknown key",
            "path": "/home/u/.config/edgeinfer/models.toml",
        },
    }
    good = {**snapshot(1), "config": {"ok": True, "error": None, "path": None}}
    app = EdgeinferApp(FakeClient(snapshots=[bad]), mode="top", retry=(0.01, 0.05))
    async with app.run_test(size=(80, 24)) as pilot:
        pane = app.query_one(StatsPane)
        await until(pilot, lambda: pane.events >= 1, "feed")
        warning = app.query_one("#stats-config", Static)
        assert warning.display
        text = str(warning.render())
        assert "config error in /home/u/.config/edgeinfer/models.toml" in text
        assert "unknown key" in text and "last good config" in text
        pane.show(good)
        await pilot.pause()
        assert not warning.display
