"""A bounded set of daemon worker threads: the tool and model pools.

``concurrent.futures.ThreadPoolExecutor`` builds a Future, a work item and a semaphore
dance for every call; the step path wants none of that (results travel back as actor
messages), so this is a queue and up to ``limit`` threads, started on demand.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable

from foldloop._log import get_logger
from foldloop.actors._base import FAILURES
from foldloop.actors._own_threads import holding_outcome, mark_own_thread

__all__ = ["Workers"]

log = get_logger(__name__)

_current = threading.local()
"""``pool``: the Workers the current thread works for; ``slot``: the job it runs next."""


class Workers:
    """Run callables on at most ``limit`` threads (None: as many as jobs wait); extra jobs
    wait in order. A thread idle for ``keep_idle_s`` ends, so a burst leaves none behind."""

    def __init__(self, limit: int | None, name: str, *, keep_idle_s: float = 30.0) -> None:
        self._limit = limit if limit is not None else 2**31
        self._keep_idle_s = keep_idle_s
        self._name = name
        self._queue: queue.SimpleQueue[Callable[[], object] | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads = 0
        self._idle = 0
        self._pending = 0
        self._unfinished = 0  # queued or running
        self._finished = threading.Condition(self._lock)
        self._closed = False

    def submit(self, job: Callable[[], object]) -> None:
        """Queue ``job``; start a thread if every running one is busy and the bound allows.
        A job one of this pool's threads submits as it hands its own job's outcome on
        (``outcome_in_hand``), while no other job waits, is that thread's next (as Tokio's
        LIFO slot): the run step that outcome drove asks for the next call, and the thread
        about to be free makes it, with no hand-over. The slot's job waits for its
        submitter's job to return: submit it last, and never wait for it there."""
        mine = (
            holding_outcome() and getattr(_current, "pool", None) is self and _current.slot is None
        )
        with self._lock:
            if self._closed:
                return
            if mine and not self._pending:
                self._unfinished += 1
                _current.slot = job
                return
            self._pending += 1
            self._unfinished += 1
            index = self._grow()
        self._queue.put(job)
        self._start(index)

    def _requeue(self, job: Callable[[], object]) -> None:
        """Queue a job already counted unfinished (a slot's whose thread ends)."""
        with self._lock:
            if self._closed:  # dropped
                self._unfinished -= 1
                if not self._unfinished:
                    self._finished.notify_all()
                return
            self._pending += 1
            index = self._grow()
        self._queue.put(job)
        self._start(index)

    def has_room(self) -> bool:
        """Every job queued has a thread, idle or yet to start (none waits for one)."""
        with self._lock:
            return self._pending <= self._idle or self._threads < self._limit

    def lend(self) -> None:
        """One more thread may run (a job holding one is past its timeout and no longer
        counts): a job waiting starts now. ``reclaim`` once that job returns."""
        with self._lock:
            if self._closed:
                return
            self._limit += 1
            index = self._grow()
        self._start(index)

    def _grow(self) -> int | None:
        """(Lock held.) Count a new thread if jobs outnumber the idle ones and the bound
        allows; its number, or None."""
        if self._pending > self._idle and self._threads < self._limit:
            self._threads += 1
            return self._threads
        return None

    def _start(self, index: int | None) -> None:
        """Start the thread ``_grow`` counted (if it counted one)."""
        if index is not None:
            threading.Thread(target=self._work, name=f"{self._name}-{index}", daemon=True).start()

    def reclaim(self) -> None:
        """Undo a ``lend``: a thread above the bound ends once its job is done."""
        with self._lock:
            self._limit -= 1

    def join(self, timeout: float) -> bool:
        """Wait until every job submitted so far has run; False if some still had not after
        ``timeout`` seconds."""
        with self._lock:
            return self._finished.wait_for(lambda: not self._unfinished, timeout)

    def shutdown(self) -> None:
        """Stop every thread once its current job ends; queued jobs are dropped."""
        with self._lock:
            self._closed = True
            threads = self._threads
        for _ in range(threads):
            self._queue.put(None)

    def _work(self) -> None:
        mark_own_thread()
        _current.pool, _current.slot = self, None
        while True:
            with self._lock:
                self._idle += 1
            try:
                job = self._queue.get(timeout=self._keep_idle_s)
            except queue.Empty:
                with self._lock:
                    self._idle -= 1
                    # end only if the threads still idle cover every queued job (a submit
                    # that counted this one as idle started no thread for its job)
                    if self._pending <= self._idle:
                        self._threads -= 1
                        return
                continue
            with self._lock:
                self._idle -= 1
                self._pending -= 1
                closed = self._closed
            if job is None or closed:
                return
            while job is not None:
                try:
                    job()
                except FAILURES:
                    log.exception("worker_job_failed", pool=self._name)
                job, _current.slot = _current.slot, None
                with self._lock:
                    if job is not None and self._closed:
                        self._unfinished -= 1  # dropped: the pool is shut down
                        job = None
                    self._unfinished -= 1
                    if not self._unfinished:
                        self._finished.notify_all()
                    above = self._threads > self._limit  # a lent thread given back
                    if above:
                        self._threads -= 1
                if above:
                    if job is not None:  # its thread ends: the job goes to another
                        self._requeue(job)
                    return
