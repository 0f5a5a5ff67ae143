"""The daemon's socket and lifecycle.

We bind the Unix socket ourselves rather than through uvicorn's ``uds=``, which chmods the
socket to 0666: ours is created under a 0177 umask (so it is never world-accessible, not even
for an instant), in a 0700 directory. A stale socket file left by a crashed daemon is replaced;
a live daemon answering on the path makes us refuse to start. uvicorn owns SIGINT/SIGTERM:
it stops accepting, drains in-flight requests up to a deadline, then runs the app's shutdown.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
from pathlib import Path

import uvicorn
from fastapi import FastAPI

from edgeinfer.errors import DaemonError
from edgeinfer.paths import check_socket_path, ensure_private_dir

log = logging.getLogger("edgeinfer.daemon")


def accepts(path: Path) -> bool:
    """Whether anything accepts connections on the Unix socket ``path`` (tests and scripts
    poll this before talking HTTP: httpx leaks its socket when a Unix connect is refused)."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
        return True
    except OSError:
        return False
    finally:
        probe.close()


def _is_live(path: Path) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(str(path))
        return True
    except OSError as exc:
        if exc.errno in (errno.ECONNREFUSED, errno.ENOENT):
            return False
        raise DaemonError(f"cannot probe existing socket {path}: {exc.strerror}") from exc
    finally:
        probe.close()


def refuse_if_live(path: Path) -> None:
    """Raise when a daemon already answers on ``path`` (checked before loading any model)."""
    check_socket_path(path)
    if path.exists() and _is_live(path):
        raise DaemonError(f"another edgeinfer daemon is already serving on {path}")


def bind_socket(path: Path) -> socket.socket:
    """An owner-only listening socket at ``path``; refuses if a daemon already answers there."""
    refuse_if_live(path)
    ensure_private_dir(path.parent)
    if path.exists() or path.is_symlink():
        log.info("replacing stale socket %s", path)
        path.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        sock.bind(str(path))
    except OSError as exc:
        sock.close()
        raise DaemonError(f"cannot bind {path}: {exc.strerror}") from exc
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    sock.listen(256)
    sock.setblocking(False)
    return sock


class _Server(uvicorn.Server):
    """uvicorn re-raises SIGTERM/SIGINT once it has drained, which ends the process before any
    ``finally`` of ours: the socket file is removed here, at the end of the graceful shutdown."""

    def __init__(self, config: uvicorn.Config, path: Path) -> None:
        super().__init__(config)
        self._path = path
        self._inode = os.stat(path).st_ino

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        try:
            await super().shutdown(sockets)
        finally:
            self.remove_socket()

    def remove_socket(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            if os.stat(self._path).st_ino == self._inode:  # never remove a successor's socket
                self._path.unlink()


def run(app: FastAPI, path: Path, *, graceful_timeout: int = 30) -> None:
    """Serve ``app`` on the Unix socket until SIGINT/SIGTERM; always remove our socket file."""
    sock = bind_socket(path)
    config = uvicorn.Config(
        app,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=graceful_timeout,
        lifespan="on",
    )
    server = _Server(config, path)
    log.info("edgeinfer listening on %s", path)
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
        server.remove_socket()
