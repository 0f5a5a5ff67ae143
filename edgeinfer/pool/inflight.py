"""The requests a runner process has taken, by id, and the channel they go to its child over.

:class:`InFlight` is :class:`~edgeinfer.pool.process.RunnerProcess`'s table of requests between
``submit`` and their last event, guarded by the runner's lock (its ``Admission`` condition,
notified whenever a request leaves): the event loop adds and cancels, the supervisor thread
routes the child's events and handles a child that loaded or died. A request goes to the child
once one has loaded; after a crash those that streamed text, or were retried once already,
fail, and the others are sent again to the restarted child. Whoever gets a request back from
here emits its events, outside the lock.
"""

from __future__ import annotations

import itertools
import threading
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from edgeinfer.core.values import Delta
from edgeinfer.pool.events import GenRequest


@dataclass(eq=False)
class _Pending:
    req: GenRequest
    sent: bool = False
    streamed: bool = False
    retried: bool = False


class InFlight:
    """Requests by id, in submit order (the oldest hold the child's slots)."""

    def __init__(self, cond: threading.Condition) -> None:
        self._cond = cond
        self._pending: dict[int, _Pending] = {}
        self._ids = itertools.count(1)
        self.conn: Connection | None = None  # set while a child is up and has loaded

    def __len__(self) -> int:
        return len(self._pending)

    def waiting(self, slots: int) -> list[GenRequest]:
        """The requests past the child's ``slots``: those waiting for one (caller holds the
        lock)."""
        return [p.req for p in list(self._pending.values())[slots:]]

    def add(self, req: GenRequest) -> int:
        """Take ``req``, sent now if a child is up; its id (caller holds the lock)."""
        rid = next(self._ids)
        pending = _Pending(req)
        self._pending[rid] = pending
        if self.conn is not None:
            self._send_submit(rid, pending)
        return rid

    def _send_submit(self, rid: int, pending: _Pending) -> None:
        """Hand one request to the child (caller holds the lock)."""
        req = pending.req
        fields = {
            "prompt": req.prompt,
            "sampling": req.sampling,
            "max_tokens": req.max_tokens,
            "stop": req.stop,
            "logprobs": req.logprobs,
            "logprob_tokens": req.logprob_tokens,
            "deadline": req.deadline,
            "whole": req.whole,
            "submitted": req.submitted,
        }
        pending.sent = True
        self.send(("submit", rid, fields))

    def send(self, msg: Any) -> None:
        conn = self.conn
        if conn is None:
            return
        try:
            conn.send(msg)
        except OSError:
            pass  # the child died: the supervisor sees the channel close and handles it

    def cancel(self, rid: int) -> GenRequest | None:
        """Forward a cancel to the child; a request never sent is removed and returned: it
        ends here."""
        with self._cond:
            pending = self._pending.get(rid)
            if pending is None:
                return None
            if pending.sent:
                self.send(("cancel", rid))
                return None
            del self._pending[rid]  # never reached the child: it ends here
            self._cond.notify_all()
        return pending.req

    def attach(self, conn: Connection) -> list[GenRequest]:
        """A child has loaded: send it every request not sent yet; returns (and removes) those
        cancelled meanwhile."""
        cancelled = []
        with self._cond:
            self.conn = conn
            for rid, pending in list(self._pending.items()):
                if pending.sent:
                    continue
                if pending.req.cancelled.is_set():  # hung up while the runner restarted
                    del self._pending[rid]
                    cancelled.append(pending.req)
                else:
                    self._send_submit(rid, pending)
        return cancelled

    def route(self, rid: int, event: Any) -> GenRequest | None:
        """The request the child's ``event`` is for; its last event removes it."""
        with self._cond:
            pending = self._pending.get(rid)
            if pending is None:
                return None
            if isinstance(event, Delta):
                pending.streamed = True
            else:
                del self._pending[rid]
                self._cond.notify_all()
        return pending.req

    def no_retry(self, rids: list[int]) -> None:
        """The requests that were in the step the runner's watchdog ended: after the crash
        they fail instead of being sent once more (they would hang the next runner too)."""
        with self._cond:
            for rid in rids:
                pending = self._pending.get(rid)
                if pending is not None:
                    pending.retried = True

    def settle(self) -> list[GenRequest]:
        """After a crash: requests that streamed text, or were already retried once, are
        removed and returned (they fail); the others wait for the restarted runner."""
        failed: list[GenRequest] = []
        with self._cond:
            for rid, pending in list(self._pending.items()):
                if not pending.sent:
                    continue
                if pending.streamed or pending.retried:
                    del self._pending[rid]
                    failed.append(pending.req)
                else:
                    pending.sent, pending.retried = False, True
            self._cond.notify_all()
        return failed

    def clear(self) -> list[GenRequest]:
        """Remove and return every request (the runner is stopping or in error)."""
        with self._cond:
            pending = list(self._pending.values())
            self._pending.clear()
            self._cond.notify_all()
        return [p.req for p in pending]
