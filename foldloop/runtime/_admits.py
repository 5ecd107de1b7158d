"""Starting queued runs whose turn came (``Admission``'s work, on its thread), several at
once: their leases, then their ``run.admitted``, are written together and share commits
(one after another, each run would wait on two commits of its own)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from foldloop._agent import Agent
from foldloop._log import get_logger
from foldloop.actors._system import HANDOVER_WAIT, ActorSystem
from foldloop.core._commands import Admit
from foldloop.core._decide import decide
from foldloop.core._effects import Decision
from foldloop.core._state import RunState, RunStatus
from foldloop.errors import RunLocked, StoreCorrupted, StoreError
from foldloop.runtime._driving import drive
from foldloop.runtime._queries import Queries
from foldloop.runtime._registry import AgentRegistry
from foldloop.runtime._results import Damaged
from foldloop.runtime._rules import evolve_all
from foldloop.runtime._writes import RunWrites, together
from foldloop.store import EventStore, Pending

__all__ = ["Admits"]

log = get_logger("foldloop.runtime")


@dataclass(frozen=True)
class _Admitted:
    """A run whose ``run.admitted`` is being written: what driving it takes once it lands."""

    agent: Agent
    state: RunState  # with the admission applied
    epoch: int
    decision: Decision
    settles: bool
    write: Pending[Any]


class Admits:
    """Admits queued runs for the runtime ``owner``."""

    def __init__(
        self,
        *,
        store: EventStore,
        system: ActorSystem,
        queries: Queries,
        agents: AgentRegistry,
        writes: RunWrites,
        clock: Callable[[], int],
        owner: str,
    ) -> None:
        self._store = store
        self._system = system
        self._queries = queries
        self._agents = agents
        self._writes = writes
        self._clock = clock
        self._owner = owner

    def admit(self, run_ids: Sequence[str]) -> list[str]:
        """Start these queued runs, in this order: take each, record ``run.admitted`` and
        hand it to an actor. A run cancelled meanwhile is left as it is; one a live runtime
        took is skipped. Returns those the store failed (their turn comes again)."""
        retry: list[str] = []
        admitted = self._record(self._take(run_ids, retry), retry)
        for run in admitted:
            try:
                run.write.wait()
            except Exception as exc:
                self._system.give_back(run.state.run_id, run.epoch)
                _failed(run.state.run_id, exc, retry)
                continue
            log.info("run_admitted", run_id=run.state.run_id, agent=run.agent.name)
            try:  # a failure gives the claim back (the runtime closed): the others go on
                drive(
                    self._system,
                    run.agent,
                    run.state,
                    run.epoch,
                    run.decision,
                    released=run.settles,
                )
            except Exception as exc:
                _failed(run.state.run_id, exc, retry)
        return retry

    def _take(self, run_ids: Sequence[str], retry: list[str]) -> list[tuple[str, int]]:
        """Claim the runs and take their leases, together; (run id, epoch) of those taken."""
        leases: list[tuple[str, Pending[int]]] = []
        with together(self._store, len(run_ids)):
            for run_id in run_ids:
                try:
                    self._system.claim(run_id, wait=HANDOVER_WAIT)
                except RunLocked as exc:
                    _failed(run_id, exc, retry)
                    continue
                try:
                    leases.append((run_id, self._store.acquire_lease(run_id, self._owner)))
                except Exception as exc:  # refused before it began (the store closed)
                    self._system.unclaim(run_id)
                    _failed(run_id, exc, retry)
        taken: list[tuple[str, int]] = []
        for run_id, lease in leases:
            try:
                taken.append((run_id, lease.wait()))
            except Exception as exc:
                self._system.unclaim(run_id)
                _failed(run_id, exc, retry)
        return taken

    def _record(self, taken: list[tuple[str, int]], retry: list[str]) -> list[_Admitted]:
        """Begin writing each taken run's ``run.admitted``, together (a run no longer
        queued, or unreadable, is given back)."""
        try:
            states = list(self._queries.states([run_id for run_id, _ in taken]))
        except Exception as exc:
            for run_id, epoch in taken:
                self._system.give_back(run_id, epoch)
                _failed(run_id, exc, retry)
            return []
        admitted: list[_Admitted] = []
        with together(self._store, len(taken)):
            for (run_id, epoch), state in zip(taken, states, strict=True):
                agent = None if isinstance(state, Damaged) else self._agents.named(state.agent)
                if isinstance(state, Damaged):
                    log.warning("admission_skipped", run_id=run_id, error=str(state.error))
                if isinstance(state, Damaged) or state.status is not RunStatus.QUEUED or not agent:
                    self._system.give_back(run_id, epoch)  # cancelled meanwhile, or unreadable
                    continue
                try:
                    admitted.append(self._begin(agent, state, epoch))
                except Exception as exc:
                    self._system.give_back(run_id, epoch)
                    _failed(run_id, exc, retry)
        return admitted

    def _begin(self, agent: Agent, state: RunState, epoch: int) -> _Admitted:
        command = Admit(now=self._clock(), owner=self._owner)
        decision = decide(state, command)
        settles = decision.settles  # a ceiling reached before its first model call
        write = self._writes.begin_decisions(state, [(decision, command)], epoch, release=settles)
        after = evolve_all(state, decision, command.now)
        return _Admitted(agent, after, epoch, decision, settles, write)


def _failed(run_id: str, exc: Exception, retry: list[str]) -> None:
    """A run that could not be admitted now: skipped (a live runtime took it, or its log is
    damaged), tried again later (the store failed: the queue waits for it), or logged."""
    if isinstance(exc, RunLocked):  # a live runtime recovered it, having found this one dead
        log.warning("admission_skipped", run_id=run_id, error=str(exc))
    elif isinstance(exc, StoreCorrupted):  # asking again cannot help, and would hold the queue
        log.error("admission_skipped", run_id=run_id, error=str(exc))
    elif isinstance(exc, StoreError):
        log.info("admission_store_failed", run_id=run_id, error=str(exc))
        retry.append(run_id)
    else:
        log.error("admission_failed", run_id=run_id, error=repr(exc))
