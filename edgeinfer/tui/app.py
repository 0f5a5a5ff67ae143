"""The Textual apps: ``edgeinfer chat`` (Chat and Stats tabs) and ``edgeinfer top`` (Stats).

The app owns the connection: one worker follows the daemon's ``/stats`` feed, and whenever it
breaks (daemon stopped, restarted, never started) it says so and retries with backoff, so a
restarted daemon is picked up without restarting the TUI. The panes get the client, the
connection state and each snapshot from here (attributes down) and never reconnect themselves.
"""

from __future__ import annotations

import asyncio
from typing import Any, Literal

from textual import work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.widgets import Footer, Header, TabbedContent, TabPane

from edgeinfer.errors import EdgeInferError
from edgeinfer.tui.chat import AUTO, ChatPane
from edgeinfer.tui.help import HelpRow, HelpScreen, rows
from edgeinfer.tui.port import DaemonPort
from edgeinfer.tui.stats import StatsPane
from edgeinfer.tui.store import ConversationStore

Mode = Literal["chat", "top"]
DARK, LIGHT = "textual-dark", "textual-light"


class EdgeinferApp(App[None]):
    """``mode="chat"`` needs a conversation ``store``; ``mode="top"`` shows the stats alone.

    Args:
        client: the daemon (``edgeinfer.client.AsyncClient`` or the fake); closed on exit.
        params: request fields sent with every question (say ``max_tokens``).
        interval: seconds between two stats events.
        retry: first and longest wait between reconnection attempts, in seconds.
    """

    TITLE = "edgeinfer"
    ENABLE_COMMAND_PALETTE = False
    BINDINGS = [
        Binding("f1", "help", "Help", tooltip="Show every key"),
        Binding("f2", "tab('chat')", "Chat", tooltip="Show the chat"),
        Binding("f3", "tab('stats')", "Stats", tooltip="Show the live stats"),
        Binding(
            "f5", "toggle_theme", "Light/dark", show=False, tooltip="Switch light and dark colours"
        ),
        Binding("ctrl+q", "quit", "Quit", priority=True, tooltip="Quit"),
    ]

    def __init__(
        self,
        client: DaemonPort,
        *,
        mode: Mode = "chat",
        store: ConversationStore | None = None,
        params: dict[str, Any] | None = None,
        model: str = AUTO,
        interval: float = 1.0,
        retry: tuple[float, float] = (0.5, 5.0),
        light: bool = False,
    ) -> None:
        super().__init__()
        if mode == "chat" and store is None:
            raise ValueError("the chat needs a conversation store")
        self.client = client
        self.mode = mode
        self.store = store
        self.params = params or {}
        self.model = model
        self.interval = interval
        self.retry = retry
        self.connected = False
        self.theme = LIGHT if light else DARK

    def compose(self) -> ComposeResult:
        yield Header()
        if self.mode == "top" or self.store is None:
            yield StatsPane(id="stats-pane")
        else:
            with TabbedContent(initial="chat", id="tabs"):
                with TabPane("Chat", id="chat"):
                    yield ChatPane(self.client, self.store, params=self.params, model=self.model)
                with TabPane("Stats", id="stats"):
                    yield StatsPane(id="stats-pane")
        yield Footer()

    def on_mount(self) -> None:
        self.sub_title = str(self.client.socket)
        self._follow()

    async def on_unmount(self) -> None:
        await self.client.aclose()

    # -- connection -------------------------------------------------------------------------

    @work(exclusive=True, group="feed")
    async def _follow(self) -> None:
        """Follow the stats feed for as long as the app runs, reconnecting with backoff."""
        first, longest = self.retry
        delay = first
        while True:
            try:
                names = [str(m["id"]) for m in await self.client.models()]
                self._connection(True, f"connected: {', '.join(names) or 'no models'}", names)
                async for snap in self.client.stream_stats(self.interval):
                    self.query_one(StatsPane).show(snap)
                    delay = first
                reason = "the daemon closed the stats feed (stopping?)"
            except EdgeInferError as exc:
                reason = exc.message
            self._connection(False, f"disconnected: {reason}; retrying")
            await asyncio.sleep(delay)
            delay = min(delay * 2, longest)

    def _connection(self, up: bool, text: str, models: list[str] | None = None) -> None:
        self.connected = up
        self.query_one(StatsPane).set_status(text)
        for chat in self.query(ChatPane):
            chat.set_connection("● connected" if up else "○ no daemon; retrying")
            if models is not None:
                chat.set_models(models)

    # -- actions ----------------------------------------------------------------------------

    def help_rows(self) -> list[HelpRow]:
        """Every key of this app, for the help screen."""
        tabs = ("F2", "F3")
        app_rows = [
            r for r in rows("app", self.BINDINGS) if self.mode == "chat" or r[1] not in tabs
        ]
        if self.mode == "top":
            return app_rows
        chat = [("chat", "Enter", "Send the question"), *rows("chat", ChatPane.BINDINGS)]
        return [*app_rows, *chat, ("help", "Esc / F1 / Q", "Close this screen")]

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen(self.help_rows()))

    def action_tab(self, name: str) -> None:
        if self.mode == "chat":
            self.query_one(TabbedContent).active = name

    def on_tabbed_content_tab_activated(self, event: TabbedContent.TabActivated) -> None:
        """Keys go where the eyes are: the question box, or the scrollable stats (unless the
        focus is in that pane already, say on the model picker)."""
        pane = event.pane
        target = self.query_one("#prompt") if pane.id == "chat" else self.query_one(StatsPane)

        def focus() -> None:
            if self.query_one(TabbedContent).active != pane.id:
                return  # another tab was chosen meanwhile
            if self.focused is None or pane not in self.focused.ancestors_with_self:
                target.focus()

        self.call_after_refresh(focus)

    def action_toggle_theme(self) -> None:
        self.theme = LIGHT if self.theme == DARK else DARK

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """``top`` has no tabs: F2/F3 are hidden there."""
        if action == "tab" and self.mode == "top":
            return False
        return True
