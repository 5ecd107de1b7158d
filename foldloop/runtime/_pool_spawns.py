"""A WorkerPool's spawns, which a worker's death neither loses nor duplicates.

The host names every run before it sends the request (a new run id, or the caller's). When
the worker dies with the request in flight, the log says which of those runs started: they
stand (the pool's replacement worker recovers them), and only the others are sent again,
under the same ids, to a live worker; at most ``ATTEMPTS`` times, then a WorkerError says
which inputs have a run (``started``) and which do not (``missing``). When a worker refuses
a request (its runtime closing, the store failing), the log says too which of its runs
started; nothing more is sent, and once the requests in flight are answered a SpawnError
says the same for the whole call.

A worker killed inside a commit, after LMDB wrote the commit's meta page and before it
published the new transaction id in its lock file, leaves a commit that is stored but that
no read sees until some process next takes LMDB's write lock (the one that does finds the
lock's owner dead and publishes the newest meta page). So the host commits once itself
(``EventStore.flush``) before it reads what the dead worker started: read before that, a
run the worker did start would be sent again, and refused as one that already exists.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, TypeVar

from foldloop._log import get_logger
from foldloop.errors import ConfigError, FoldloopError, WorkerError
from foldloop.events import RunStarted
from foldloop.runtime._rules import partly_spawned
from foldloop.store import EventStore

__all__ = ["ATTEMPTS", "Spawns"]

log = get_logger(__name__)

ATTEMPTS = 3
"""Sends of one input at most: a worker dying under each of them is no chance event."""
SETTLE_WAIT_S = 30.0
"""Seconds the host's own commit after a worker's death may wait for the store's write
lock (behind the live workers' commits) before the log is read all the same."""

REPLICA_PAUSES_S = (0.05, 0.2, 1.0)
"""Pauses before reading again a run's first record that a replica did not have yet."""

H = TypeVar("H")


def started_since(
    store: EventStore, run_ids: Sequence[str], mark: int, ours: Callable[[RunStarted], bool]
) -> set[str]:
    """Those of ``run_ids`` whose run.started is in the log past position ``mark`` and is
    ``ours`` (what was sent). The head decides whether a run exists (a JetStream store reads
    it from the stream's leader; a read of the first record may be served by a replica that
    is behind, and is tried again)."""
    started: set[str] = set()
    for run_id in run_ids:
        if store.head(run_id) == 0:
            continue
        first = store.read(run_id, 1, 1)
        for pause in REPLICA_PAUSES_S:
            if first:
                break
            time.sleep(pause)
            first = store.read(run_id, 1, 1)
        if not first:  # it exists, its start unread: sending it again could only double it
            started.add(run_id)
            continue
        start = first[0]
        if isinstance(start.event, RunStarted) and start.position > mark and ours(start.event):
            started.add(run_id)
    return started


@dataclass(frozen=True)
class _Batch:
    """Inputs sent together (their indices in the call), the answer awaited, which send."""

    indices: list[int]
    answer: Future[Any]
    attempt: int


class Spawns:
    """The runs of one ``spawn`` or ``spawn_many`` call, each named before it is sent.

    ``send(indices)`` sends the inputs at those indices (under ``run_ids[i]``) to a live
    worker and returns the future of its answer. ``mark`` is the log's last position before
    anything was sent, and ``ours`` says whether a run.started is what was sent: a run id the
    caller chose may have a run already, or another caller's started meanwhile, which is not
    ours (then it is sent again and refused as a run id in use).
    """

    def __init__(
        self,
        store: EventStore,
        run_ids: list[str],
        send: Callable[[list[int]], Future[Any]],
        *,
        call: str,
        mark: int = 0,
        ours: Callable[[RunStarted], bool] = lambda started: True,
    ) -> None:
        self.run_ids = run_ids
        self._store = store
        self._send = send
        self._call = call
        self._mark = mark
        self._ours = ours
        self._started = [False] * len(run_ids)
        self._death: WorkerError | None = None
        """The last death under inputs that ran out of attempts (None while none has)."""
        self._refusal: FoldloopError | None = None
        """The first refusal of a request by a worker (None while none was refused)."""

    def run(self, chunks: Iterable[list[int]], window: int, handle: Callable[[str], H]) -> list[H]:
        """Send the chunks, at most ``window`` in flight; the handles, in input order, once
        every run.started is durable. Once every request in flight is settled: WorkerError
        when some inputs ran out of attempts; a worker's refusal as it is when none of the
        call's runs started (or it spawns one run), else SpawnError saying which did."""
        in_flight: collections.deque[_Batch] = collections.deque()
        for chunk in chunks:
            while len(in_flight) >= window and not self._stopped:
                self._settle_next(in_flight)
            if self._stopped:
                break  # workers keep dying, or refuse: send no more, so that the error is soon
            in_flight.append(self._send_batch(chunk, 1))
        while in_flight:
            self._settle_next(in_flight)
        if self._death is not None:
            raise self._given_up(handle) from self._death
        if self._refusal is not None:
            started, missing = self._split(handle)
            if self._call == "spawn" or not started:
                raise self._refusal
            total = len(self.run_ids)
            raise partly_spawned(total, started, missing, self._refusal) from self._refusal
        return [handle(run_id) for run_id in self.run_ids]

    @property
    def _stopped(self) -> bool:
        return self._death is not None or self._refusal is not None

    def _send_batch(self, indices: list[int], attempt: int) -> _Batch:
        try:
            answer = self._send(indices)
        except (WorkerError, ConfigError) as exc:  # no worker to take it, or the pool closed
            answer = Future()
            answer.set_exception(exc)
        return _Batch(indices, answer, attempt)

    def _settle_next(self, in_flight: collections.deque[_Batch]) -> None:
        """Wait for the oldest batch; what of it did not start goes to the back, resent."""
        batch = in_flight.popleft()
        try:
            batch.answer.result()
        except WorkerError as exc:
            again = self._after_death(batch, exc)
            if again is not None:
                in_flight.append(again)
            return
        except FoldloopError as exc:  # refused: which of its runs started is the log's to say
            log.warning("pool_spawns_refused", call=self._call, error=str(exc))
            self._refusal = self._refusal or exc
            ids = [self.run_ids[i] for i in batch.indices]
            started = started_since(self._store, ids, self._mark, self._ours)
            for index in batch.indices:
                self._started[index] = self.run_ids[index] in started
            return
        for index in batch.indices:
            self._started[index] = True

    def _after_death(self, batch: _Batch, death: WorkerError) -> _Batch | None:
        """The log's word on a batch whose worker died: its started runs stand, the rest is
        resent (None once nothing is left to send, or its attempts are used up)."""
        ids = [self.run_ids[i] for i in batch.indices]
        # a commit of ours takes the write lock: it publishes what the dead worker stored last
        if not self._store.flush(SETTLE_WAIT_S):
            log.warning("pool_spawns_store_unsettled", call=self._call, waited=SETTLE_WAIT_S)
        started = started_since(self._store, ids, self._mark, self._ours)
        missing = [i for i in batch.indices if self.run_ids[i] not in started]
        for index in batch.indices:
            self._started[index] = self.run_ids[index] in started
        log.warning(
            "pool_spawns_lost_their_worker",
            call=self._call,
            started=len(started),
            resent=len(missing) if batch.attempt < ATTEMPTS else 0,
            attempt=batch.attempt,
            error=str(death),
        )
        if not missing or self._refusal is not None:
            return None  # after a refusal nothing is sent again: the inputs stay missing
        if batch.attempt >= ATTEMPTS:
            self._death = death
            return None
        return self._send_batch(missing, batch.attempt + 1)

    def _split(self, handle: Callable[[str], H]) -> tuple[tuple[H, ...], tuple[int, ...]]:
        """The handles of the runs that started, in input order, and the indices of the
        inputs that have none."""
        started = tuple(handle(r) for r, ok in zip(self.run_ids, self._started, strict=True) if ok)
        return started, tuple(i for i, ok in enumerate(self._started) if not ok)

    def _given_up(self, handle: Callable[[str], H]) -> WorkerError:
        """The error for inputs that ran out of attempts, with what did start."""
        started, missing = self._split(handle)
        died = f"worker processes died under this {self._call} {_times(ATTEMPTS)}"
        if self._call == "spawn":
            fact = f"{died}: its run ({self.run_ids[0]}) did not start"
            advice = "spawning it again is safe"
        else:
            fact = (
                f"{died}: {len(started)} of {len(self.run_ids)} runs started (their "
                "handles are this error's .started, in input order; the pool's workers "
                f"drive them) and the inputs at .missing ({len(missing)}) have no run"
            )
            advice = "spawning only those again is safe"
        return WorkerError(fact, advice=advice, started=started, missing=missing)


def _times(n: int) -> str:
    return {1: "once", 2: "twice"}.get(n, f"{n} times")
