"""Hot reload: watch the models.toml files, load them whole, swap the config on success.

The config is an immutable :class:`~edgeinfer.config.schema.Catalogue`; a reload builds a new
one and hands it to ``apply`` (the composition root wires that to the pool), or, when the files
are invalid, keeps the last good one and records the error for the log, ``/health``, ``/stats``
and the TUI. Triggers: a change seen by watchfiles (debounced, so an editor's save-as-rename
dance is one reload), SIGHUP, and the admin route. Reloads never overlap (one lock).

The directories are watched rather than the files: an editor that replaces the file, or a user
file that does not exist yet, would otherwise be missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from edgeinfer.config.schema import Catalogue
from edgeinfer.errors import ConfigError

log = logging.getLogger("edgeinfer.config")


@dataclass(frozen=True)
class ConfigStatus:
    """The outcome of the last reload: what ``/health`` shows under ``config``."""

    ok: bool
    generation: int  # successful loads so far (1 = the startup config)
    loaded_at: float  # wall-clock time of the config in force
    error: str | None = None
    path: str | None = None  # the file the error names, when it names one
    trigger: str = "startup"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class ConfigWatcher:
    """Owns the config in force. ``reload`` is blocking (call it off the event loop); ``run``
    is the watch task the daemon's lifespan starts."""

    def __init__(
        self,
        paths: Sequence[Path],
        load: Callable[[], Catalogue],
        apply: Callable[[Catalogue], object],
        *,
        initial: Catalogue,
        debounce_ms: int = 300,
    ) -> None:
        self.paths = [Path(p) for p in paths]
        self._load = load
        self._apply = apply
        self._debounce_ms = debounce_ms
        self._lock = threading.Lock()
        self.current = initial
        self.status = ConfigStatus(ok=True, generation=1, loaded_at=time.time())

    def reload(self, trigger: str = "manual") -> ConfigStatus:
        """Load the files; on success apply and swap, else keep the last good config."""
        with self._lock:
            try:
                catalogue = self._load()
            except ConfigError as exc:
                log.error(
                    "config reload (%s) failed; keeping the last good config: %s",
                    trigger,
                    exc.message,
                )
                return self._failed(exc.message, trigger, self._path_named(exc.message))
            try:
                self._apply(catalogue)
            except Exception as exc:  # a bug or an OS error must not end the watch
                log.exception("config reload (%s) could not be applied", trigger)
                return self._failed(f"the new config could not be applied: {exc}", trigger)
            self.current = catalogue
            self.status = ConfigStatus(
                ok=True,
                generation=self.status.generation + 1,
                loaded_at=time.time(),
                trigger=trigger,
            )
            log.info("config reloaded (%s), generation %d", trigger, self.status.generation)
            return self.status

    def _failed(self, error: str, trigger: str, path: str | None = None) -> ConfigStatus:
        """The last good config stays in force; the status says why the new one is not."""
        self.status = ConfigStatus(
            ok=False,
            generation=self.status.generation,
            loaded_at=self.status.loaded_at,
            error=error,
            path=path,
            trigger=trigger,
        )
        return self.status

    def _path_named(self, message: str) -> str | None:
        named = [p for p in self.paths if str(p) in message]
        return str(named[-1]) if named else None

    def _relevant(self, changes: set[tuple[Any, str]]) -> bool:
        wanted = {p.resolve() for p in self.paths}
        return any(Path(path).resolve() in wanted for _, path in changes)

    async def run(self, stop: asyncio.Event) -> None:
        """Watch until ``stop`` is set; each relevant batch of changes is one reload."""
        from watchfiles import awatch

        dirs = sorted({str(p.parent) for p in self.paths if p.parent.is_dir()})
        if not dirs:
            return
        log.info("watching %s for config changes", ", ".join(dirs))
        async for changes in awatch(
            *dirs, stop_event=stop, debounce=self._debounce_ms, recursive=False
        ):
            if self._relevant(changes):
                await asyncio.to_thread(self.reload, "file change")

    def on_sighup(self, loop: asyncio.AbstractEventLoop) -> bool:
        """Reload on SIGHUP (main thread only, where the loop may own signals)."""
        if threading.current_thread() is not threading.main_thread():
            return False

        def handler() -> None:
            log.info("SIGHUP: reloading the config")
            loop.create_task(asyncio.to_thread(self.reload, "SIGHUP"))

        loop.add_signal_handler(signal.SIGHUP, handler)
        return True

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """The daemon lifespan's part: SIGHUP and the file watcher, stopped on exit."""
        loop = asyncio.get_running_loop()
        hup = self.on_sighup(loop)
        stop = asyncio.Event()
        task = loop.create_task(self._watch_logged(stop))
        try:
            yield
        finally:
            stop.set()
            if hup:
                loop.remove_signal_handler(signal.SIGHUP)
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(task, 5.0)  # cancels the watch if it will not stop

    async def _watch_logged(self, stop: asyncio.Event) -> None:
        try:
            await self.run(stop)
        except Exception:  # a watcher failure must not take the daemon down; SIGHUP still works
            log.exception("config watcher stopped; SIGHUP and POST /admin/reload still reload")
