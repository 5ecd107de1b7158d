"""How a run's end travels from the pool worker that drove it to the host's handles.

A host waiting on thousands of runs its workers drive would otherwise read and fold each
run's log once to learn how it ended. The worker knows already: its runtime tells it each
run that ended (once that end is durable), and it sends the final results, in batches, on
the protocol channel. The host hands each to the handle it gave out for that run, if one
is still held; a wait on a run whose end did not arrive reads the log as before.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator

from foldloop._log import get_logger
from foldloop.core._state import RunState
from foldloop.runtime._pool_protocol import Ended
from foldloop.runtime._results import RunHandle, RunResult, is_final, result_of

__all__ = ["EndingsHeard", "EndingsSender"]

log = get_logger(__name__)

BATCH = 512
"""Results a line at most."""
BATCH_CHARS = 1 << 20
"""Output characters a line at most (past the first result): a line the host reads whole,
and the replies behind it, stay small."""


class EndingsSender:
    """(Worker.) Collects the final results of the runs its runtime tells of and sends
    them as Ended lines from a thread of its own, as many a line as came meanwhile."""

    def __init__(self, send: Callable[[Ended], None]) -> None:
        self._send = send
        self._queue: queue.SimpleQueue[RunResult | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="foldloop-endings", daemon=True)
        self._thread.start()

    def ended(self, state: RunState) -> None:
        """(Any thread; the runtime's ``on_ended``.) Queue its result if it is final (another
        can change: the host reads the log); a shard must not wait on a pipe."""
        result = result_of(state)
        if is_final(result):
            self._queue.put(result)

    def close(self) -> None:
        """Send what is queued, then stop."""
        self._queue.put(None)
        self._thread.join()

    def _run(self) -> None:
        done = False
        while not done:
            batch: list[RunResult] = []
            chars = 0
            item = self._queue.get()
            while True:
                if item is None:
                    done = True
                    break
                batch.append(item)
                chars += len(item.output)
                if len(batch) >= BATCH or chars >= BATCH_CHARS:
                    break
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
            if batch:
                try:
                    self._send(Ended(batch))
                except Exception:  # the host then reads those runs' logs: keep sending
                    log.exception("pool_ends_not_sent", runs=len(batch))


class EndingsHeard:
    """(Host.) The handles a pool gave out, by run id, held weakly: a result that arrives
    for one a caller still holds is handed to it. One that arrives before its handle (a
    quick run can end before the reply that started it is read) is kept while the call
    that starts the run is under way (``expecting``); any other is dropped."""

    def __init__(self) -> None:
        self._handles: weakref.WeakValueDictionary[str, RunHandle] = weakref.WeakValueDictionary()
        self._expected: set[str] = set()
        self._early: dict[str, RunResult] = {}
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def expecting(self, run_ids: Iterable[str]) -> Iterator[None]:
        """A call that starts (or resumes) ``run_ids`` and gives out their handles is under
        way: their ends are kept until then."""
        ids = list(run_ids)
        with self._lock:
            self._expected.update(ids)
        try:
            yield
        finally:
            with self._lock:
                for run_id in ids:
                    self._expected.discard(run_id)
                    self._early.pop(run_id, None)

    def given_out(self, handle: RunHandle) -> None:
        """(Any thread.) ``handle`` was given to a caller."""
        with self._lock:
            self._handles[handle.id] = handle
            result = self._early.pop(handle.id, None)
        if result is not None:
            handle._heard_ended(result)

    def heard(self, ended: Ended) -> None:
        """(A worker's reader thread.) Hand each result to its run's handle."""
        for result in ended.results:
            with self._lock:
                handle = self._handles.get(result.run_id)
                if handle is None and result.run_id in self._expected:
                    self._early[result.run_id] = result
            if handle is not None:
                handle._heard_ended(result)
