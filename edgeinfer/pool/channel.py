"""The channel between the daemon and a runner process, and the process itself.

:class:`RunnerChild` (``pool/child.py``) is started by :class:`ChildProcess` as
``python -m edgeinfer.pool.child FD``: a fresh interpreter (never a fork of the threaded daemon)
in its own session (a Ctrl+C at the terminal is the daemon's to handle), with one end of a
socket pair as ``FD``. Both ends speak :class:`multiprocessing.connection.Connection`
(length-prefixed pickles; both ends are ours). The child's stdout and stderr go to the daemon's
log through a pipe, and their last lines are kept for a crash report.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from edgeinfer.core.values import Event, Failed
from edgeinfer.engine.base import EngineParams
from edgeinfer.errors import EdgeInferError

log = logging.getLogger("edgeinfer.runner")

_TAIL_LINES = 12


@dataclass(frozen=True)
class RunnerInit:
    """Everything a runner process needs, sent first over the channel."""

    name: str
    path: Path
    params: EngineParams  # extra_buffers already decided ("on" / "off")
    factory: str  # "module:function", an EngineFactory
    context_shift: bool
    n_keep: int
    prefix: dict[str, Any] | None  # PrefixStore keyword arguments
    log_level: int = logging.INFO
    step_timeout: float | None = None  # the child ends itself when one step runs longer


def error_to_wire(error: EdgeInferError) -> tuple[str, str, str | None]:
    return type(error).__name__, error.message, error.param


def error_from_wire(wire: tuple[str, str, str | None]) -> EdgeInferError:
    from edgeinfer import errors

    name, message, param = wire
    cls = getattr(errors, name, None)
    if not (isinstance(cls, type) and issubclass(cls, EdgeInferError)):
        cls = EdgeInferError
    return cls(message, param=param)


def event_to_wire(event: Event) -> Any:
    return ("failed", error_to_wire(event.error)) if isinstance(event, Failed) else event


def event_from_wire(wire: Any) -> Event:
    if isinstance(wire, tuple) and wire[0] == "failed":
        return Failed(error_from_wire(wire[1]))
    return wire  # type: ignore[no-any-return]


def describe_exit(code: int) -> str:
    """``SIGSEGV`` for a signal death, ``exit status 3`` otherwise."""
    if code < 0:
        try:
            return signal.Signals(-code).name
        except ValueError:
            return f"signal {-code}"
    return f"exit status {code}"


class ChildProcess:
    """One started runner process: its channel, its exit, and its last lines of output."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.tail: deque[str] = deque(maxlen=_TAIL_LINES)
        ours, theirs = socket.socketpair()
        read_fd, write_fd = os.pipe()
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "edgeinfer.pool.child", str(theirs.fileno())],
                pass_fds=[theirs.fileno()],
                stdin=subprocess.DEVNULL,
                stdout=write_fd,
                stderr=write_fd,
                env=child_env(),
                start_new_session=True,
            )
        except OSError:
            os.close(read_fd)
            ours.close()
            raise
        finally:
            theirs.close()
            os.close(write_fd)
        self.conn = Connection(ours.detach())
        self._reader = threading.Thread(
            target=self._read_output, args=(read_fd,), name=f"runner-{name}-out", daemon=True
        )
        self._reader.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait(self) -> int:
        """Close the channel, wait for the exit, and for the last of its output."""
        self.conn.close()
        code = self.proc.wait()
        self._reader.join(2.0)
        return code

    def _read_output(self, fd: int) -> None:
        with open(fd, "rb", buffering=0) as stream:
            for raw in iter(stream.readline, b""):
                line = raw.decode("utf-8", "replace").rstrip()
                if not line:
                    continue
                self.tail.append(line)
                level, _, rest = line.partition(" ")
                if level in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
                    log.log(logging.getLevelName(level), "[%s] %s", self.name, rest)
                else:  # native output, a faulthandler stack
                    log.warning("[%s] %s", self.name, line)


_STACK_LINES = ("File ", "Thread 0x", "Current thread", "Extension modules", "Stack (most")


def crash_lines(tail: Iterable[str], keep: int = 3) -> str:
    """The runner's last words for a client: its last lines that are not a faulthandler stack
    (those stay in the daemon's log), at most 600 characters."""
    lines = [ln.strip() for ln in tail if ln.strip() and not ln.strip().startswith(_STACK_LINES)]
    return " | ".join(lines[-keep:])[-600:]


# libgomp's workers spin this many rounds after a decode before they sleep. Its default (300,000)
# keeps an idle runner's team spinning into the next model's step when requests move between
# models: tiny ran 1.10x its alone time, switching between tiny, small and large. 30,000 measured
# 1.05x (small, large 1.00x) at the same single-model speed; 3,000 gave 1.00x but cost a lone
# tiny 9% (scripts/bench_switch.py, 2-core Xeon). A user's own OpenMP settings win.
_OMP_SPIN = "30000"


def child_env() -> dict[str, str]:
    """The daemon's environment, with its import path: the child imports the same edgeinfer."""
    env = dict(os.environ)
    if "GOMP_SPINCOUNT" not in env and "OMP_WAIT_POLICY" not in env:
        env["GOMP_SPINCOUNT"] = _OMP_SPIN
    paths = [p for p in sys.path if p]
    if paths:
        env["PYTHONPATH"] = os.pathsep.join(paths)
    return env
