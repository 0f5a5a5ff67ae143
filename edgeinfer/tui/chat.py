"""The chat pane: conversations, a model picker, streamed Markdown answers with their badges.

The app hands it the client, the conversation store and the connection state (attributes
down); it streams answers in an exclusive worker so a second question, Stop or Regenerate
cancels the first cleanly (closing the stream hangs up, which frees the daemon's slot).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widget import Widget
from textual.widgets import Input, Label, ListItem, ListView, Markdown, Select, Static
from textual.worker import Worker, WorkerCancelled, WorkerFailed

from edgeinfer.errors import EdgeInferError
from edgeinfer.tui.port import DaemonPort
from edgeinfer.tui.store import ConversationStore, Message
from edgeinfer.tui.view import badge

AUTO = "auto"


def merge_chunk(final: dict[str, Any], chunk: dict[str, Any]) -> str:
    """Fold one streamed chunk into ``final`` (model, usage, edgeinfer); return its text."""
    for key in ("model", "usage", "edgeinfer"):
        if chunk.get(key):
            final[key] = chunk[key]
    return "".join(
        (choice.get("delta") or {}).get("content") or "" for choice in chunk.get("choices", [])
    )


class MessageView(Vertical):
    """One turn: who, the text (Markdown for answers), and the answer's badge."""

    def __init__(self, role: str, text: str = "", meta: dict[str, Any] | None = None) -> None:
        super().__init__(classes=f"message {role}")
        self.role = role
        self.text = text
        self.meta = meta
        self.record: Message | None = None

    def compose(self) -> ComposeResult:
        yield Label("you" if self.role == "user" else "assistant", classes="role")
        if self.role == "user":
            yield Static(self.text, markup=False, classes="body")
        else:
            yield Markdown(self.text, classes="body")
        yield Static(self.badge_text(), classes="badge", markup=False)

    def badge_text(self) -> str:
        if not self.meta:
            return ""
        line = badge(self.meta) if self.meta.get("edgeinfer") or self.meta.get("model") else ""
        flag = self.meta.get("stopped") and "stopped" or self.meta.get("error")
        return " · ".join(p for p in (line, str(flag) if flag else "") if p)

    def set_meta(self, meta: dict[str, Any]) -> None:
        self.meta = meta
        self.query_one(".badge", Static).update(self.badge_text())


class ChatPane(Widget):
    """Conversation list on the left, the conversation on the right."""

    DEFAULT_CSS = """
    ChatPane { layout: horizontal; height: 1fr; }
    ChatPane #sidebar { width: 24; border-right: vkey $panel; }
    ChatPane #sidebar.hidden { display: none; }
    ChatPane #sidebar Label.title { text-style: bold; padding: 0 1; }
    ChatPane #main { width: 1fr; }
    ChatPane #bar { height: 3; }
    ChatPane #model { width: 22; }
    ChatPane #conn { width: 1fr; padding: 1 1 0 1; color: $text-muted; }
    ChatPane #log { height: 1fr; padding: 0 1; }
    ChatPane .message { height: auto; margin-bottom: 1; padding-left: 1; }
    ChatPane .message.user { border-left: outer $primary; }
    ChatPane .message.assistant { border-left: outer $secondary; }
    ChatPane .role { text-style: bold; }
    ChatPane .badge { color: $text-muted; }
    ChatPane Markdown { margin: 0; padding: 0; }
    """
    BINDINGS = [
        Binding("escape", "stop", "Stop", tooltip="Stop the answer being generated"),
        Binding("ctrl+r", "regenerate", "Regenerate", tooltip="Ask the last question again"),
        Binding(
            "ctrl+y", "copy", "Copy", show=False, tooltip="Copy the last answer to the clipboard"
        ),
        Binding("ctrl+n", "new", "New", tooltip="Start a new conversation"),
        Binding("ctrl+o", "pick_model", "Model", tooltip="Pick the model (auto or a tier)"),
        Binding(
            "ctrl+l", "conversations", "Chats", show=False, tooltip="Go to the conversation list"
        ),
        Binding("ctrl+b", "sidebar", "Sidebar", show=False, tooltip="Show/hide the list"),
        Binding("pageup", "scroll('page_up')", "Page up", show=False, tooltip="Scroll up"),
        Binding("pagedown", "scroll('page_down')", "Page down", show=False, tooltip="Scroll down"),
    ]

    def __init__(
        self,
        client: DaemonPort,
        store: ConversationStore,
        *,
        params: dict[str, Any] | None = None,
        model: str = AUTO,
        id: str | None = None,
    ) -> None:
        super().__init__(id=id)
        self.client = client
        self.store = store
        self.params = dict(params or {})
        self.model = model
        self.conversation: int | None = None
        self.answering: Worker[None] | None = None
        self.choices = [AUTO] if model == AUTO else [AUTO, model]

    def compose(self) -> ComposeResult:
        with Vertical(id="sidebar"):
            yield Label("Conversations", classes="title")
            yield ListView(id="conversations")
        with Vertical(id="main"):
            with Horizontal(id="bar"):
                options = [(name, name) for name in self.choices]
                yield Select(options, value=self.model, allow_blank=False, id="model")
                yield Static("connecting…", id="conn")
            # Not focusable: Textual hands focus to a hidden widget's visible sibling, which
            # would pull the Chat tab back whenever the Stats tab is chosen.
            yield VerticalScroll(id="log", can_focus=False)
            yield Input(placeholder="Ask something (Enter sends, F1 help)", id="prompt")

    async def on_mount(self) -> None:
        self.query_one("#log", VerticalScroll).anchor()
        await self.refresh_conversations()
        self.query_one("#prompt", Input).focus()

    # -- attributes from the app ------------------------------------------------------------

    def set_connection(self, text: str) -> None:
        self.query_one("#conn", Static).update(text)

    def set_models(self, names: list[str]) -> None:
        """The picker's choices: ``auto`` and each model the daemon serves."""
        select: Select[str] = self.query_one("#model", Select)
        choices = [AUTO, *[n for n in names if n != AUTO]]
        if self.model not in choices:
            choices.append(self.model)
        self.choices = choices
        select.set_options([(n, n) for n in choices])
        select.value = self.model

    # -- conversations ----------------------------------------------------------------------

    async def refresh_conversations(self) -> None:
        items = [
            ListItem(Label(c.title, markup=False), id=f"conv-{c.id}")
            for c in self.store.conversations()
        ]
        listing = self.query_one("#conversations", ListView)
        await listing.clear()
        await listing.extend(items)
        if self.conversation is not None:
            ids = [item.id for item in items]
            if f"conv-{self.conversation}" in ids:
                listing.index = ids.index(f"conv-{self.conversation}")

    @on(ListView.Selected, "#conversations")
    async def _open(self, event: ListView.Selected) -> None:
        if event.item.id is None:
            return
        await self.load(int(event.item.id.removeprefix("conv-")))
        self.query_one("#prompt", Input).focus()

    async def load(self, conversation_id: int) -> None:
        """Show a stored conversation, badges included."""
        await self._cancel_answer()
        conv = self.store.get(conversation_id)
        if conv is None:
            return
        self.conversation = conv.id
        self.model = conv.model
        self.set_models(self.choices)  # adds the conversation's model if the daemon lacks it
        log = self.query_one("#log", VerticalScroll)
        await log.remove_children()
        views = []
        for msg in self.store.messages(conv.id):
            view = MessageView(msg.role, msg.content, msg.meta)
            view.record = msg
            views.append(view)
        await log.mount_all(views)

    @on(Select.Changed, "#model")
    def _model_changed(self, event: Select.Changed) -> None:
        """The user picked a model. Read the widget, not the event: ``set_models`` replaces
        the options (one event) and then restores the value (another)."""
        value = event.select.value
        if isinstance(value, str) and value != self.model:
            self.model = value
            if self.conversation is not None:
                self.store.set_model(self.conversation, self.model)

    # -- asking -----------------------------------------------------------------------------

    @on(Input.Submitted, "#prompt")
    async def _submit(self, event: Input.Submitted) -> None:
        question = event.value.strip()
        if not question:
            return
        event.input.clear()
        await self.ask(question)

    async def ask(self, question: str) -> None:
        await self._cancel_answer()
        if self.conversation is None:
            title = " ".join(question.split())[:40]
            self.conversation = self.store.create(title, self.model).id
        view = MessageView("user", question)
        view.record = self.store.add(self.conversation, "user", question)
        await self.query_one("#log", VerticalScroll).mount(view)
        await self.refresh_conversations()
        await self._answer()

    def _history(self) -> list[dict[str, Any]]:
        return [
            {"role": v.role, "content": v.text}
            for v in self.query(MessageView)
            if v.record is not None
        ]

    async def _answer(self) -> None:
        view = MessageView("assistant")
        await self.query_one("#log", VerticalScroll).mount(view)
        self.answering = self._stream(view, self._history())

    @work(exclusive=True, group="answer")
    async def _stream(self, view: MessageView, messages: list[dict[str, Any]]) -> None:
        """Stream one answer into ``view``; whatever ends it (done, Stop, an error), the
        answer so far is stored with its badge data."""
        stream = Markdown.get_stream(view.query_one(Markdown))
        final: dict[str, Any] = {}
        parts: list[str] = []
        try:
            params = {**self.params, "model": self.model}
            async for chunk in self.client.chat_stream(messages, **params):
                piece = merge_chunk(final, chunk)
                if piece:
                    parts.append(piece)
                    await stream.write(piece)
        except EdgeInferError as exc:
            final["error"] = f"error: {exc.message}"
        except asyncio.CancelledError:
            final["stopped"] = True
            raise
        finally:
            # A stream stopped before its task first ran re-raises that task's cancellation;
            # the text is complete either way, and our own cancellation still propagates.
            with contextlib.suppress(asyncio.CancelledError):
                await stream.stop()
            self._finish(view, "".join(parts), final)

    def _finish(self, view: MessageView, text: str, final: dict[str, Any]) -> None:
        """Show the badge; store the answer unless nothing came (an error before the first
        token stays on screen only, out of the history sent with the next question)."""
        view.text = text
        view.set_meta(final)
        if self.conversation is not None and text:
            view.record = self.store.add(self.conversation, "assistant", text, final)

    async def _cancel_answer(self) -> None:
        """Stop the answer in flight and wait until it is stored, so rows stay in order."""
        worker = self.answering
        if worker is not None and worker.is_running:
            worker.cancel()
            with contextlib.suppress(WorkerCancelled, WorkerFailed):
                await worker.wait()

    # -- actions ----------------------------------------------------------------------------

    async def action_stop(self) -> None:
        await self._cancel_answer()

    async def action_regenerate(self) -> None:
        """Drop the last answer (on screen and stored) and ask its question again."""
        await self._cancel_answer()
        views = list(self.query(MessageView))
        if not views:
            return
        if views[-1].role == "assistant":
            if views[-1].record is not None:
                self.store.remove_message(views[-1].record.id)
            await views[-1].remove()
        if any(v.role == "user" for v in self.query(MessageView)):
            await self._answer()

    def action_copy(self) -> None:
        answers = [v for v in self.query(MessageView) if v.role == "assistant" and v.text]
        if answers:
            self.app.copy_to_clipboard(answers[-1].text)
            self.notify("answer copied", timeout=2)

    async def action_new(self) -> None:
        await self._cancel_answer()
        self.conversation = None
        await self.query_one("#log", VerticalScroll).remove_children()
        self.query_one("#conversations", ListView).index = None
        self.query_one("#prompt", Input).focus()

    def action_scroll(self, where: str) -> None:
        log = self.query_one("#log", VerticalScroll)
        if where == "page_up":
            log.scroll_page_up()
        else:
            log.scroll_page_down()

    def action_pick_model(self) -> None:
        select = self.query_one("#model", Select)
        select.focus()
        select.expanded = True

    def action_conversations(self) -> None:
        self.query_one("#sidebar").remove_class("hidden")
        listing = self.query_one("#conversations", ListView)
        if listing.index is None and listing.children:
            listing.index = 0
        listing.focus()

    def action_sidebar(self) -> None:
        self.query_one("#sidebar").toggle_class("hidden")
