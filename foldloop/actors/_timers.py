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

_COMPACT_AFTER = 1024
_LONGEST_WAIT_S = 3600.0
"""The longest one wait of the thread: a timer due in centuries (a tool timeout of 1e10 s)
is waited for in parts, not by a wait past what the platform's clock takes (OverflowError)."""


class Timer:
    """A scheduled call; ``cancel`` drops the function (and all it references) at once."""

    __slots__ = ("fn", "owner")

    def __init__(self, fn: Callable[[], None], owner: Timers) -> None:
        self.fn: Callable[[], None] | None = fn
        self.owner = owner

    def cancel(self) -> None:
        """Do not run; release the function now (its heap slot goes when due or compacted)."""
        if self.fn is not None:
            self.fn = None
            self.owner.cancelled += 1  # advisory (unlocked): only decides when to compact


class Timers:
    """Calls functions later, on one daemon thread."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Timer]] = []
        self._lock = threading.Lock()
        self.cancelled = 0
        """Cancelled timers still in the heap: a tool timeout armed and cancelled every step
        would otherwise hold one entry per step for the whole timeout (120 s by default)."""
        self._ids = itertools.count()
        self._cond = threading.Condition(self._lock)
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="foldloop-timers", daemon=True)
        self._thread.start()

    def call_later(self, delay_s: float, fn: Callable[[], None]) -> Timer:
        """Run ``fn`` after ``delay_s`` seconds (monotonic clock); returns a cancellable Timer."""
        due = time.monotonic() + delay_s
        timer = Timer(fn, self)
        with self._lock:
            if self.cancelled > _COMPACT_AFTER and self.cancelled * 2 > len(self._heap):
                self._heap = [entry for entry in self._heap if entry[2].fn is not None]
                heapq.heapify(self._heap)
                self.cancelled = 0
            earliest = not self._heap or due < self._heap[0][0]
            heapq.heappush(self._heap, (due, next(self._ids), timer))
            if earliest:  # waking the thread for a later deadline would only cost the GIL
                self._cond.notify()
        return timer

    def held(self) -> int:
        """Entries in the heap (cancelled ones included until they are due or compacted)."""
        with self._lock:
            return len(self._heap)

    def stop(self) -> None:
        """Drop pending timers and stop the thread."""
        with self._lock:
            self._stopped = True
            self._heap.clear()
            self._cond.notify()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._stopped and (not self._heap or self._heap[0][0] > time.monotonic()):
                    timeout = self._heap[0][0] - time.monotonic() if self._heap else None
                    self._cond.wait(None if timeout is None else min(timeout, _LONGEST_WAIT_S))
                if self._stopped:
                    return
                _, _, timer = heapq.heappop(self._heap)
                fn, timer.fn = timer.fn, None
                if fn is None:
                    self.cancelled -= 1
            if fn is None:
                continue
            try:
                fn()
            except Exception:
                log.exception("timer_callback_failed")
