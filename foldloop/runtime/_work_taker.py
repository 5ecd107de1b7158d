"""Taking queued runs from a store's shared work queue (JetStream), for the agents here.

One thread asks the queue for runs of the agents this runtime was opened with (or
registered), as many as admission has room for, takes their leases and queues them for
admission here (``Recovery.take_queued``), then tells the queue they are taken. A runtime
that dies between the two holds their leases: when its owner key lapses, another
runtime's ``recover()`` queues them again. Items it could not take go back to the queue.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from foldloop._log import get_logger
from foldloop.errors import FoldloopError
from foldloop.store import WorkItem, WorkQueue

__all__ = ["WorkTaker"]

log = get_logger("foldloop.runtime")

BATCH = 64
"""Runs taken at once when admission has no cap."""
POLL_S = 0.25
"""How long one ask of the queue waits for a run (and close for a take under way)."""


class WorkTaker:
    """The thread taking runs from the shared queue (see the module doc)."""

    def __init__(
        self,
        queue: WorkQueue,
        *,
        agents: Callable[[], list[str]],
        room: Callable[[int], int],
        take: Callable[[list[str]], list[str]],
    ) -> None:
        self._queue = queue
        self._agents = agents
        self._room = room
        self._take = take
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="foldloop-take", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            names = self._agents()
            limit = min(self._room(BATCH), BATCH)
            if not names or limit <= 0:
                self._stop.wait(0.1)
                continue
            try:
                items = self._queue.take_work(names, limit, POLL_S)
            except FoldloopError as exc:
                log.warning("work_queue_unavailable", error=str(exc))
                self._stop.wait(POLL_S)
                continue
            if not items:
                continue
            if self._stop.is_set():  # closing: leave them to another runtime
                _settle(items, taken=False)
                return
            try:
                self._take([item.run_id for item in items])
            except Exception:
                log.exception("work_not_taken", runs=[item.run_id for item in items])
                _settle(items, taken=False)
                continue
            # taken, or held by a live runtime, or left queued for recover(): the queue is done
            _settle(items, taken=True)

    def stop(self) -> None:
        """Take nothing more (a take under way goes on: ``join`` waits for it)."""
        self._stop.set()

    def join(self, timeout: float = POLL_S * 2 + 5) -> None:
        """Wait for a take under way, after ``stop``."""
        self._thread.join(timeout)


def _settle(items: list[WorkItem], *, taken: bool) -> None:
    """Tell the queue what became of ``items`` (a store closing under it is no matter: an
    item not acknowledged is offered again)."""
    for item in items:
        try:
            item.done() if taken else item.retry()
        except Exception as exc:
            log.info("work_item_not_settled", run_id=item.run_id, error=str(exc))
