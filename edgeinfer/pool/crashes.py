"""What a runner process does after its child dies: restart it, how soon, with what, or give up.

:class:`CrashPolicy` keeps one :class:`~edgeinfer.pool.process.RunnerProcess`'s recent crashes
and is called on its supervisor thread when a child has died:

- the error the requests it held get (``model_crashed``: the signal, the last lines of the
  child's stderr), handed to the runner's ``settle`` before anything else is decided;
- the restart's delay: 0.5 s, doubling with each crash within five minutes; the third leaves the
  model in ``error`` until a reload or ``POST /admin/models/NAME/load``;
- a SIGILL (or SIGSEGV, SIGBUS) while llama.cpp's extra buffer types are on and
  ``extra_buffers = "auto"`` records the verdict "off" (``engine/extra_buffers.py``) and
  restarts without them at once.
"""

from __future__ import annotations

import dataclasses
import logging
import signal
import time
from collections import deque
from collections.abc import Callable, Iterable
from pathlib import Path

from edgeinfer.engine.base import EngineParams
from edgeinfer.errors import ModelCrashed
from edgeinfer.pool.channel import crash_lines, describe_exit

log = logging.getLogger("edgeinfer.runner")

CRASH_LIMIT = 3  # crashes within CRASH_WINDOW_S that leave the model in error
CRASH_WINDOW_S = 300.0
BACKOFF_S = 0.5  # before the first restart; doubles with each recent crash
# How llama.cpp's extra buffer types die on a CPU they do not suit: an unsupported instruction
# (SIGILL), or, as on a 2-core Xeon with AMX in a VM, a fault in the AMX tile code (SIGSEGV).
_EXTRA_BUFFER_DEATHS = {signal.SIGILL, signal.SIGSEGV, signal.SIGBUS}


class CrashPolicy:
    """One runner process's crashes so far, and the restart each one leads to."""

    def __init__(
        self,
        name: str,
        path: Path,
        extra_buffers: str,
        crashed: Callable[[Path, str], None],
    ) -> None:
        """``extra_buffers`` is the model's configured setting; ``crashed`` records the verdict
        that extra buffers killed the runner (``ProcessFactory.crashed``)."""
        self.name = name
        self.path = path
        self._extra_buffers = extra_buffers
        self._crashed = crashed
        self._crashes: deque[float] = deque()
        self.restarts = 0
        self.last_crash: str | None = None

    def after_crash(
        self,
        code: int,
        params: EngineParams,
        tail: Iterable[str],
        settle: Callable[[ModelCrashed], int],
        pid: int,
    ) -> tuple[EngineParams, float] | ModelCrashed:
        """Record the death of the child ``pid`` (exit ``code``, last output ``tail``), have
        ``settle`` fail or keep the requests it held; the params and delay of the restart, or
        the model's error (too many crashes) for the runner to give up with."""
        how = describe_exit(code)
        lines = crash_lines(tail)
        now = time.monotonic()
        self._crashes.append(now)
        while self._crashes and now - self._crashes[0] > CRASH_WINDOW_S:
            self._crashes.popleft()
        self.last_crash = f"{how} at {time.strftime('%H:%M:%S')}"
        message = f"model {self.name!r} crashed ({how}) and is restarting"
        if lines:
            message += f"; the runner's last output: {lines}"
        lost = settle(ModelCrashed(message))
        delay = BACKOFF_S * 2 ** (len(self._crashes) - 1)
        if -code in _EXTRA_BUFFER_DEATHS and params.extra_buffers == "on":
            if self._extra_buffers == "auto":
                reason = f"{how} in the runner process with them on"
                self._crashed(self.path, reason)
                log.warning(
                    "model %s: llama.cpp's extra buffer types (AMX, repacked weights) were on"
                    " when its runner died of %s; restarting with extra_buffers off, and"
                    " remembering it for this CPU",
                    self.name,
                    how,
                )
                params = dataclasses.replace(params, extra_buffers="off")
                delay = 0.0
        if delay and len(self._crashes) >= CRASH_LIMIT:
            return ModelCrashed(
                f"model {self.name!r} crashed {len(self._crashes)} times in"
                f" {CRASH_WINDOW_S / 60:.0f} minutes (last: {how}); reload the config or"
                f" POST /admin/models/{self.name}/load to try again"
            )
        self.restarts += 1
        log.error(
            "model %s: runner process (pid %d) died with %s; %d request(s) lost,"
            " restarting in %.1f s",
            self.name,
            pid,
            how,
            lost,
            delay,
        )
        return params, delay
