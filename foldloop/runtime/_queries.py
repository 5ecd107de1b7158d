"""What the runtime answers from the log without changing it: a run's events and state,
the run list, explanations, and who drives a run (replay checks: ``_replay_checks``)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator

import msgspec

from foldloop.actors._own_threads import calling, closed_says_so
from foldloop.actors._system import ActorSystem
from foldloop.core._batch import fold, fold_events
from foldloop.core._explain import (
    ORPHAN_QUEUED,
    ORPHAN_RUNNING,
    DecidedApproval,
    Explanation,
    explain,
    parked_reason,
)
from foldloop.core._snapshot import restore_state
from foldloop.core._state import STATE_VERSION, ChildLink, RunState, RunStatus
from foldloop.errors import (
    ConfigError,
    RunNotFound,
    StoreCorrupted,
)
from foldloop.events._catalogue import (
    RunStarted,
)
from foldloop.events._recorded import Recorded
from foldloop.runtime._registry import AgentRegistry
from foldloop.runtime._results import Damaged, RunSummary, RunTree
from foldloop.store import EventStore, WorkQueue

__all__ = ["Queries"]

PAGE = 1024
"""Records ``read_all`` reads in one transaction."""
STATE_BATCH = 512
"""Runs whose logs ``states`` reads in one transaction."""

_ORPHANED = {
    RunStatus.RUNNING: (RunStatus.INTERRUPTED, ORPHAN_RUNNING),
    RunStatus.QUEUED: (RunStatus.QUEUED, ORPHAN_QUEUED),
}
"""How a run nobody drives (or, queued, holds) is shown: status and reason."""


EXPLAIN_READS = 3
"""Reads of a run's log and approvals an explanation makes at most to see them agree."""
LAST_NUMBER = 2**63 - 1
"""Past any seq or position a log can reach: a larger start reads nothing, as this does."""


def checked_run_id(run_id: object) -> str:
    """``run_id`` if it is a run id (a non-empty str), else a ConfigError saying so; text
    no store key can hold (a lone surrogate: bytes of a non-UTF-8 argv) names no run."""
    if not isinstance(run_id, str) or not run_id:
        raise ConfigError(f"a run id is a non-empty str; got {run_id!r}")
    if not run_id.isascii():
        try:
            run_id.encode("utf-8")
        except UnicodeEncodeError:
            raise RunNotFound(run_id) from None
    return run_id


STRANDED_AFTER_S = 60.0
"""On a shared work queue, a queued run nobody holds is in the queue; one still there this
long after it was queued (its spawner died before it was queued, an admission failed and
its runtime died) is taken up like a dead runtime's queued run (``recover()``, a wait)."""


class Queries:
    """Reads of one runtime's store (``system`` says which runs this runtime drives)."""

    def __init__(
        self,
        store: EventStore,
        system: ActorSystem,
        agents: AgentRegistry,
        clock: Callable[[], int],
        check_open: Callable[[], None],
    ) -> None:
        self._store = store
        self._system = system
        self._agents = agents
        self._clock = clock
        self._check_open = check_open

    @property
    def store(self) -> EventStore:
        """The store these queries read."""
        return self._store

    def exists(self, run_id: str) -> bool:
        """The store holds events of the run."""
        return bool(self._store.head(checked_run_id(run_id)))

    def events(self, run_id: str, from_seq: int = 1) -> Iterator[Recorded]:
        """The run's recorded events from ``from_seq``."""
        checked_run_id(run_id)
        if not isinstance(from_seq, int) or isinstance(from_seq, bool) or from_seq < 1:
            raise ConfigError(f"from_seq must be an int >= 1; got {from_seq!r}")
        records = self._store.read(run_id, min(from_seq, LAST_NUMBER))
        if not records and not self._store.head(run_id):
            raise RunNotFound(run_id)
        return iter(records)

    def read_all(self, from_position: int = 1) -> Iterator[Recorded]:
        """The whole log in order, read in pages."""
        if (
            not isinstance(from_position, int)
            or isinstance(from_position, bool)
            or from_position < 1
        ):
            raise ConfigError(f"from_position must be an int >= 1; got {from_position!r}")
        return self._pages(min(from_position, LAST_NUMBER))

    def _pages(self, position: int) -> Iterator[Recorded]:
        while True:
            # A page is read after read_all() returned: a call on the runtime all the same,
            # which says so when the runtime closed meanwhile (before the read or under it).
            self._check_open()
            with calling(self._store), closed_says_so(self._check_open):
                page = self._store.read_all(position, limit=PAGE)
            for record in page:
                self._check_open()  # a loop read on past the close is told, whatever the page
                yield record
            if len(page) < PAGE:
                return
            position = page[-1].position + 1

    def state(self, run_id: str) -> RunState:
        """The run's state: its latest snapshot plus the events after it."""
        base = self._snapshot_state(checked_run_id(run_id))
        state = self._store.consume_events(
            run_id, lambda pairs: fold_events(run_id, pairs, base), base.seq + 1
        )
        if not state.seq:  # no snapshot and no event: no such run
            raise RunNotFound(run_id)
        return state

    def _snapshot_state(self, run_id: str) -> RunState:
        """The run's latest snapshot (an empty state when it has none or it is unreadable:
        a snapshot is a cache, the log is folded instead)."""
        try:
            snap = self._store.snapshot(run_id)
        except StoreCorrupted:
            return RunState(run_id=run_id)
        if snap is not None and snap[0] == STATE_VERSION:
            try:
                return restore_state(snap[2], snap[3])
            except msgspec.MsgspecError:
                pass
        return RunState(run_id=run_id)

    def states(self, run_ids: Iterable[str]) -> Iterator[RunState | Damaged]:
        """The states of many runs, reading the log in one transaction per batch; a run
        whose log is damaged gives what is wrong in its place, the others their state."""
        batch: list[str] = []
        for run_id in run_ids:
            batch.append(run_id)
            if len(batch) == STATE_BATCH:
                yield from self._state_batch(batch)
                batch = []
        if batch:
            yield from self._state_batch(batch)

    def _state_batch(self, run_ids: list[str]) -> Iterator[RunState | Damaged]:
        bases = {run_id: self._snapshot_state(run_id) for run_id in run_ids}
        try:
            tails = self._store.read_runs({rid: base.seq + 1 for rid, base in bases.items()})
        except StoreCorrupted:
            for run_id in run_ids:  # one at a time, so the damage is put on its own run
                try:
                    yield self.state(run_id)
                except StoreCorrupted as exc:
                    yield Damaged(run_id, exc)
                except RunNotFound:
                    yield Damaged.unreadable(run_id)
            return
        for run_id, base in bases.items():
            events, ats = tails[run_id]
            state = fold_events(run_id, zip(events, ats, strict=True), base)
            yield state if state.seq else Damaged.unreadable(run_id)

    def runs(
        self, status: RunStatus | str | None = None, agent: str | None = None
    ) -> list[RunSummary]:
        """Summaries of the runs in the store, optionally filtered by status and agent."""
        if agent is not None and not isinstance(agent, str):
            raise ConfigError(f"agent is an agent's name (a str); got {agent!r:.80}")
        try:
            wanted = RunStatus(status) if status is not None else None
        except ValueError:
            known = ", ".join(s.value for s in RunStatus)
            raise ConfigError(f"no run status {status!r}; the statuses are: {known}") from None
        out: list[RunSummary] = []
        alive: dict[str, bool] = {}
        for read in self.states(self._store.run_ids()):
            if isinstance(read, Damaged):
                if wanted in (None, RunStatus.FAILED) and agent is None:
                    out.append(read.summary())
                continue
            state, current, reason = self._shown(read, alive)
            run_id = state.run_id
            if wanted is not None and current is not wanted:
                continue
            if agent is not None and state.agent != agent:
                continue
            out.append(
                RunSummary(
                    run_id=run_id,
                    agent=state.agent,
                    status=current,
                    steps=state.steps,
                    reason=parked_reason(state, self.decided(state))
                    if current is RunStatus.AWAITING_APPROVAL
                    else reason,
                    seq=state.seq,
                    updated_at=state.last_at,
                    parent_run_id=state.parent_run_id or None,
                )
            )
        return out

    def _shown(self, state: RunState, alive: dict[str, bool]) -> tuple[RunState, RunStatus, str]:
        """The run as ``runs`` and ``tree`` show it: (its state, status, reason), one nobody
        drives shown interrupted (queued: held by nobody). ``alive``: owners found alive or
        not so far in this listing (a fleet's runs share a few: one look each, not one a
        run, which on a shared store is a round trip to its server)."""
        run_id = state.run_id
        current, reason = state.status, state.reason
        if current is RunStatus.QUEUED and self.in_shared_queue(run_id):
            reason = shared_queue_reason(state.agent)
        elif current in _ORPHANED and self.orphaned(run_id, alive):
            # Read again after the lease check: a run settles and gives its lease up in one
            # write, so one that did since the first read shows settled now.
            state = self.state(run_id)
            if state.status is current:  # else it moved on (settled, or was taken up)
                current, reason = _ORPHANED[current]
            else:
                current, reason = state.status, state.reason
        return state, current, reason

    def tree(self, run_id: str) -> RunTree:
        """The run and the child runs below it (``Runtime.tree``), each shown as ``runs``
        shows it."""
        return self._tree(self.state(run_id), "", {})

    def _tree(self, read: RunState, call_id: str, alive: dict[str, bool]) -> RunTree:
        state, status, reason = self._shown(read, alive)
        children = []
        for link in state.children:
            if self._store.head(link.run_id):
                children.append(self._tree(self.state(link.run_id), link.call_id, alive))
            elif not link.running:  # its log is elsewhere (an imported run): as recorded here
                children.append(
                    RunTree(
                        link.run_id,
                        link.agent,
                        _status(link.status),
                        steps=link.steps,
                        usage=link.usage,
                        call_id=link.call_id,
                    )
                )
            else:
                children.append(_unwritten(link, state.terminal, status))
        return RunTree(
            run_id=state.run_id,
            agent=state.agent,
            status=status,
            children=tuple(children),
            reason=reason,
            steps=state.steps,
            usage=state.usage,
            call_id=call_id,
        )

    def explain(self, run_id: str) -> Explanation:
        """Why the run is where it is and what to do, with the decisions the approvals
        table holds for calls it waits on and its log does not yet."""
        for _ in range(EXPLAIN_READS):
            records = list(self.events(run_id))
            state = fold(records)
            decided = self.decided(state)
            # the approvals table is read after the log: a decision carried in between
            # shows as applied there and not yet in ``state`` (read again, then)
            if self._store.head(run_id) == state.seq:
                break
        why = explain(state, records, orphaned=self.orphaned(run_id), decided=decided)
        if state.status is RunStatus.QUEUED and self.in_shared_queue(run_id):
            why = dataclasses.replace(
                why,
                reason=shared_queue_reason(state.agent),
                next_steps=(
                    "wait: a runtime with its agent takes it (foldloop worker URL --agents "
                    "MODULE:ATTR, or Runtime.open(URL, agents=[...]))",
                ),
            )
        if not any(c.running for c in state.children):
            return why
        # a tree waits on whatever waits below it: say where a person is needed
        pending: list[str] = []
        expired: list[str] = []  # their requests lapsed: only a resume asks again
        for node in self.tree(run_id).walk()[1:]:
            if node.status is RunStatus.AWAITING_APPROVAL:
                calls = self.state(node.run_id).calls
                asks = any(c.status == "awaiting_approval" for c in calls)
                (pending if asks else expired).append(node.run_id)
        steps = []
        if pending:
            runs = ", ".join(pending)
            steps.append(f"decide the pending approvals of {runs} below it (foldloop approvals)")
        if expired:
            runs = ", ".join(expired)
            steps.append(
                f"the approval requests of {runs} below it expired: rt.resume(<that run>) "
                "asks again with new tokens"
            )
        return dataclasses.replace(why, next_steps=(*steps, *why.next_steps))

    def decided(self, state: RunState) -> tuple[DecidedApproval, ...]:
        """Decisions recorded in the approvals table on calls ``state`` waits on, not yet
        carried into its log (the log is the truth: these only say what comes next); a
        request past its deadline counts as expired, as whoever drives the run next records
        it (it can no longer be decided)."""
        if state.status is not RunStatus.AWAITING_APPROVAL:
            return ()
        out = []
        now = self._clock()
        for call in state.calls:
            if call.status != "awaiting_approval":
                continue
            record = self._store.approval(state.run_id, call.call_id)
            if record is None or record.applied:
                continue
            if record.status != "pending":
                decided = DecidedApproval(
                    call_id=record.call_id,
                    outcome=record.status,
                    by=record.by,
                    at=record.decided_at,
                    note=record.note,
                )
            elif record.lapsed(now):
                decided = DecidedApproval(
                    call_id=record.call_id, outcome="expired", by="", at=record.expires_at
                )
            else:
                continue
            out.append(decided)
        return tuple(out)

    def root_of(self, run_id: str, known: dict[str, str]) -> str:
        """The root of the run's tree: its ``parent_run_id`` followed up to a run without
        one (or whose parent this store does not hold). ``known`` (run -> root) is read and
        filled, so many lookups in one listing read each run.started once."""
        chain: list[str] = []
        current = run_id
        while current not in known:
            chain.append(current)
            parent = self._parent(current)
            if not parent or parent in chain or not self._store.head(parent):
                known[current] = current
                break
            current = parent
        root = known[current]
        for member in chain:
            known[member] = root
        return root

    def _parent(self, run_id: str) -> str:
        records = self._store.read(run_id, 1, 1)
        if records and isinstance(records[0].event, RunStarted):
            return records[0].event.parent_run_id or ""
        return ""

    def in_shared_queue(self, run_id: str) -> bool:
        """Queued on a store's shared work queue and not taken yet (nobody holds it)."""
        if not isinstance(self._store, WorkQueue):
            return False
        lease = self._store.lease(run_id)
        return lease is None or not lease.owner

    def orphaned(self, run_id: str, alive: dict[str, bool] | None = None) -> bool:
        """Neither an actor here nor a live runtime anywhere drives the run (or, for a
        queued run, holds it; on a shared work queue, a run nobody holds is held there).
        ``alive``: owners already looked at, and where to note the one looked at now."""
        if self._system.active(run_id):
            return False
        lease = self._store.lease(run_id)
        if lease is not None and lease.owner:
            known = alive if alive is not None else {}
            if lease.owner not in known:
                known[lease.owner] = self._store.owner_alive(lease.owner)
            return not known[lease.owner]
        if isinstance(self._store, WorkQueue):
            state = self.state(run_id)
            return state.status is not RunStatus.QUEUED or self.stranded(state)
        return True

    def still_for(self, state: RunState) -> float:
        """Seconds since the run's last event (by this runtime's clock)."""
        return (self._clock() - state.last_at) / 1e9

    def stranded(self, state: RunState) -> bool:
        """A queued run on a shared work queue that nobody has taken for STRANDED_AFTER_S
        (whoever holds it, if anyone, is for the caller to ask)."""
        return (
            isinstance(self._store, WorkQueue)
            and state.status is RunStatus.QUEUED
            and self.still_for(state) > STRANDED_AFTER_S
        )

    def driven(self, run_id: str) -> bool:
        """A live runtime holds the run's lease."""
        lease = self._store.lease(run_id)
        return lease is not None and bool(lease.owner) and self._store.owner_alive(lease.owner)

    def driven_by_another(self, run_id: str) -> bool:
        """A live runtime other than this one holds the run's lease."""
        lease = self._store.lease(run_id)
        return (
            lease is not None
            and lease.owner not in ("", self._system.owner)
            and self._store.owner_alive(lease.owner)
        )


def shared_queue_reason(agent: str) -> str:
    """How a run waiting on a shared work queue is shown."""
    return f"queued until a runtime with agent {agent!r} takes it from the store's work queue"


def _status(recorded: str) -> RunStatus:
    """A child's status as its parent recorded it (one a newer version wrote reads as failed,
    not as an error from ``tree``)."""
    try:
        return RunStatus(recorded)
    except ValueError:
        return RunStatus.FAILED


def _unwritten(link: ChildLink, parent_ended: bool, parent: RunStatus) -> RunTree:
    """A child whose start its parent recorded and a crash kept from being written: it never
    ran if the parent ended, is interrupted with a parent nothing drives (``recover()``
    starts both), else runs (its parent's runtime writes it)."""
    if parent_ended:
        status = RunStatus.CANCELLED
        why = "never started: its parent ended before the child's start was written"
    elif parent is RunStatus.INTERRUPTED:
        status, why = parent, "its start was never written and nothing drives its parent"
    else:
        status, why = RunStatus.RUNNING, ""
    return RunTree(link.run_id, link.agent, status, reason=why, call_id=link.call_id)
