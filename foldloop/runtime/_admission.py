"""Admission: at most ``max_active_runs`` runs driven here at once; the others wait, FIFO.

A run spawned while every slot is taken is recorded queued (``run.started`` and
``run.queued``, durable before ``spawn`` returns; its runtime keeps its lease, which says
who admits it) and its id joins the queue: nothing else of it is held in memory. When a run
driven here stops being active (``ActorSystem(on_inactive=...)``), the admission thread takes
the next queued runs and starts them (``Admits.admit``: lease, ``run.admitted``, an actor).
That work never runs on the thread that reported the slot free: it is a shard's, which
drives other runs.

In flight = runs with an actor here + slots reserved (a spawn or an admission between its
check and its actor), counted under one lock, so spawns and admissions never drive more
than the cap at once. Runs admitted before (a resume, an approval carried in, a running run
``recover()`` picks up) bypass the queue: they count while they run, so fewer queued runs
are admitted meanwhile, but they never wait behind runs that have not started yet.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Literal

from foldloop._log import get_logger
from foldloop.actors._workers import Workers

__all__ = ["CLOSE_WAIT", "Admission", "Turn"]

log = get_logger("foldloop.runtime")

CLOSE_WAIT = 5.0
"""Seconds ``close`` waits for an admission under way to finish (a few commits, or a claim
another thread of the runtime is handing over)."""
RETRY_AFTER_S = 1.0
"""An admission the store failed (a server away) is tried again this much later."""
ADMITS_AT_ONCE = 64
"""Queued runs the admission thread starts at once at most (when as many slots are free):
their writes share commits."""

Turn = Literal["now", "deadline", "closed"]
"""How a wait for a queued run's turn ended: not (or no longer) queued here; still queued
at the deadline; still queued when the runtime closed."""


class Admission:
    """The queue of one runtime's queued runs and the count of its runs in flight.

    ``active`` says how many runs an actor of this runtime drives (``ActorSystem.active_count``;
    called under this object's lock, so it must not call back here); ``admit`` starts queued
    runs, in order (on the admission thread), and returns those to try again later.
    """

    def __init__(
        self,
        limit: int | None,
        *,
        active: Callable[[], int],
        admit: Callable[[list[str]], list[str]],
    ) -> None:
        self.limit = limit
        self._active = active
        self._admit = admit
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)  # a run left the queue, or closing
        self._queue: deque[str] = deque()
        self._waiting: set[str] = set()
        """Queued here or being admitted: ``wait()`` on these waits for their turn first."""
        self._reserved = 0
        self._scheduled = False  # the admission thread has a drain queued or running
        self._closed = False
        self._thread = Workers(1, "foldloop-admit")

    def _in_flight(self) -> int:
        """(Lock held.) Runs driven here plus slots reserved for runs about to be."""
        return self._active() + self._reserved

    def _full(self) -> bool:
        """(Lock held.)"""
        return self.limit is not None and self._in_flight() >= self.limit

    def reserve(self) -> bool:
        """A slot for a run starting now (True: call ``release`` once it has its actor or
        came to nothing), or False: no slot, or runs already wait (FIFO): queue it."""
        if self.limit is None:
            return True
        with self._lock:
            if self._queue or self._full():
                return False
            self._reserved += 1
            return True

    def release(self) -> None:
        """A slot ``reserve`` gave is counted by its actor now (or was not used)."""
        if self.limit is None:
            return
        with self._lock:
            self._reserved -= 1
        self.pump()

    def room(self, uncapped: int) -> int:
        """How many more runs a taker from a shared work queue may take now without
        hoarding: the free slots less those queued here (with no cap, ``uncapped`` less
        those queued here: it takes more only once what it took is admitted)."""
        with self._lock:
            free = uncapped if self.limit is None else self.limit - self._in_flight()
            return max(0, free - len(self._queue))

    def enqueue(self, run_ids: Iterable[str]) -> None:
        """Queue runs recorded queued (in this order, behind those waiting already)."""
        with self._lock:
            for run_id in run_ids:
                if run_id not in self._waiting:
                    self._queue.append(run_id)
                    self._waiting.add(run_id)
        self.pump()

    def forget(self, run_id: str) -> None:
        """A queued run was cancelled: it leaves the queue, and whoever waits for its turn
        stops waiting (one being admitted right now is found cancelled by its admission)."""
        if run_id not in self._waiting:
            return
        with self._lock:
            try:
                self._queue.remove(run_id)
            except ValueError:
                return
            self._waiting.discard(run_id)
            self._changed.notify_all()

    def queued_here(self, run_id: str) -> bool:
        """The run waits here for its turn (or is being admitted)."""
        return run_id in self._waiting

    def wait_turn(self, run_id: str, deadline: float | None) -> Turn:
        """Block while the run waits here for its turn (``deadline``: ``time.monotonic()``).
        Returns at once for a run not queued here."""
        if run_id not in self._waiting:  # a set lookup: no lock for the common case
            return "now"
        with self._lock:
            while run_id in self._waiting:
                if self._closed:
                    return "closed"
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return "deadline"
                self._changed.wait(left)
            return "now"

    def on_inactive(self, run_id: str) -> None:
        """A run driven here stopped being active: a slot may be free. Called on that
        run's driving thread, so it only hands the work to the admission thread."""
        self.pump()

    def pump(self) -> None:
        """Have the admission thread admit queued runs while slots are free."""
        with self._lock:
            if self._closed or self._scheduled or not self._queue:
                return
            self._scheduled = True
        self._thread.submit(self._drain)

    def _drain(self) -> None:
        """(The admission thread.) Admit the queue's head while slots are free, as many at
        once as are free (up to ADMITS_AT_ONCE)."""
        while True:
            with self._lock:
                if self._closed or not self._queue or self._full():
                    self._scheduled = False
                    return
                free = ADMITS_AT_ONCE if self.limit is None else self.limit - self._in_flight()
                turn = min(free, ADMITS_AT_ONCE, len(self._queue))
                batch = [self._queue.popleft() for _ in range(turn)]
                self._reserved += len(batch)
            retry: list[str] = []
            try:
                retry = self._admit(batch)
            except Exception as exc:
                if self._closed:  # closed under it: the runs are resumed or admitted later
                    log.info("admission_cut_by_close", run_ids=batch, error=str(exc))
                else:
                    log.exception("admission_failed", run_ids=batch)
            finally:
                with self._lock:
                    self._reserved -= len(batch)
                    held = bool(retry) and not self._closed
                    if held:  # the store failed them (a server away): their turn holds
                        self._queue.extendleft(reversed(retry))
                    self._waiting.difference_update(set(batch) - set(retry) if held else batch)
                    self._changed.notify_all()
            if held:
                log.warning("admission_retried", run_ids=retry, after_s=RETRY_AFTER_S)
                self._pause()
                return
            if retry:  # their lease is let go at the close: recover() queues them elsewhere
                log.info("admission_cut_by_close", run_ids=retry)

    def _pause(self) -> None:
        """Admit nothing for RETRY_AFTER_S (``_scheduled`` stays set, so no drain starts
        meanwhile): the runs the store failed, back at the queue's head, go first after."""
        timer = threading.Timer(RETRY_AFTER_S, self._resume)
        timer.daemon = True
        timer.start()

    def _resume(self) -> None:
        with self._lock:
            self._scheduled = False
        self.pump()

    def close(self) -> None:
        """Admit nothing more (the queued runs stay queued in the log, for ``recover()``);
        let an admission under way finish first."""
        with self._lock:
            self._closed = True
        if not self._thread.join(CLOSE_WAIT):
            log.warning("admission_unfinished_at_close", timeout_s=CLOSE_WAIT)
        self._thread.shutdown()
        with self._lock:  # only now: a run in the last admission has left the queue
            self._changed.notify_all()
