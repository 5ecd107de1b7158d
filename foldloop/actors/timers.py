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

from foldloop._log import get_logger

__all__ = ["Timer", "Timers"]

log = get_logger(__name__)


class Timer:
    """A scheduled call; ``cancel`` drops the function (and all it references) at once."""

    __slots__ = ("fn",)

    def __init__(self, fn: Callable[[], None]) -> None:
        self.fn: Callable[[], None] | None = fn

    def cancel(self) -> None:
        """Do not run; release the function now (its heap slot empties when due)."""
        self.fn = None


class Timers:
    """Calls functions later, on one daemon thread."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Timer]] = []
        self._ids = itertools.count()
        self._cond = threading.Condition()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="foldloop-timers", daemon=True)
        self._thread.start()

    def call_later(self, delay_s: float, fn: Callable[[], None]) -> Timer:
        """Run ``fn`` after ``delay_s`` seconds (monotonic clock); returns a cancellable Timer."""
        due = time.monotonic() + delay_s
        timer = Timer(fn)
        with self._cond:
            earliest = not self._heap or due < self._heap[0][0]
            heapq.heappush(self._heap, (due, next(self._ids), timer))
            if earliest:  # waking the thread for a later deadline would only cost the GIL
                self._cond.notify()
        return timer

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
                _, _, timer = heapq.heappop(self._heap)
                fn, timer.fn = timer.fn, None
            if fn is None:
                continue
            try:
                fn()
            except Exception:
                log.exception("timer_callback_failed")
