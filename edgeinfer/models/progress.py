"""Progress reporting for long model-store work (downloads, assembly, hashing).

The CLI owns the terminal: it creates a ``rich.progress.Progress`` and hands it to the store.
Library code only adds and advances tasks through :class:`Meter`, which does nothing when no
Progress was given (the daemon, tests), so the store never prints.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID


class Bar:
    """One progress task; counts bytes even without a Progress so callers can read the total."""

    def __init__(self, progress: Progress | None, task: TaskID | None, total: int | None) -> None:
        self._progress = progress
        self._task = task
        self.completed = 0
        self.total = total

    def advance(self, amount: int) -> None:
        """Count ``amount`` more bytes done."""
        self.completed += amount
        if self._progress is not None and self._task is not None:
            self._progress.advance(self._task, amount)

    def update(self, *, completed: int | None = None, total: int | None = None) -> None:
        """Set the bytes done and/or the expected total (totals grow as pip reports files)."""
        if completed is not None:
            self.completed = completed
        if total is not None:
            self.total = total
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, completed=self.completed, total=self.total)


class Meter:
    """Hands out :class:`Bar` objects; wraps an optional ``rich.progress.Progress``."""

    def __init__(self, progress: Progress | None = None) -> None:
        self._progress = progress

    @contextmanager
    def task(self, description: str, total: int | None = None) -> Iterator[Bar]:
        """A bar for one step; on success it is shown complete (an unknown total becomes known)."""
        task = None
        if self._progress is not None:
            task = self._progress.add_task(description, total=total)
        bar = Bar(self._progress, task, total)
        yield bar
        bar.update(total=bar.total if bar.total is not None else bar.completed)
