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
        errors.Unauthorized,
        errors.PermissionDenied,
        errors.ShuttingDown,
    )
}


def error_from_wire(status: int, body: Any) -> errors.EdgeInferError:
    """Rebuild the daemon's exception from an OpenAI error body."""
    err = body.get("error", {}) if isinstance(body, dict) else {}
    cls = _CODES.get(str(err.get("code")), errors.EdgeInferError)
    message = str(err.get("message") or f"daemon answered HTTP {status}")
    exc = cls(message, param=err.get("param")) if cls is not errors.Busy else errors.Busy(message)
    return exc


def _not_running(path: Path | str, exc: Exception) -> errors.DaemonError:
    return errors.DaemonError(
        f"no edgeinfer daemon answers on {path} ({exc}); start one with `edgeinfer serve`"
    )


def _lost(path: Path | str, exc: Exception) -> errors.DaemonError:
    """A connection that broke mid-response (the daemon stopped or restarted): long-lived
    callers such as the TUI reconnect on any ``DaemonError`` instead of knowing httpx."""
    if isinstance(exc, httpx.ConnectError | FileNotFoundError):
        return _not_running(path, exc)
    return errors.DaemonError(f"lost the connection to the daemon on {path} ({exc!r})")


def _connection(
    socket: Path | None, base_url: str | None, token: str | None
) -> tuple[Path | str, dict[str, Any]]:
    """Where to connect, and the httpx options: the Unix socket, or a daemon's TCP listener
    (``base_url``) with its bearer token; the caller adds the (sync or async) transport."""
    if base_url is None and socket is None:
        raise ValueError("pass the daemon's socket path, or base_url (and token) for TCP")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return (base_url or socket or ""), {"base_url": base_url or _BASE, "headers": headers}


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
    """Blocking client. ``Client(socket_path)``, or ``Client(base_url=..., token=...)`` for a
    daemon's TCP listener; use as a context manager."""

    def __init__(
        self,
        socket: Path | None = None,
        *,
        base_url: str | None = None,
        token: str | None = None,
        timeout: float = 600.0,
    ) -> None:
        self.socket, options = _connection(socket, base_url, token)
        transport = httpx.HTTPTransport(uds=str(socket)) if base_url is None else None
        self._http = httpx.Client(transport=transport, timeout=timeout, **options)

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

    def __init__(
        self,
        socket: Path | None = None,
        *,
        base_url: str | None = None,
        token: str | None = None,
        timeout: float = 600.0,
    ) -> None:
        self.socket, options = _connection(socket, base_url, token)
        transport = httpx.AsyncHTTPTransport(uds=str(socket)) if base_url is None else None
        self._http = httpx.AsyncClient(transport=transport, timeout=timeout, **options)

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

    async def models(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = (await self._request("GET", "/v1/models"))["data"]
        return result

    async def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = await self._request("GET", "/stats")
        return result

    async def chat_stream(
        self, messages: list[dict[str, Any]], **params: Any
    ) -> AsyncIterator[dict[str, Any]]:
        """Streamed chunks until ``[DONE]``; the last content-free chunk carries ``usage`` and
        the ``edgeinfer`` report. Closing the iterator early hangs up, which frees the slot."""
        body = {"messages": messages, **params, "stream": True}
        async for event in self._sse("POST", "/v1/chat/completions", json=body):
            yield event

    async def stream_stats(self, interval: float = 1.0) -> AsyncIterator[dict[str, Any]]:
        """The daemon's live ``/stats`` feed: one snapshot (plus its ``time``) per ``interval``
        seconds, until the daemon stops (the iterator then ends) or the connection breaks
        (``DaemonError``)."""
        async for event in self._sse("GET", "/stats/stream", params={"interval": interval}):
            yield event

    async def _sse(self, method: str, url: str, **kw: Any) -> AsyncIterator[dict[str, Any]]:
        try:
            async with self._http.stream(method, url, **kw) as response:
                if response.status_code >= 400:
                    await response.aread()
                    _check(response)
                async for line in response.aiter_lines():
                    for event in _events(iter([line])):
                        yield event
                    if line == "data: [DONE]":
                        return
        except (httpx.TransportError, FileNotFoundError) as exc:
            raise _lost(self.socket, exc) from exc
