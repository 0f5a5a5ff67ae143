"""Sync and async clients for the daemon's socket (used by the CLI, the TUI, tests and users).

Errors come back as the same exception tree the daemon raised (``edgeinfer.errors``), rebuilt
from the OpenAI error JSON's ``code``; a daemon that is not running is a ``DaemonError`` that
says how to start one.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx

from edgeinfer import errors

_BASE = "http://edgeinfer"
_CODES: dict[str, type[errors.EdgeInferError]] = {
    cls.code: cls
    for cls in (
        errors.InvalidRequest,
        errors.ContextLengthExceeded,
        errors.ModelNotFound,
        errors.ModelUnavailable,
        errors.Busy,
        errors.RequestTimeout,
    )
}


def error_from_wire(status: int, body: Any) -> errors.EdgeInferError:
    """Rebuild the daemon's exception from an OpenAI error body."""
    err = body.get("error", {}) if isinstance(body, dict) else {}
    cls = _CODES.get(str(err.get("code")), errors.EdgeInferError)
    message = str(err.get("message") or f"daemon answered HTTP {status}")
    exc = cls(message, param=err.get("param")) if cls is not errors.Busy else errors.Busy(message)
    return exc


def _not_running(path: Path, exc: Exception) -> errors.DaemonError:
    return errors.DaemonError(
        f"no edgeinfer daemon answers on {path} ({exc}); start one with `edgeinfer serve`"
    )


def _check(response: httpx.Response) -> Any:
    try:
        body = response.json()
    except ValueError:
        body = None
    if response.status_code >= 400:
        raise error_from_wire(response.status_code, body)
    return body


def _events(lines: Iterator[str]) -> Iterator[dict[str, Any]]:
    for line in lines:
        if not line.startswith("data: "):
            continue
        data = line[6:]
        if data == "[DONE]":
            return
        event = json.loads(data)
        if "error" in event:
            raise error_from_wire(500, event)
        yield event


class Client:
    """Blocking client. ``Client(socket_path)``; use as a context manager."""

    def __init__(self, socket: Path, *, timeout: float = 600.0) -> None:
        self.socket = socket
        transport = httpx.HTTPTransport(uds=str(socket))
        self._http = httpx.Client(transport=transport, base_url=_BASE, timeout=timeout)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _request(self, method: str, url: str, **kw: Any) -> Any:
        try:
            return _check(self._http.request(method, url, **kw))
        except (httpx.ConnectError, FileNotFoundError) as exc:
            raise _not_running(self.socket, exc) from exc

    def health(self) -> dict[str, Any]:
        result: dict[str, Any] = self._request("GET", "/health")
        return result

    def models(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._request("GET", "/v1/models")["data"]
        return result

    def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = self._request("GET", "/stats")
        return result

    def chat(self, messages: list[dict[str, Any]], **params: Any) -> dict[str, Any]:
        """One non-streamed chat completion (``params`` as in the OpenAI API)."""
        result: dict[str, Any] = self._request(
            "POST", "/v1/chat/completions", json={"messages": messages, **params}
        )
        return result

    def chat_stream(
        self, messages: list[dict[str, Any]], **params: Any
    ) -> Iterator[dict[str, Any]]:
        """Streamed chat completion chunks, as dicts, until ``[DONE]``."""
        body = {"messages": messages, **params, "stream": True}
        try:
            with self._http.stream("POST", "/v1/chat/completions", json=body) as response:
                if response.status_code >= 400:
                    response.read()
                    _check(response)
                yield from _events(response.iter_lines())
        except (httpx.ConnectError, FileNotFoundError) as exc:
            raise _not_running(self.socket, exc) from exc


class AsyncClient:
    """The same API for asyncio callers (the TUI)."""

    def __init__(self, socket: Path, *, timeout: float = 600.0) -> None:
        self.socket = socket
        transport = httpx.AsyncHTTPTransport(uds=str(socket))
        self._http = httpx.AsyncClient(transport=transport, base_url=_BASE, timeout=timeout)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _request(self, method: str, url: str, **kw: Any) -> Any:
        try:
            return _check(await self._http.request(method, url, **kw))
        except (httpx.ConnectError, FileNotFoundError) as exc:
            raise _not_running(self.socket, exc) from exc

    async def health(self) -> dict[str, Any]:
        result: dict[str, Any] = await self._request("GET", "/health")
        return result

    async def chat(self, messages: list[dict[str, Any]], **params: Any) -> dict[str, Any]:
        result: dict[str, Any] = await self._request(
            "POST", "/v1/chat/completions", json={"messages": messages, **params}
        )
        return result

    async def chat_stream(
        self, messages: list[dict[str, Any]], **params: Any
    ) -> AsyncIterator[dict[str, Any]]:
        body = {"messages": messages, **params, "stream": True}
        try:
            async with self._http.stream("POST", "/v1/chat/completions", json=body) as response:
                if response.status_code >= 400:
                    await response.aread()
                    _check(response)
                async for line in response.aiter_lines():
                    for event in _events(iter([line])):
                        yield event
                    if line == "data: [DONE]":
                        return
        except (httpx.ConnectError, FileNotFoundError) as exc:
            raise _not_running(self.socket, exc) from exc
