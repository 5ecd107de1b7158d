"""How a run's end travels from the pool worker that drove it to the host's handles.

A host waiting on thousands of runs its workers drive would otherwise read and fold each
run's log once to learn how it ended. The worker knows already: its runtime tells it each
run that ended (once that end is durable), and it sends the results, in batches, on the
protocol channel. The host hands each to the handle it gave out for that run, if one is
still held; a wait on a run whose end did not arrive reads the log as before.
"""

from __future__ import annotations

import queue
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable

from foldloop.core._state import RunState
from foldloop.runtime._pool_protocol import Ended
from foldloop.runtime._results import RunHandle, RunResult, is_final, result_of

__all__ = ["EndingsHeard", "EndingsSender"]

BATCH = 512
"""Results a line at most: a line stays small for the host's reader."""


class EndingsSender:
    """(Worker.) Collects the final states its runtime tells of and sends them as Ended
    lines from a thread of its own, as many a line as came meanwhile."""

    def __init__(self, send: Callable[[Ended], None]) -> None:
        self._send = send
        self._queue: queue.SimpleQueue[RunState | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="foldloop-endings", daemon=True)
        self._thread.start()

    def ended(self, state: RunState) -> None:
        """(Any thread; the runtime's ``on_ended``.) Queue it: a shard must not wait on a pipe."""
        self._queue.put(state)

    def close(self) -> None:
        """Send what is queued, then stop."""
        self._queue.put(None)
        self._thread.join()

    def _run(self) -> None:
        done = False
        while not done:
            batch: list[RunResult] = []
            item = self._queue.get()
            while True:
                if item is None:
                    done = True
                    break
                result = result_of(item)
                if is_final(result):  # another status can change: the host reads the log
                    batch.append(result)
                if len(batch) >= BATCH:
                    break
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
            if batch:
                self._send(Ended(batch))


class EndingsHeard:
    """(Host.) The handles a pool gave out, by run id, held weakly: a result that arrives
    for one a caller still holds is handed to it. One that arrives first (a quick run can
    end before the reply that started it is read) is kept for its handle, ``UNCLAIMED`` of
    them at most; any other is dropped."""

    UNCLAIMED = 1024

    def __init__(self) -> None:
        self._handles: weakref.WeakValueDictionary[str, RunHandle] = weakref.WeakValueDictionary()
        self._unclaimed: OrderedDict[str, RunResult] = OrderedDict()
        self._lock = threading.Lock()

    def given_out(self, handle: RunHandle) -> None:
        """(Any thread.) ``handle`` was given to a caller."""
        with self._lock:
            self._handles[handle.id] = handle
            result = self._unclaimed.pop(handle.id, None)
        if result is not None:
            handle.heard_ended(result)

    def heard(self, ended: Ended) -> None:
        """(A worker's reader thread.) Hand each result to its run's handle."""
        for result in ended.results:
            with self._lock:
                handle = self._handles.get(result.run_id)
                if handle is None:
                    self._unclaimed[result.run_id] = result
                    if len(self._unclaimed) > self.UNCLAIMED:
                        self._unclaimed.popitem(last=False)
            if handle is not None:
                handle.heard_ended(result)
