"""What the TUI needs from the daemon, as a protocol.

:class:`edgeinfer.client.AsyncClient` satisfies it as is; :class:`edgeinfer.tui.fake.FakeClient`
is the deterministic stand-in the TUI's tests run against. Every method raises
``edgeinfer.errors.DaemonError`` when the daemon does not answer or the connection breaks, which
the TUI treats as "disconnected, retry".
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Protocol


class DaemonPort(Protocol):
    """The daemon as the TUI sees it."""

    @property
    def socket(self) -> Path | str:
        """Where the daemon listens (shown in the header)."""
        ...

    async def health(self) -> dict[str, Any]: ...

    async def models(self) -> list[dict[str, Any]]: ...

    def chat_stream(
        self, messages: list[dict[str, Any]], **params: Any
    ) -> AsyncIterator[dict[str, Any]]:
        """OpenAI chat chunks; the last carries ``usage`` and the ``edgeinfer`` report."""
        ...

    def stream_stats(self, interval: float = 1.0) -> AsyncIterator[dict[str, Any]]:
        """``/stats`` snapshots until the daemon stops (iterator ends) or breaks (raises)."""
        ...

    async def aclose(self) -> None: ...
