"""Threads for actor loops, reused: a run's actor should not pay for a new thread.

pykka's ThreadingActor starts a thread per actor and waits for it to start; a run lives for
a few milliseconds to minutes, so a thread's birth and the start handshake would be most of
what starting its actor costs. A thread whose actor stopped waits ``keep_idle_s`` for the
next actor loop, then ends, so a runtime at rest holds no thread for its runs (parked runs
hold none at all).
"""

from __future__ import annotations

import collections
import itertools
import threading
import time
from collections.abc import Callable

from foldloop._log import get_logger

__all__ = ["LOOPS", "ActorLoops"]

log = get_logger(__name__)


class ActorLoops:
    """Runs each actor loop on an idle thread of the pool, or on a new one."""

    def __init__(self, keep_idle_s: float = 2.0) -> None:
        self.keep_idle_s = keep_idle_s
        self._lock = threading.Lock()
        self._ready = threading.Condition(self._lock)
        self._loops: collections.deque[Callable[[], None]] = collections.deque()
        self._idle = 0
        self._busy = 0
        self._names = itertools.count(1)

    def run(self, loop: Callable[[], None]) -> None:
        """Run ``loop`` (an actor's whole life) on a pooled thread."""
        with self._lock:
            self._busy += 1
            if self._idle > len(self._loops):  # an idle thread is sure to take it
                self._loops.append(loop)
                self._ready.notify()
                return
        name = f"foldloop-actor-{next(self._names)}"
        threading.Thread(target=self._work, args=(loop,), name=name, daemon=True).start()

    def counts(self) -> tuple[int, int]:
        """(threads running an actor loop, threads waiting for one)."""
        with self._lock:
            return self._busy, self._idle

    def _work(self, loop: Callable[[], None]) -> None:
        while True:
            try:
                loop()
            except BaseException:  # pykka handles an actor's failures; this is a last guard
                log.exception("actor_loop_failed")
            with self._lock:
                self._busy -= 1
                self._idle += 1
                deadline = time.monotonic() + self.keep_idle_s
                while not self._loops:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        self._idle -= 1
                        return
                    self._ready.wait(left)
                loop = self._loops.popleft()
                self._idle -= 1


LOOPS = ActorLoops()
"""The process's pool (actors of every runtime in the process share it)."""
