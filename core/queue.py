"""First-come, first-served compute slots with positions a waiting caller can show.

One process serves many sessions that share one accelerator. Every forward pass goes
through :data:`COMPUTE_QUEUE`: at most ``slots`` computations run at once, the others
wait in arrival order. A waiting thread reports its position through the reporter it
installed with :func:`waiting_reporter` (the app shows it as "position 3 in the queue").

The queue is re-entrant per thread (a computation that calls another keeps its slot),
and a waiter that is interrupted (the user left the page, so Streamlit raised inside
the reporter) leaves the queue at once.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

Reporter = Callable[["QueueState"], None]
_local = threading.local()


@dataclass(frozen=True)
class QueueState:
    """What a waiting caller sees."""

    position: int  # 1 = next to run; 0 = the wait is over (sent once, after a wait)
    running: int  # computations holding a slot now
    waited: float  # seconds since this request arrived


class ComputeQueue:
    """At most ``slots`` holders at once; waiters are served in arrival order."""

    def __init__(self, slots: int = 1, poll: float = 0.25):
        if slots < 1:
            raise ValueError(f"a compute queue needs at least one slot, got {slots}")
        self.slots = slots
        self.poll = poll
        self._cond = threading.Condition()
        self._waiting: list[object] = []
        self._holders: dict[int, int] = {}  # thread id -> re-entry depth
        self.served = 0

    def set_slots(self, slots: int) -> None:
        if slots < 1:
            raise ValueError(f"a compute queue needs at least one slot, got {slots}")
        with self._cond:
            self.slots = slots
            self._cond.notify_all()

    @property
    def running(self) -> int:
        with self._cond:
            return len(self._holders)

    @property
    def waiting(self) -> int:
        with self._cond:
            return len(self._waiting)

    @contextlib.contextmanager
    def slot(self) -> Iterator[None]:
        """Hold a slot for the ``with`` body, waiting in line for it first."""
        me = threading.get_ident()
        with self._cond:
            if me in self._holders:  # re-entry: already holds a slot
                self._holders[me] += 1
                reentered = True
            else:
                reentered = False
        if reentered:
            try:
                yield
            finally:
                with self._cond:
                    self._holders[me] -= 1
            return
        ticket = object()
        arrived = time.monotonic()
        reported = False
        with self._cond:
            self._waiting.append(ticket)
        try:
            while True:
                with self._cond:
                    pos = self._waiting.index(ticket)
                    if pos == 0 and len(self._holders) < self.slots:
                        self._waiting.pop(0)
                        self._holders[me] = 1
                        self.served += 1
                        self._cond.notify_all()
                        break
                    state = QueueState(pos + 1, len(self._holders), time.monotonic() - arrived)
                report = getattr(_local, "reporter", None)
                if report is not None:
                    report(state)  # outside the lock: it may touch the UI or raise
                    reported = True
                with self._cond:
                    if ticket in self._waiting:
                        self._cond.wait(self.poll)
        except BaseException:
            with self._cond:
                if ticket in self._waiting:
                    self._waiting.remove(ticket)
                self._cond.notify_all()
            raise
        try:
            report = getattr(_local, "reporter", None)
            if reported and report is not None:  # position 0: the wait is over
                report(QueueState(0, self.running, time.monotonic() - arrived))
            yield
        finally:
            with self._cond:
                del self._holders[me]
                self._cond.notify_all()


@contextlib.contextmanager
def waiting_reporter(report: Reporter) -> Iterator[None]:
    """Call ``report`` (in this thread) while this thread waits for a compute slot."""
    old = getattr(_local, "reporter", None)
    _local.reporter = report
    try:
        yield
    finally:
        _local.reporter = old


COMPUTE_QUEUE = ComputeQueue(1)
