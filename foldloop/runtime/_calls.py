"""Calls under way that a close lets finish before it lets go of what they use."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

__all__ = ["CallsUnderWay"]


class CallsUnderWay:
    """Counts the calls under way (``call``); ``wait_others`` waits for those of other
    threads to end: a close on a thread that is itself inside one (a signal handler's,
    say) must not wait for its own call, which waits for the close to return."""

    def __init__(self) -> None:
        self._ended = threading.Condition()
        self._count = 0
        self._mine = threading.local()

    @contextlib.contextmanager
    def call(self) -> Iterator[None]:
        """A call under way for the block's length."""
        with self._ended:
            self._count += 1
        self._mine.depth = getattr(self._mine, "depth", 0) + 1
        try:
            yield
        finally:
            self._mine.depth -= 1
            with self._ended:
                self._count -= 1
                self._ended.notify_all()

    def wait_others(self, timeout: float) -> bool:
        """Wait until no other thread's call is under way; False if some still were after
        ``timeout`` seconds."""
        own = getattr(self._mine, "depth", 0)
        with self._ended:
            return self._ended.wait_for(lambda: self._count <= own, max(0.0, timeout))

    @property
    def under_way(self) -> int:
        """How many calls are under way now (for a log line)."""
        return self._count
