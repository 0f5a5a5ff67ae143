"""The live stats pane (``edgeinfer top``, and the Stats tab of ``edgeinfer chat``).

It receives each ``/stats`` snapshot from the app (attributes down) and renders what
:class:`edgeinfer.tui.view.StatsModel` makes of it as plain tables. Only bold and dim are used
for emphasis, so it reads the same in light and dark terminals.
"""

from __future__ import annotations

from typing import Any

from rich import box
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, VerticalScroll
from textual.widgets import Static

from edgeinfer.tui.view import MISSING, StatsModel, StatsView, config_problem


def _table(title: str | None, *columns: str, header: bool = True) -> Table:
    table = Table(
        *columns,
        title=title,
        title_justify="left",
        title_style="bold",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        show_header=header,
        pad_edge=False,
        expand=True,
    )
    for column in table.columns[1:]:
        column.justify = "right"
    return table


def models_table(view: StatsView) -> Table:
    table = _table(None, "model", "state", "slots", "queue", "tok/s", "trend", "TTFT", "req", "mem")
    for m in view.models:
        table.add_row(
            Text(m.name, style="bold"),
            m.status,
            m.slots,
            str(m.queue),
            MISSING if m.rate is None else f"{m.rate:.1f}",
            m.trend,
            MISSING if m.ttft_ms is None else f"{m.ttft_ms:.0f}ms",
            str(m.requests),
            m.memory,
        )
    return table


def _pairs(title: str, rows: list[tuple[str, str]]) -> Table:
    table = _table(title, "what", "value", header=False)
    for key, value in rows:
        table.add_row(key, value)
    return table


def cache_and_router(view: StatsView) -> RenderableType:
    """Rows are tight on purpose: at 80x24 the whole pane fits without scrolling."""
    cache = _table("Cache hit rate", "layer", "hits", "miss", "rate")
    for row in view.layers:
        cache.add_row(row.layer, row.hits, row.misses, f"{row.rate:.0%}")
    if not view.router:
        return cache
    return Group(cache, _pairs("Router", view.router))


def ledger(view: StatsView) -> RenderableType:
    return Group(
        _pairs("Saved (measured)", view.measured),
        _pairs("Saved (estimated)", view.estimated),
    )


class StatsPane(VerticalScroll):
    """Tables fed by :meth:`show`; scrolls when the terminal is too small for all of them."""

    DEFAULT_CSS = """
    StatsPane { padding: 0 1; height: 1fr; }
    StatsPane #stats-status { color: $text-muted; height: 1; }
    StatsPane #stats-config { color: $error; display: none; }
    StatsPane #stats-columns { height: auto; }
    StatsPane #stats-left { width: 1fr; margin-right: 2; }
    StatsPane #stats-right { width: 1fr; }
    StatsPane Static { height: auto; }
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.model = StatsModel()
        self.last: StatsView | None = None
        self.events = 0  # snapshots shown so far

    def compose(self) -> ComposeResult:
        yield Static("waiting for the daemon's stats feed…", id="stats-status")
        yield Static(id="stats-config")
        yield Static(id="stats-models")
        with Horizontal(id="stats-columns"):
            yield Static(id="stats-left")
            yield Static(id="stats-right")

    def show(self, snap: dict[str, Any]) -> None:
        """Render one snapshot (called by the app for each event of the feed)."""
        view = self.model.update(snap)
        self.last = view
        self.events += 1
        self.query_one("#stats-models", Static).update(models_table(view))
        problem = config_problem(snap)
        warning = self.query_one("#stats-config", Static)
        warning.update(problem or "")
        warning.display = problem is not None
        self.query_one("#stats-left", Static).update(cache_and_router(view))
        self.query_one("#stats-right", Static).update(ledger(view))

    def set_status(self, text: str) -> None:
        self.query_one("#stats-status", Static).update(text)
