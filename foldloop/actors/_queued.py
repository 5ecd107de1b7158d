"""What a cancel of a run stops: its calls in flight, and its calls still waiting for a slot
(a tool's thread or async place, a place under ``max_model_calls``)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Protocol

__all__ = ["Cancellable", "QueuedCall"]


class Cancellable(Protocol):
    """**Protocol:** a call a cancel of its run may stop (a ``LoopCall`` or ``QueuedCall``)."""

    def cancel(self) -> bool: ...
    def done(self) -> bool: ...


class QueuedCall:
    """A call waiting for a slot (one of its tool's threads or async places, or a place under
    ``max_model_calls``): cancelled, or held back as its runtime closes, it never starts."""

    __slots__ = ("_disarm", "_lock", "_not_run", "_state")

    def __init__(self, not_run: Callable[[], None]) -> None:
        self._lock = threading.Lock()
        self._state = "queued"
        self._not_run = not_run
        """Reports that the call did not run (``hold``)."""
        self._disarm: Callable[[], None] | None = None
        """Cancels what waits for the call's deadline (``arm``)."""

    def arm(self, disarm: Callable[[], None]) -> None:
        """``disarm`` is called once the call stops waiting (at once if it has): a timer
        set for its deadline is cancelled then, and what it holds let go."""
        with self._lock:
            if self._state == "queued":
                self._disarm = disarm
                return
        disarm()

    def _leave(self, state: str) -> bool:
        """Move from queued to ``state``: True if this did (then the deadline is disarmed)."""
        with self._lock:
            if self._state != "queued":
                return False
            self._state = state
            disarm, self._disarm = self._disarm, None
        if disarm is not None:
            disarm()
        return True

    def start(self) -> bool:
        """The call gets its slot: False if it was cancelled or held back first."""
        return self._leave("started")

    def cancel(self) -> bool:
        """Keep the call from starting; False once it has."""
        self._leave("cancelled")
        return self._state in ("cancelled", "held")

    def withdraw(self) -> bool:
        """Keep the call from starting if it still waits: True if this is what stopped it."""
        return self._leave("cancelled")

    def hold(self) -> None:
        """The runtime is closing: the call never starts, and ``not_run`` says so now (a
        tool call's outcome; nothing for a model call, which a resume makes again)."""
        if self._leave("held"):
            self._not_run()

    @property
    def started(self) -> bool:
        """It got its slot."""
        return self._state == "started"

    def done(self) -> bool:
        """Started, cancelled or held: nothing left to stop from starting."""
        return self._state != "queued"
