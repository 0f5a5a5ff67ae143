"""How the cache opens its SQLite file: the driver, sqlite-vec, the pragmas, per-thread readers.

:class:`~edgeinfer.cache.store.CacheStore` opens every connection through :func:`connect`: the
writer thread's one writing connection (writer.py) and, through :class:`Readers`, one read-only
connection per thread that looks something up. Tests and the CLI's import open their own with
:func:`connect` too, so every connection sees the same extension and journal settings.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import sqlite_vec

READER_MMAP_BYTES = 1 << 30


def sqlite_driver() -> ModuleType:
    """The SQLite module: the standard library when it can load extensions, else sqlean.py.

    Many Pythons (this project's CI, most macOS builds) compile ``sqlite3`` without
    ``enable_load_extension``; sqlean.py is a drop-in module with its own SQLite that can.
    """
    if hasattr(sqlite3.Connection, "enable_load_extension"):
        return sqlite3
    import sqlean

    return sqlean  # type: ignore[no-any-return]


def connect(path: Path, driver: ModuleType | None = None) -> sqlite3.Connection:
    """A connection with sqlite-vec loaded, autocommit (transactions are explicit), WAL."""
    module = driver or sqlite_driver()
    conn: sqlite3.Connection = module.connect(
        str(path), timeout=10.0, isolation_level=None, check_same_thread=False
    )
    conn.enable_load_extension(True)
    sqlite_vec.load(conn)
    conn.enable_load_extension(False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA foreign_keys=ON")
    return conn


def damaged(exc: BaseException) -> bool:
    """SQLITE_CORRUPT or SQLITE_NOTADB: the file is not, or no longer, a database."""
    code = getattr(exc, "sqlite_errorcode", None)
    return isinstance(code, int) and (code & 0xFF) in (11, 26)


class Readers:
    """One read-only connection per calling thread (SQLite connections must not be shared).

    The store's lookups run on worker threads (``asyncio.to_thread``); each keeps the connection
    it opened until :meth:`close`, which the store calls once the writer has stopped.

    Args:
        connect: opens a connection to the cache file (:func:`connect` over the store's path).
    """

    def __init__(self, connect: Callable[[], sqlite3.Connection]) -> None:
        self._connect = connect
        self._local = threading.local()
        self._open: list[sqlite3.Connection] = []
        self._lock = threading.Lock()

    def mine(self) -> sqlite3.Connection | None:
        """This thread's connection, or None before it opened one."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        return conn

    def open(self) -> sqlite3.Connection:
        """Open this thread's connection."""
        conn = self._connect()
        conn.execute("PRAGMA query_only=ON")
        # the KNN reads every sign-bit chunk per query: map the file instead of copying pages
        conn.execute(f"PRAGMA mmap_size={READER_MMAP_BYTES}")
        self._local.conn = conn
        with self._lock:
            self._open.append(conn)
        return conn

    def close(self) -> None:
        """Close every thread's connection; later reads open new ones."""
        with self._lock:
            readers, self._open = self._open, []
        for conn in readers:
            conn.close()
        self._local = threading.local()
