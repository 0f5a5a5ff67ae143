"""Request body size limit, as a pure ASGI middleware in front of the app.

A body larger than ``max_bytes`` is refused with 413 and OpenAI error JSON (Ollama's under
``/api/``, Anthropic's on ``/v1/messages``) before it is read
into memory: by its Content-Length when the client sends one, else as the bytes arrive.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodyLimit:
    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(send, scope)
            return
        seen = 0
        exceeded = False
        replaced = False

        async def limited_receive() -> Message:
            # Past the limit the body is cut short (FastAPI turns exceptions raised while it
            # reads into a 400), and whatever the app answers is replaced by the 413 below.
            nonlocal seen, exceeded
            message = await receive()
            if message["type"] == "http.request" and not exceeded:
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    exceeded = True
                    return {"type": "http.request", "body": b"", "more_body": False}
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal replaced
            if not exceeded:
                await send(message)
            elif not replaced:
                replaced = True
                await self._refuse(send, scope)

        await self.app(scope, limited_receive, guarded_send)

    async def _refuse(self, send: Send, scope: Scope) -> None:
        message = f"the request body is larger than {self.max_bytes} bytes"
        error: dict[str, Any] = {
            "error": {
                "message": message,
                "type": "invalid_request_error",
                "param": None,
                "code": "request_too_large",
            }
        }
        path = str(scope.get("path", ""))
        if path.startswith("/api/"):
            error = {"error": message}  # the Ollama API's shape
        elif path == "/v1/messages":  # Anthropic's
            error = {"type": "error", "error": {"type": "request_too_large", "message": message}}
        body = json.dumps(error).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})
