"""One timer thread for the whole runtime: tool timeouts and model retry backoffs.

A ``threading.Timer`` per tool call would start a thread per call; a heap and one
condition variable cost nothing while idle.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Callable

import structlog

__all__ = ["Timers"]

log = structlog.get_logger(__name__)


class Timers:
    """Calls functions later, on one daemon thread."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._ids = itertools.count()
        self._cond = threading.Condition()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="foldloop-timers", daemon=True)
        self._thread.start()

    def call_later(self, delay_s: float, fn: Callable[[], None]) -> None:
        """Run ``fn`` after ``delay_s`` seconds (monotonic clock)."""
        due = time.monotonic() + delay_s
        with self._cond:
            earliest = not self._heap or due < self._heap[0][0]
            heapq.heappush(self._heap, (due, next(self._ids), fn))
            if earliest:  # waking the thread for a later deadline would only cost the GIL
                self._cond.notify()

    def stop(self) -> None:
        """Drop pending timers and stop the thread."""
        with self._cond:
            self._stopped = True
            self._heap.clear()
            self._cond.notify()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stopped and (not self._heap or self._heap[0][0] > time.monotonic()):
                    timeout = self._heap[0][0] - time.monotonic() if self._heap else None
                    self._cond.wait(timeout)
                if self._stopped:
                    return
                _, _, fn = heapq.heappop(self._heap)
            try:
                fn()
            except Exception:
                log.exception("timer_callback_failed")
