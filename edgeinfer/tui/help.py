"""The help screen: every key binding of the app, built from the bindings themselves.

The rows come from the ``BINDINGS`` of the app and of its panes (plus the keys widgets handle
without a binding, such as Enter to send), so the list cannot drift from what the keys do.
"""

from __future__ import annotations

from collections.abc import Iterable

from rich import box
from rich.table import Table
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

HelpRow = tuple[str, str, str]  # (where, key, what it does)


_NAMES = {"escape": "Esc", "pageup": "PgUp", "pagedown": "PgDn", "enter": "Enter"}


def key_label(key: str) -> str:
    """``ctrl+r,f5`` → ``Ctrl+R / F5``: how a key is written on the screen."""
    labels = []
    for combo in key.split(","):
        names = [
            _NAMES.get(p, p.capitalize() if len(p) > 1 else p.upper()) for p in combo.split("+")
        ]
        labels.append("+".join(names))
    return " / ".join(labels)


def rows(where: str, bindings: Iterable[BindingType]) -> list[HelpRow]:
    """Help rows of ``bindings`` (tuples or ``Binding``), skipping the undescribed ones."""
    out = []
    for b in bindings:
        binding = b if isinstance(b, Binding) else Binding(*b)
        text = binding.tooltip or binding.description
        if text:
            out.append((where, key_label(binding.key), text))
    return out


class HelpScreen(ModalScreen[None]):
    """A modal list of every binding; Escape, F1 or Q closes it."""

    DEFAULT_CSS = """
    HelpScreen { align: center middle; }
    HelpScreen #help-box {
        width: 76; max-width: 100%; height: auto; max-height: 100%;
        border: round $primary; background: $surface; padding: 0 1;
    }
    HelpScreen #help-hint { color: $text-muted; }
    """
    BINDINGS = [
        Binding("escape,f1,q", "dismiss", "Close help", show=False),
    ]

    def __init__(self, help_rows: list[HelpRow]) -> None:
        super().__init__()
        self.help_rows = help_rows

    def compose(self) -> ComposeResult:
        table = Table("where", "key", "what", box=box.SIMPLE_HEAD, show_edge=False, expand=True)
        for where, key, what in self.help_rows:
            table.add_row(where, key, what)
        with Vertical(id="help-box"):
            yield Static("[b]edgeinfer — keys[/b]  (the mouse works too; it is never needed)")
            with VerticalScroll():
                yield Static(table)
            yield Static("Esc, F1 or Q closes this screen", id="help-hint")

    async def action_dismiss(self, result: None = None) -> None:
        self.dismiss(result)
