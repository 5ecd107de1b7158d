"""Taking up the runs a runtime left behind (it died, or closed with runs under way):
``recover()`` for all of them, and one at a time for a ``wait()`` that found its run so."""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Literal

from foldloop._log import get_logger
from foldloop.actors._system import ActorSystem
from foldloop.core._state import RunState, RunStatus
from foldloop.errors import (
    ConfigError,
    FoldloopError,
    RunLocked,
    SchemaChangedError,
    StoreCorrupted,
)
from foldloop.runtime._admission import Admission
from foldloop.runtime._queries import Queries
from foldloop.runtime._registry import AgentRegistry
from foldloop.runtime._results import Damaged
from foldloop.runtime._trees import TreeWork
from foldloop.runtime._writes import together
from foldloop.store import EventStore, WorkQueue

__all__ = ["Recovery"]

log = get_logger("foldloop.runtime")

_Recovered = Literal["resumed", "taken", "moved", "unreadable"]
"""What a recovery did with one orphaned run: resumed here, taken by another runtime first,
moved on since it was read (ended, parked), or unreadable."""

LAST_POSITION = 2**63 - 1
RESUMES_AT_ONCE = 32
"""Orphans ``recover()`` resumes at once: each waits on two commits (its lease, its
resume), which those under way together share (one after another: thousands of fsyncs)."""


class Recovery:
    """Recovery for the runtime ``owner``: resumes the orphaned runs of agents known here,
    queues their queued ones here in spawn order, cancels what their trees gave up."""

    def __init__(
        self,
        *,
        store: EventStore,
        system: ActorSystem,
        queries: Queries,
        agents: AgentRegistry,
        trees: TreeWork,
        clock: Callable[[], int],
        owner: str,
        admission: Admission,
        resume: Callable[[str], str],
        cancel_child: Callable[[str, str], None],
    ) -> None:
        self._store = store
        self._system = system
        self._queries = queries
        self._agents = agents
        self._trees = trees
        self._clock = clock
        self._owner = owner
        self._admission = admission
        self._resume = resume
        """Resumes a run as it stands (no limits extended)."""
        self._cancel_child = cancel_child
        self._shared = store if isinstance(store, WorkQueue) else None
        self._unknown_said: set[str] = set()
        """Agents whose runs a recover left, said once (a worker recovers every few s)."""
        self._taking_queue = threading.Lock()

    def recover(self) -> list[str]:
        """Resume every run left running by a runtime that died, for agents known here, and
        queue the runs it had queued behind those waiting here, in the order they started."""
        running: list[RunState] = []
        queued: list[str] = []
        orphans = []
        released: set[str] = set()  # queued runs nobody holds: on a shared queue, still there
        unknown: collections.Counter[str] = collections.Counter()  # runs left, by agent
        leases = self._store.leases()
        alive = {self._owner: True}  # each owner asked about once a scan (JetStream: a request)
        for run_id in self._store.run_ids():
            if self._system.active(run_id):
                continue
            lease = leases.get(run_id)
            try:
                if lease is None:  # never leased, started since, or damaged: read it alone
                    lease = self._store.lease(run_id)
            except StoreCorrupted as exc:
                log.warning("recover_skipped", run_id=run_id, error=str(exc))
                continue
            if lease is not None and lease.owner:
                if lease.owner not in alive:
                    alive[lease.owner] = self._store.owner_alive(lease.owner)
                if alive[lease.owner]:
                    continue
            if lease is not None and not lease.owner:
                released.add(run_id)
            orphans.append(run_id)
        for state in self._queries.states(orphans):
            if isinstance(state, Damaged):
                log.warning("recover_skipped", run_id=state.run_id, error=str(state.error))
                continue
            if self._agents.named(state.agent) is None:
                if state.status in (RunStatus.RUNNING, RunStatus.QUEUED):  # else nothing left
                    unknown[state.agent] += 1
                continue
            ended = self._trees.cancel_reason(state)
            if ended is not None:  # a cascade cut short, or a child its parent gave up on
                self._cancel_child(state.run_id, ended)
                continue
            if state.status is RunStatus.QUEUED:
                stranded = self._queries.stranded(state)
                if self._shared is None or state.run_id not in released or stranded:
                    queued.append(state.run_id)
                continue
            running.append(state)
        new = collections.Counter({a: n for a, n in unknown.items() if a not in self._unknown_said})
        if new:
            named = dict(new.most_common(10))  # the rest are named by a later recover
            self._unknown_said.update(named)
            log.warning(
                "recover_left_runs_of_unknown_agents",
                runs=sum(named.values()),
                agents=named,
                advice="open a runtime with these agents (or register them) and recover there",
            )
        return self._resume_all(running) + self.take_queued(queued)

    def _resume_all(self, states: list[RunState]) -> list[str]:
        """Resume orphans that were running, RESUMES_AT_ONCE at a time; the ids of those
        resumed, in the order given (the first error is raised once all were tried)."""
        if len(states) < 2:
            outcomes = [self._resume_orphan(state) for state in states]
        else:
            threads = min(RESUMES_AT_ONCE, len(states))
            with ThreadPoolExecutor(threads, thread_name_prefix="foldloop-recover") as pool:
                futures = [pool.submit(self._resume_orphan, state) for state in states]
            outcomes = [future.result() for future in futures]  # all ended: the first error
        return [
            s.run_id for s, outcome in zip(states, outcomes, strict=True) if outcome == "resumed"
        ]

    def take_up_orphan(self, run_id: str) -> bool:
        """Recover one run that a wait found nobody driving (or, queued, holding), as
        ``recover`` would, if its agent is known here: True if it moves on (resumed or
        queued here, cancelled with its tree, or taken up by another runtime first)."""
        if self._system.closed:
            return False
        state = self._queries.state(run_id)
        if self._agents.named(state.agent) is None:
            return False
        if not self._queries.orphaned(run_id):
            return True  # someone took it up meanwhile
        ended = self._trees.cancel_reason(state)
        if ended is not None:
            self._cancel_child(run_id, ended)
            return True
        if state.status is RunStatus.QUEUED:
            with self._taking_queue:  # one wait takes a queue up; the others find theirs taken
                if self._queries.orphaned(run_id):
                    self.take_queued(self._queue_left_with(run_id))
            return True  # queued here now, or another runtime took it first
        return self._resume_orphan(state) != "unreadable"

    def _queue_left_with(self, run_id: str) -> list[str]:
        """The queued runs (of agents known here) that the runtime holding ``run_id`` left
        behind with it: taken up together, they queue here in spawn order, as recover()
        would queue them, whichever of them is waited on first."""
        leases = self._store.leases()
        lease = leases.get(run_id) or self._store.lease(run_id)  # left out of them: damaged
        if lease is None or not lease.owner:
            return [run_id]
        left = [
            other
            for other, held in leases.items()
            if held.owner == lease.owner and not self._system.active(other)
        ]
        queued = [
            state.run_id
            for state in self._queries.states(left)
            if not isinstance(state, Damaged)
            and state.status is RunStatus.QUEUED
            and self._agents.named(state.agent) is not None
        ]
        return queued if run_id in queued else [run_id, *queued]

    def _resume_orphan(self, state: RunState) -> _Recovered:
        """Resume an orphaned run that was running: "resumed", "taken" (another runtime
        was first), "moved" (it moved on since it was read: ended, parked) or "unreadable"."""
        if state.status is not RunStatus.RUNNING:
            return "moved"
        try:
            self._resume(state.run_id)
        except RunLocked:
            return "taken"
        except ConfigError as exc:
            log.info("recover_skipped", run_id=state.run_id, error=str(exc))
            return "moved"
        except (SchemaChangedError, StoreCorrupted) as exc:
            log.warning("recover_skipped", run_id=state.run_id, error=str(exc))
            return "unreadable"
        return "resumed"

    def take_queued(self, run_ids: list[str]) -> list[str]:
        """Take the leases of queued runs (whose runtime died, or from a shared work queue)
        and queue them here in the order they were started (their run.started's log
        position): spawn order. Runs a live runtime holds are left to it."""
        with together(self._store, len(run_ids)):  # asked all at once: they share commits
            taking = [(r, self._store.acquire_lease(r, self._owner)) for r in run_ids]
        taken: list[str] = []
        for run_id, op in taking:
            try:
                op.wait()
            except RunLocked:
                continue  # another runtime recovered it first
            except FoldloopError as exc:  # left queued: a later recover() takes it
                log.warning("queued_run_not_taken", run_id=run_id, error=str(exc))
                continue
            taken.append(run_id)
        taken.sort(key=self._started_at)
        if taken:
            self._admission.enqueue(taken)
            log.info("runs_requeued", count=len(taken))
        return taken

    def _started_at(self, run_id: str) -> int:
        """The log position of the run's run.started (what spawn order is)."""
        first = self._store.read(run_id, 1, 1)
        return first[0].position if first else LAST_POSITION
