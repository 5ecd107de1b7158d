"""ModelCalls: where a runtime's model calls are made, at most ``max_model_calls`` at once.

A model with ``acomplete`` is awaited on the runtime's event loop; one with only ``complete``
runs on a pool of threads that grows with the calls (its threads end once idle). The cap,
when set (a provider's rate limit), counts both forms together: calls past it wait their
turn in order, and one whose run is cancelled, or whose runtime closes, while it waits is
never made.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable

from foldloop._log import get_logger
from foldloop.actors._event_loop import EventLoop
from foldloop.actors._model_call import PLACE, ModelCall
from foldloop.actors._own_threads import outcome_in_hand
from foldloop.actors._queued import Cancellable, QueuedCall
from foldloop.actors._timers import Timers
from foldloop.actors._workers import Workers
from foldloop.core._commands import Command
from foldloop.llm import AsyncComplete

__all__ = ["ModelCalls"]

log = get_logger(__name__)


class ModelCalls:
    """Makes model calls from any thread, ``limit`` in flight at most (None: no cap)."""

    def __init__(self, limit: int | None, loop: EventLoop, timers: Timers) -> None:
        self._limit = limit
        self._loop = loop
        self._timers = timers
        self._pool = Workers(None, "foldloop-model")
        self._lock = threading.Lock()
        self._taken = 0
        self._waiting: collections.deque[tuple[QueuedCall, Callable[[], bool]]]
        self._waiting = collections.deque()
        """Calls waiting for a place, each with a start that says whether it took it."""
        self._gone = 0
        """Calls cancelled or withdrawn while they waited, still in ``_waiting``."""

    def start(
        self,
        asked: ModelCall,
        asks: AsyncComplete | None,
        reply: Callable[[Command], object],
        track: Callable[[Cancellable], None],
    ) -> None:
        """Make ``asked``: awaited through ``asks`` (the model's ``acomplete``), or with
        ``complete`` on the pool when None. ``reply`` gets its command; ``track`` each thing
        a cancel of its run cancels (the call while it waits, the awaited call)."""
        if asks is not None and self._limit is None:  # nothing to wait for: straight on
            track(self._loop.start(asked.awaited(asks, self._loop.cancelled_here), reply))
            return
        queued = QueuedCall(lambda: None)  # held back at close: a resume asks again
        track(queued)

        def lapse() -> None:  # still waiting when the run's max_seconds ran out: never made
            if queued.withdraw():
                reply(asked.out_of_time(PLACE))

        def waits() -> None:
            timer = None
            if asked.deadline is not None:
                timer = self._timers.call_later(asked.seconds_left(), lapse)

            def stops_waiting() -> None:
                if timer is not None:
                    timer.cancel()
                if not queued.started:  # a cancel or its deadline: its messages let go
                    self._went()

            queued.arm(stops_waiting)

        if asks is None:
            self._enter(queued, self._sync(asked, queued, reply), waits)
        else:
            self._enter(queued, self._awaited(asked, asks, queued, reply, track), waits)

    @property
    def in_flight(self) -> int:
        """Places taken now: calls made and not ended, or about to be made."""
        with self._lock:
            return self._taken

    def _sync(
        self, asked: ModelCall, queued: QueuedCall, reply: Callable[[Command], object]
    ) -> Callable[[], bool]:
        """The start of a ``complete`` call: onto the pool, which gives its place back."""

        def call() -> None:
            try:
                if queued.start():  # not cancelled (or held) while it waited for a thread
                    replied = asked.sync()
                    with outcome_in_hand():
                        reply(replied)
            finally:
                self._leave()

        def submit() -> bool:
            self._pool.submit(call)
            return True

        return submit

    def _awaited(
        self,
        asked: ModelCall,
        asks: AsyncComplete,
        queued: QueuedCall,
        reply: Callable[[Command], object],
        track: Callable[[Cancellable], None],
    ) -> Callable[[], bool]:
        """The start of an ``acomplete`` call: onto the loop, which gives its place back
        however the call ends; not made if its run was cancelled while it waited."""

        def begin() -> bool:
            if not queued.start():
                return False
            awaited = asked.awaited(asks, self._loop.cancelled_here)
            track(self._loop.start(awaited, reply, on_end=self._leave))
            return True

        return begin

    def shutdown(self) -> None:
        """Stop the pool's threads once their calls end; calls still waiting are dropped."""
        with self._lock:
            self._waiting.clear()
        self._pool.shutdown()

    def _enter(
        self, queued: QueuedCall, start: Callable[[], bool], waits: Callable[[], None]
    ) -> None:
        """Run ``start`` now if a place is free (it raises as an uncapped call would), else
        once one is (``waits`` is told it waits)."""
        with self._lock:
            queue = self._limit is not None and self._taken >= self._limit
            if queue:
                self._waiting.append((queued, start))
            else:
                self._taken += 1
        if queue:
            waits()
            return
        try:
            started = start()
        except BaseException:
            self._leave()
            raise
        if not started:
            self._leave()

    def _went(self) -> None:
        """A call stopped waiting without its place: once such calls are half of those
        waiting, they are let go (while every place is held they would stay for as long)."""
        with self._lock:
            self._gone += 1
            if self._gone * 2 > len(self._waiting):
                self._waiting = collections.deque(w for w in self._waiting if not w[0].done())
                self._gone = 0

    def _leave(self) -> None:
        """A call ended, or was not made: its place goes to the next one waiting."""
        while True:
            with self._lock:
                if not self._waiting:
                    self._taken -= 1
                    return
                _queued, start = self._waiting.popleft()  # the place passes to it
            try:
                if start():
                    return
            except Exception:  # the loop closed under it, say: the place goes on
                log.exception("model_call_start_failed")
