"""Operations on the running daemon: config reload, model load/unload, and their state.

``create_app`` mounts these routes and merges :meth:`Operations.state` into ``/health`` and
``/stats`` (the TUI reads both), so a config that failed to reload is visible wherever a
person looks, not only in the log. Blocking work (reading files, loading a model, draining a
runner) runs off the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse

from edgeinfer.config.watch import ConfigWatcher
from edgeinfer.service.pipeline import ModelPool


class Operations:
    """The pool and the config watcher, as the admin routes and the lifespan use them."""

    def __init__(self, pool: ModelPool, watcher: ConfigWatcher) -> None:
        self.pool = pool
        self.watcher = watcher

    def state(self) -> dict[str, Any]:
        """``config`` (the last reload's outcome) and ``memory`` (budget and use)."""
        return {"config": self.watcher.status.as_dict(), "memory": self.pool.memory()}

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """The lifespan's part: watch the config files and take SIGHUP while serving."""
        async with self.watcher.running():
            yield

    def mount(self, app: FastAPI) -> None:
        @app.post("/admin/reload", response_model=None)
        async def reload() -> JSONResponse:
            """Reload models.toml now; 422 with the error when it is invalid (kept: the last
            good config)."""
            status = await asyncio.to_thread(self.watcher.reload, "admin")
            return JSONResponse({"config": status.as_dict()}, status_code=200 if status.ok else 422)

        @app.post("/admin/models/{name}/load")
        async def load(name: str) -> dict[str, Any]:
            """Load a served model now (waits; unloads idle models if the budget needs it)."""
            served = await asyncio.to_thread(self.pool.load, name)
            return {"model": name, "status": served.status(), "reason": served.reason()}

        @app.post("/admin/models/{name}/unload")
        async def unload(name: str) -> dict[str, Any]:
            """Unload a model; its requests in flight finish first."""
            was_loaded = await asyncio.to_thread(self.pool.unload, name, "unloaded by request")
            return {"model": name, "unloaded": was_loaded}
