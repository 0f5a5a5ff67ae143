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
"""

from __future__ import annotations

import asyncio
import hmac
import os
import socket
import stat
import struct
from asyncio.trsock import TransportSocket
from collections.abc import Collection
from pathlib import Path
from typing import Any

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from edgeinfer.errors import DaemonError, EdgeInferError, PermissionDenied, Unauthorized

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


class PeerCredProtocol(H11Protocol):
    """uvicorn's h11 protocol, reading SO_PEERCRED once when a connection is made."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        sock = transport.get_extra_info("socket")  # asyncio's TransportSocket wrapper
        peer = peer_credentials(sock) if isinstance(sock, TransportSocket) else None
        if peer is not None:
            self.app = _WithPeer(self.app, peer)


def is_unix(scope: Scope) -> bool:
    """Whether the request came over a Unix socket: ASGI gives those a ``server`` of
    ``(path, None)``. Anything else, unknown included, counts as network (fails closed)."""
    server = scope.get("server")
    return isinstance(server, list | tuple) and len(server) == 2 and server[1] is None


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
        self, app: ASGIApp, *, token: str | None, allow_uids: Collection[int] | None
    ) -> None:
        self.app = app
        self._token = token.encode() if token is not None else None
        self._uids = frozenset(allow_uids) if allow_uids is not None else None

    def refusal(self, scope: Scope) -> EdgeInferError | None:
        """Why this request may not proceed, or ``None``."""
        if is_unix(scope):
            if self._uids is None:
                return None
            peer: dict[str, Any] = (scope.get("extensions") or {}).get(PEER_KEY) or {}
            if peer.get("uid") in self._uids:
                return None
            return PermissionDenied(f"uid {peer.get('uid', '?')} is not in [server] allow_uids")
        if self._token is not None and bearer_ok(scope.get("headers") or [], self._token):
            return None
        return Unauthorized("missing or wrong bearer token (Authorization: Bearer <token>)")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            refused = self.refusal(scope)
            if refused is not None:
                headers = (
                    {"WWW-Authenticate": "Bearer"} if isinstance(refused, Unauthorized) else {}
                )
                response = JSONResponse(
                    refused.to_openai(), status_code=refused.status, headers=headers
                )
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
