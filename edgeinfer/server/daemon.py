"""The daemon's listeners and lifecycle.

We bind the Unix socket ourselves rather than through uvicorn's ``uds=``, which chmods the
socket to 0666: ours is created under a 0177 umask (so it is never world-accessible, not even
for an instant), in a 0700 directory. A stale socket file left by a crashed daemon is replaced;
a live daemon answering on the path makes us refuse to start. Under systemd socket activation
(``LISTEN_PID``/``LISTEN_FDS``) the sockets come ready-made from fd 3 on and are left in place.
An optional TCP listener serves the same app; :mod:`edgeinfer.server.auth` makes its requests
carry the bearer token.

SIGTERM/SIGINT start a drain: the listeners close, in-flight requests run on until
``drain_seconds``, then :class:`~edgeinfer.server.drain.Drain` ends the rest with a
``shutting_down`` error; the app's shutdown stops the models, our socket file is removed and the
process exits 0. A second SIGINT stops waiting at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import logging
import math
import os
import signal
import socket
import stat
import threading
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import uvicorn
from fastapi import FastAPI

from edgeinfer.config.schema import ServerSettings
from edgeinfer.errors import DaemonError
from edgeinfer.paths import check_socket_path, make_private_dirs
from edgeinfer.server.auth import AccessGuard, FailedLogins, read_token, tcp_limited
from edgeinfer.server.drain import Drain

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
    make_private_dirs(path.parent)  # an existing folder (maybe /tmp, given by --socket) stays
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        mode = None
    if mode is not None:
        if not (stat.S_ISSOCK(mode) or stat.S_ISLNK(mode)):
            raise DaemonError(
                f"{path} exists and is not a socket; remove it or choose another --socket path"
            )
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


def parse_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:8765`` for IPv6) as given to ``--tcp`` or ``[server] tcp``."""
    host, sep, port = text.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise DaemonError(f"TCP address must be HOST:PORT (e.g. 127.0.0.1:8765), got {text!r}")
    return host, int(port)


def bind_tcp(host: str, port: int) -> socket.socket:
    """A listening TCP socket; a busy port or unknown host is one readable error."""
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as exc:
        raise DaemonError(f"cannot resolve TCP host {host!r}: {exc.strerror}") from exc
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
    except OSError as exc:
        sock.close()
        raise DaemonError(f"cannot listen on {host}:{port}: {exc.strerror}") from exc
    sock.listen(256)
    sock.setblocking(False)
    return sock


_SD_LISTEN_FDS_START = 3


def systemd_sockets(
    env: dict[str, str] | None = None, pid: int | None = None
) -> list[socket.socket]:
    """Sockets passed by systemd socket activation (sd_listen_fds): fd 3 onward when
    ``LISTEN_PID`` is this process. They stop being inherited by our children (pip)."""
    env = dict(os.environ) if env is None else env
    if env.get("LISTEN_PID") != str(os.getpid() if pid is None else pid):
        return []
    count = env.get("LISTEN_FDS", "")
    if not count.isdigit():
        return []
    sockets = []
    for fd in range(_SD_LISTEN_FDS_START, _SD_LISTEN_FDS_START + int(count)):
        os.set_inheritable(fd, False)
        sock = socket.socket(fileno=fd)
        sock.setblocking(False)
        sockets.append(sock)
    return sockets


@dataclass(frozen=True)
class ServeOptions:
    """How the daemon listens and whom it lets in (``[server]`` in models.toml + serve flags)."""

    tcp: tuple[str, int] | None = None
    token: str | None = None
    allow_uids: Collection[int] | None = None
    drain_seconds: float = 30.0
    header_timeout_s: float = 10.0
    max_tcp_connections: int = 64
    auth_failures_per_minute: int = 10


def check_options(options: ServeOptions, activated: Sequence[socket.socket] = ()) -> None:
    """Refuse, before any model loads, a network listener that would have no token."""
    network = options.tcp is not None or any(s.family != socket.AF_UNIX for s in activated)
    if network and options.token is None:
        raise DaemonError(
            "TCP needs a bearer token: set EDGEINFER_TOKEN (or [server] token_env) or"
            " [server] token_file / --token-file"
        )


def serve_options(
    settings: ServerSettings,
    *,
    tcp: str | None = None,
    token_file: str | None = None,
    activated: Sequence[socket.socket] = (),
) -> ServeOptions:
    """``[server]`` overridden by ``serve --tcp/--token-file``. The token is read only when a
    network listener needs it, and its absence is refused here, before any model loads."""
    address = tcp or settings.tcp
    network = address is not None or any(s.family != socket.AF_UNIX for s in activated)
    file = token_file or settings.token_file
    token = None
    if network:
        token = read_token(settings.token_env, Path(file).expanduser() if file else None)
    options = ServeOptions(
        tcp=parse_address(address) if address is not None else None,
        token=token,
        allow_uids=frozenset(settings.allow_uids) if settings.allow_uids is not None else None,
        drain_seconds=settings.drain_seconds,
        header_timeout_s=settings.header_timeout_s,
        max_tcp_connections=settings.max_tcp_connections,
        auth_failures_per_minute=settings.auth_failures_per_minute,
    )
    check_options(options, activated)
    return options


def describe(sock: socket.socket) -> str:
    """Where a listener listens, for the log."""
    name = sock.getsockname()
    if sock.family == socket.AF_UNIX:
        return str(name) or "an unnamed socket"
    host, port = name[0], name[1]
    scope = "loopback" if ipaddress.ip_address(host).is_loopback else "NETWORK-REACHABLE"
    return f"http://{host}:{port} (TCP, {scope}, bearer token required)"


class _Server(uvicorn.Server):
    """uvicorn's server with our drain, a clean exit status and our socket file removed.

    uvicorn re-raises SIGTERM/SIGINT once it has drained, which ends the process "killed by
    signal" before any ``finally`` of ours; we restore the handlers without re-raising, so a
    drained daemon exits 0 and removes its socket file here, at the end of the shutdown.
    """

    def __init__(
        self, config: uvicorn.Config, drain: Drain, drain_seconds: float, path: Path | None
    ) -> None:
        super().__init__(config)
        self._drain = drain
        self._drain_seconds = drain_seconds
        self._path = path
        self._inode = os.stat(path).st_ino if path is not None else None

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        signals = (signal.SIGINT, signal.SIGTERM)
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in signals}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self._drain.begin()
        log.info(
            "draining: %d request(s) in flight, deadline %.1f s",
            self._drain.in_flight,
            self._drain_seconds,
        )
        timer = asyncio.get_running_loop().call_later(self._drain_seconds, self._expire)
        try:
            await super().shutdown(sockets)
        finally:
            timer.cancel()
            self.remove_socket()
        log.info("edgeinfer stopped")

    def _expire(self) -> None:
        cut = self._drain.expire()
        if cut:
            log.warning("drain deadline passed: ended %d request(s) with shutting_down", cut)

    def remove_socket(self) -> None:
        if self._path is None:  # systemd's socket: it outlives us
            return
        with contextlib.suppress(FileNotFoundError):
            if os.stat(self._path).st_ino == self._inode:  # never remove a successor's socket
                self._path.unlink()


def _listeners(
    path: Path, options: ServeOptions, activated: Sequence[socket.socket]
) -> list[socket.socket]:
    """TCP first (a busy port must not leave a socket file behind), then the Unix socket."""
    tcp = [bind_tcp(*options.tcp)] if options.tcp is not None else []
    try:
        unix = [*activated] if activated else [bind_socket(path)]
    except BaseException:
        for sock in tcp:
            sock.close()
        raise
    return unix + tcp


def run(
    app: FastAPI,
    path: Path,
    options: ServeOptions | None = None,
    *,
    activated: Sequence[socket.socket] = (),
) -> None:
    """Serve ``app`` until SIGINT/SIGTERM, then drain; ``activated`` sockets (systemd) replace
    binding ``path``. Our socket file is always removed."""
    options = options or ServeOptions()
    check_options(options, activated)
    sockets = _listeners(path, options, activated)
    drain = Drain(app)
    config = uvicorn.Config(
        AccessGuard(
            drain,
            token=options.token,
            allow_uids=options.allow_uids,
            failures=FailedLogins(options.auth_failures_per_minute),
        ),
        interface="asgi3",
        http=tcp_limited(options.header_timeout_s, options.max_tcp_connections),
        ws="none",
        proxy_headers=False,  # a TCP client must not name its own address
        log_config=None,
        access_log=False,
        # uvicorn's own deadline is only a backstop: Drain ends requests at drain_seconds.
        timeout_graceful_shutdown=math.ceil(options.drain_seconds) + 10,
        lifespan="on",
    )
    server = _Server(config, drain, options.drain_seconds, None if activated else path)
    for sock in sockets:
        log.info("edgeinfer listening on %s", describe(sock))
    try:
        server.run(sockets=sockets)
    finally:
        for sock in sockets:
            sock.close()
        server.remove_socket()
