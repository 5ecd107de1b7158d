"""The interpreter's cyclic garbage collector while runtimes are open.

CPython collects its youngest generation every 700 net allocations of tracked objects (2,000
from 3.13). A runtime with thousands of runs in flight keeps what each run waits with (its
model call's task, its queued messages and appends) alive for the model's latency: collected
that often, nearly all of it is promoted and rescanned, only to be found alive: a run's
steps leave no reference cycle for the collector to free (benchmarks/README.md has the cost).
So while a runtime is open, a youngest threshold still at Python's default is raised to
``YOUNG_THRESHOLD``; the last runtime to close puts it back unless the host changed it
meanwhile. A host that set its own thresholds keeps them. A child made by ``os.fork`` has no
runtime open (their threads do not survive a fork): it starts with the count at 0 and the
threshold put back as the last close would.
"""

from __future__ import annotations

import gc
import os
import sys
import threading

from foldloop._log import get_logger

__all__ = ["COLLECTOR", "PYTHON_DEFAULT", "YOUNG_THRESHOLD", "Collector"]

log = get_logger(__name__)

PYTHON_DEFAULT = 700 if sys.version_info < (3, 13) else 2000
"""CPython's threshold for its youngest generation (``gc.get_threshold()[0]``)."""
YOUNG_THRESHOLD = 500_000
"""The youngest generation's threshold while a runtime is open (if the host left Python's)."""


class Collector:
    """Counts the runtimes open in this process; raises the threshold for their time."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open = 0
        self._raised_from: tuple[int, int, int] | None = None

    def runtime_opened(self) -> None:
        with self._lock:
            self._open += 1
            if self._open > 1:
                return
            before = gc.get_threshold()
            if before[0] != PYTHON_DEFAULT:
                return
            gc.set_threshold(YOUNG_THRESHOLD, before[1], before[2])
            self._raised_from = before
        log.debug("gc_threshold_raised", before=before, now=gc.get_threshold())

    def runtime_closed(self) -> None:
        with self._lock:
            self._open -= 1
            if self._open == 0:
                self._put_back()

    def _put_back(self) -> None:
        """What the last close does: the youngest threshold back, unless the host changed it."""
        if self._raised_from is None:
            return
        before, self._raised_from = self._raised_from, None
        now = gc.get_threshold()
        if now[0] == YOUNG_THRESHOLD:  # else the host set its own since
            gc.set_threshold(before[0], now[1], now[2])

    def before_fork(self) -> None:
        """Held over a fork, so the child copies a count and a threshold that agree."""
        self._lock.acquire()

    def after_fork_in_parent(self) -> None:
        """The fork is done: the parent goes on."""
        self._lock.release()

    def after_fork_in_child(self) -> None:
        """No runtime survives a fork (their threads do not): the child has none open."""
        self._open = 0
        self._put_back()
        self._lock.release()


COLLECTOR = Collector()
"""The process's one count (thresholds are the interpreter's, not a runtime's)."""
os.register_at_fork(
    before=COLLECTOR.before_fork,
    after_in_parent=COLLECTOR.after_fork_in_parent,
    after_in_child=COLLECTOR.after_fork_in_child,
)
