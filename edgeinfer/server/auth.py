"""Who may talk to the daemon: the bearer token on TCP, the peer uid allowlist on the socket.

The Unix socket is owner-only (0600 in a 0700 directory), so by default the kernel already
decides. Two opt-ins widen or narrow that:

* a TCP listener (``serve --tcp``), where every request must carry ``Authorization: Bearer``
  with the token, compared in constant time; the socket's clients need no token;
* ``allow_uids``, checked against the peer's credentials (``SO_PEERCRED``) of each socket
  connection, for sockets opened to a group (systemd ``SocketMode=0660``).

uvicorn's ASGI scope carries no transport, so :class:`PeerCredProtocol` (the HTTP protocol the
daemon hands uvicorn) reads the credentials once per connection and puts the uid in the scope's
``extensions``; :class:`AccessGuard` decides from the scope alone, which keeps it testable.

A TCP peer has not proven anything when it connects, so what it can hold is bounded (the
owner-only socket is not): :func:`tcp_limited` gives the protocol a cap on open TCP connections
(one more is answered 503 and closed, so a flood cannot use up the file descriptors the Unix
socket needs too) and a deadline for each request's headers (a slow or silent peer is closed);
:class:`AccessGuard` makes an address that sent too many wrong tokens wait (429).
"""

from __future__ import annotations

import asyncio
import hmac
import os
import socket
import stat
import struct
import time
from asyncio.trsock import TransportSocket
from collections import OrderedDict, deque
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from edgeinfer.errors import (
    Busy,
    DaemonError,
    EdgeInferError,
    PermissionDenied,
    RateLimited,
    Unauthorized,
)

PEER_KEY = "edgeinfer.peer"
"""``scope["extensions"][PEER_KEY]`` holds ``{"uid", "gid", "pid"}`` of a Unix-socket peer."""

MIN_TOKEN_CHARS = 16
_UCRED = struct.Struct("3i")


def peer_credentials(sock: socket.socket | TransportSocket) -> dict[str, int] | None:
    """The ``pid, uid, gid`` the kernel recorded when the peer connected (Linux SO_PEERCRED);
    ``None`` for non-Unix sockets or where the option does not exist."""
    if sock.family != socket.AF_UNIX or not hasattr(socket, "SO_PEERCRED"):
        return None
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    except OSError:
        return None
    pid, uid, gid = _UCRED.unpack(raw)
    return {"pid": pid, "uid": uid, "gid": gid}


class _WithPeer:
    """Adds one connection's peer credentials to every request scope it carries."""

    def __init__(self, app: ASGIApp, peer: dict[str, int]) -> None:
        self.app = app
        self.peer = peer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope["extensions"] = {**(scope.get("extensions") or {}), PEER_KEY: self.peer}
        await self.app(scope, receive, send)


_FULL = (
    b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Type: application/json\r\n"
    b'Connection: close\r\nContent-Length: 106\r\n\r\n{"error": {"message": "too many TCP '
    b'connections", "type": "server_error", "param": null, "code": "busy"}}'
)

_MALFORMED_BODY = (
    b'{"error": {"message": "malformed HTTP request (request line, headers or body framing); '
    b'the connection is closed", "type": "invalid_request_error", "param": null, "code": '
    b'"invalid_request_error"}}'
)
_MALFORMED = (
    b"HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nConnection: close\r\n"
    + f"Content-Length: {len(_MALFORMED_BODY)}\r\n\r\n".encode()
    + _MALFORMED_BODY
)


class PeerCredProtocol(H11Protocol):
    """uvicorn's h11 protocol, reading SO_PEERCRED once when a connection is made, and bounding
    TCP peers (see the module docstring; the limits are class attributes, :func:`tcp_limited`
    sets them)."""

    header_timeout_s: float | None = None
    max_tcp_connections: int | None = None
    _tcp_open: set[PeerCredProtocol]

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._header_timer: asyncio.TimerHandle | None = None
        sock = transport.get_extra_info("socket")  # asyncio's TransportSocket wrapper
        peer = peer_credentials(sock) if isinstance(sock, TransportSocket) else None
        if peer is not None:
            self.app = _WithPeer(self.app, peer)
        self._tcp = not (isinstance(sock, TransportSocket) and sock.family == socket.AF_UNIX)
        if not self._tcp:
            return
        cap = self.max_tcp_connections
        if cap is not None and len(self._tcp_open) >= cap:
            transport.write(_FULL)
            transport.close()
            return
        self._tcp_open.add(self)
        self._await_headers()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        if self._tcp:
            self._tcp_open.discard(self)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        before = self.cycle
        super().data_received(data)
        if self.cycle is not before:  # a whole request head arrived
            self._cancel_header_timer()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self._tcp and (self.cycle is None or self.cycle.response_complete):
            self._await_headers()  # uvicorn's keep-alive timer stops at the first byte sent

    def send_400_response(self, msg: str) -> None:
        """A request h11 cannot parse (a bad Content-Length or chunk size, an oversized
        header): OpenAI error JSON like every other answer, where uvicorn writes plain text.
        If an answer to it has begun (a 413 before the body ended), only the close remains."""
        if self.cycle is None or not self.cycle.response_started:
            self.transport.write(_MALFORMED)
        self.transport.close()

    def _await_headers(self) -> None:
        self._cancel_header_timer()
        if self.header_timeout_s is not None and not self.transport.is_closing():
            self._header_timer = self.loop.call_later(self.header_timeout_s, self._too_slow)

    def _cancel_header_timer(self) -> None:
        timer = getattr(self, "_header_timer", None)
        if timer is not None:
            timer.cancel()
            self._header_timer = None

    def _too_slow(self) -> None:
        if (self.cycle is None or self.cycle.response_complete) and not self.transport.is_closing():
            self.transport.close()


def tcp_limited(header_timeout_s: float, max_tcp_connections: int) -> type[PeerCredProtocol]:
    """The protocol class for one daemon: its own TCP limits and its own connection count."""
    return type(
        "LimitedPeerCredProtocol",
        (PeerCredProtocol,),
        {
            "header_timeout_s": header_timeout_s,
            "max_tcp_connections": max_tcp_connections,
            "_tcp_open": set(),
        },
    )


PeerCredProtocol._tcp_open = set()


class FailedLogins:
    """Wrong bearer tokens per client address in the last minute, for :class:`AccessGuard`.
    Bounded: the least recently failing addresses are forgotten first."""

    def __init__(
        self, per_minute: int, clock: Callable[[], float] = time.monotonic, max_hosts: int = 4096
    ) -> None:
        self.per_minute = per_minute
        self._clock = clock
        self._max_hosts = max_hosts
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def wait(self, host: str) -> float:
        """Seconds ``host`` must wait before its token is checked again (0: go ahead)."""
        times = self._failures.get(host)
        if times is None:
            return 0.0
        now = self._clock()
        while times and times[0] <= now - 60.0:
            times.popleft()
        if len(times) < self.per_minute:
            return 0.0
        return times[0] + 60.0 - now

    def failed(self, host: str) -> None:
        times = self._failures.setdefault(host, deque())
        self._failures.move_to_end(host)
        times.append(self._clock())
        while len(times) > self.per_minute:
            times.popleft()
        while len(self._failures) > self._max_hosts:
            self._failures.popitem(last=False)


def is_unix(scope: Scope) -> bool:
    """Whether the request came over a Unix socket: ASGI gives those a ``server`` of
    ``(path, None)``. Anything else, unknown included, counts as network (fails closed)."""
    server = scope.get("server")
    return isinstance(server, list | tuple) and len(server) == 2 and server[1] is None


def identity(scope: Scope) -> str:
    """Who is asking, as far as the listener can tell: ``uid:N`` for a Unix-socket peer (from
    its kernel credentials), ``tcp`` for a holder of the TCP token. The response cache keeps
    each identity's entries apart."""
    if is_unix(scope):
        peer: dict[str, Any] = (scope.get("extensions") or {}).get(PEER_KEY) or {}
        return f"uid:{peer['uid']}" if "uid" in peer else "unix"
    return "tcp"


def bearer_ok(headers: list[tuple[bytes, bytes]], token: bytes) -> bool:
    """Whether the ``Authorization`` header is ``Bearer <token>``, compared in constant time."""
    given = next((v for k, v in headers if k == b"authorization"), b"")
    scheme, _, value = given.partition(b" ")
    return scheme.lower() == b"bearer" and hmac.compare_digest(value.strip(), token)


class AccessGuard:
    """ASGI middleware: refuse what the listener's rules refuse, before the app sees it.

    Args:
        token: the bearer token TCP requests must carry; ``None`` refuses every TCP request.
        allow_uids: Unix-socket peers allowed in; ``None`` leaves it to the socket's mode.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        token: str | None,
        allow_uids: Collection[int] | None,
        failures: FailedLogins | None = None,
    ) -> None:
        self.app = app
        self._token = token.encode() if token is not None else None
        self._uids = frozenset(allow_uids) if allow_uids is not None else None
        self._failures = failures or FailedLogins(per_minute=10)

    def refusal(self, scope: Scope) -> EdgeInferError | None:
        """Why this request may not proceed, or ``None``."""
        if is_unix(scope):
            if self._uids is None:
                return None
            peer: dict[str, Any] = (scope.get("extensions") or {}).get(PEER_KEY) or {}
            if peer.get("uid") in self._uids:
                return None
            return PermissionDenied(f"uid {peer.get('uid', '?')} is not in [server] allow_uids")
        client = scope.get("client")
        host = str(client[0]) if client else "?"
        wait = self._failures.wait(host)
        if wait > 0:
            return RateLimited(
                f"too many wrong bearer tokens from {host}; retry in {wait:.0f} s",
                retry_after=wait,
            )
        if self._token is not None and bearer_ok(scope.get("headers") or [], self._token):
            return None
        self._failures.failed(host)
        return Unauthorized("missing or wrong bearer token (Authorization: Bearer <token>)")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            refused = self.refusal(scope)
            if refused is not None:
                headers = (
                    {"WWW-Authenticate": "Bearer"} if isinstance(refused, Unauthorized) else {}
                )
                if isinstance(refused, Busy):
                    headers["Retry-After"] = str(max(1, round(refused.retry_after)))
                body = refused.to_wire(scope.get("path", ""))
                response = JSONResponse(body, status_code=refused.status, headers=headers)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def read_token(env_name: str, file: Path | None, env: dict[str, str] | None = None) -> str | None:
    """The TCP bearer token: from ``file`` if given (owner-only, like an ssh key), else from the
    environment variable ``env_name``; never from argv, which ``ps`` shows to every user."""
    if file is not None:
        try:
            mode = file.stat().st_mode
            text = file.read_text().strip()
        except OSError as exc:
            raise DaemonError(f"cannot read token file {file}: {exc.strerror}") from exc
        if stat.S_IMODE(mode) & 0o077:
            raise DaemonError(f"token file {file} is readable by others; chmod 600 it")
        token: str | None = text
    else:
        token = (os.environ if env is None else env).get(env_name, "").strip() or None
    if token is not None and len(token) < MIN_TOKEN_CHARS:
        raise DaemonError(f"the TCP token must have at least {MIN_TOKEN_CHARS} characters")
    return token
