"""Graceful drain: in-flight requests finish until a deadline, then end with a clear error.

uvicorn's own shutdown stops accepting and waits for requests, but at its deadline it cancels
their tasks, which cuts a stream mid-chunk with no reason given. This middleware runs each
request in a task of its own so that at the deadline (:meth:`Drain.expire`, armed by the daemon
when SIGTERM/SIGINT arrives) it can cancel the work and still finish the response properly:

* nothing sent yet: 503 ``shutting_down`` OpenAI error JSON;
* an SSE stream under way: one last ``data: {"error": ...}`` event, the way a stream reports any
  error once its headers are gone, then the end of the body (an Ollama NDJSON stream: one last
  ``{"error": ...}`` line);
* a request arriving while draining (pipelined on an open connection): 503 at once.

Cancelling a stream's task runs its ``finally``, which cancels the generation and frees its slot.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from edgeinfer.errors import EdgeInferError, ShuttingDown

log = logging.getLogger("edgeinfer.daemon")


class _Flight:
    """What one request has sent so far, to know how to end it early."""

    def __init__(self, send: Send) -> None:
        self._send = send
        self.started = False
        self.complete = False
        self.sse = False
        self.ndjson = False  # the Ollama API's streams

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.started = True
            headers = dict(message.get("headers") or [])
            kind = headers.get(b"content-type", b"")
            self.sse = kind.startswith(b"text/event-stream")
            self.ndjson = kind.startswith(b"application/x-ndjson")
        elif message["type"] == "http.response.body" and not message.get("more_body", False):
            self.complete = True
        await self._send(message)

    async def cut(self, scope: Scope, receive: Receive, error: EdgeInferError) -> None:
        """End the response with ``error`` in whatever form its state still allows."""
        if self.complete:
            return
        with contextlib.suppress(OSError):  # the client may be gone already
            if not self.started:
                wire = error.to_wire(scope.get("path", ""))
                response = JSONResponse(wire, status_code=error.status)
                await response(scope, receive, self._send)
                return
            body = b""
            if self.sse:
                body = f"data: {json.dumps(error.to_openai(), separators=(',', ':'))}\n\n".encode()
            elif self.ndjson:
                body = (json.dumps({"error": error.message}) + "\n").encode()
            await self._send({"type": "http.response.body", "body": body, "more_body": False})


class Drain:
    """ASGI middleware that the daemon's server tells when to start and stop draining."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.draining = False
        self._flights: dict[asyncio.Task[None], _Flight] = {}
        self._cut: set[asyncio.Task[None]] = set()

    @property
    def in_flight(self) -> int:
        return len(self._flights)

    def begin(self) -> None:
        """Stop taking new requests (the listeners are closed by the server)."""
        self.draining = True

    def expire(self) -> int:
        """The deadline passed: cancel what is still running; return how many."""
        self._cut = set(self._flights)
        for task in self._cut:
            task.cancel("the daemon's drain deadline passed")
        return len(self._cut)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.draining:
            refused = ShuttingDown("the daemon is shutting down; not taking new requests")
            body = refused.to_wire(scope.get("path", ""))
            await JSONResponse(body, status_code=refused.status)(scope, receive, send)
            return
        flight = _Flight(send)
        task = asyncio.ensure_future(self.app(scope, receive, flight.send))
        self._flights[task] = flight
        try:
            await asyncio.wait({task})
        except asyncio.CancelledError:  # uvicorn's own backstop: pass it on
            task.cancel()
            raise
        finally:
            del self._flights[task]
        was_cut = task in self._cut
        self._cut.discard(task)
        if was_cut and task.cancelled():
            error = ShuttingDown("the daemon shut down before this request finished")
            await flight.cut(scope, receive, error)
            return
        task.result()  # the app's own exception, for uvicorn to log and answer 500
