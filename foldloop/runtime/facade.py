"""Runtime: the host-facing facade (DESIGN.md section 6).

It opens the store, holds an owner lock (so a crash frees its runs at once), and wires
commands from host code to the pure core and the actors. A run is driven by one runtime
at a time through a lease with a growing epoch; every append checks the epoch in the
same write transaction, so a fenced-off runtime can never interleave its writes.
"""

from __future__ import annotations

import secrets
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import msgspec

from foldloop._closing import ClosedOnExit
from foldloop._log import get_logger
from foldloop.actors.followers import Followers
from foldloop.actors.projection_actor import ProjectionHandle
from foldloop.actors.system import HANDOVER_WAIT, ActorSystem
from foldloop.agent import Agent
from foldloop.approvals import PendingApproval, approval_writes
from foldloop.core.batch import fold, fold_events
from foldloop.core.commands import (
    Cancel,
    Command,
    Resume,
    Start,
)
from foldloop.core.decide import decide
from foldloop.core.effects import Decision, RequestApproval
from foldloop.core.explain import Explanation, explain
from foldloop.core.replay import replay
from foldloop.core.snapshot import restore_state
from foldloop.core.state import STATE_VERSION, RunState, RunStatus
from foldloop.errors import (
    ConfigError,
    FoldloopError,
    RunLocked,
    RunNotFound,
    SchemaChangedError,
    StoreCorrupted,
    StoreError,
)
from foldloop.events.catalogue import RunStarted
from foldloop.events.jsonl import dump_run, load_run
from foldloop.events.recorded import Recorded, UnknownEvent
from foldloop.events.values import Limits
from foldloop.projections.base import Projection
from foldloop.runtime.approval_desk import ApprovalDesk
from foldloop.runtime.results import (
    Damaged,
    RunHandle,
    RunResult,
    RunSummary,
    result_of,
)
from foldloop.runtime.rules import (
    check_run_id,
    check_spawn,
    evolve_all,
    merged,
    priced_limits,
    tool_drift,
)
from foldloop.store.layout import Payload
from foldloop.store.lmdb_store import DEFAULT_MAP_SIZE, LmdbStore, WriteTxn, encode_all, open_store
from foldloop.store.owners import OwnerLock

__all__ = ["Runtime"]

log = get_logger(__name__)

LEASE_RELEASE_GRACE = 1.0
"""Seconds a wait on a run settled in another process waits for that process to release
the run's lease before returning. A run releases it in the transaction that settles it,
except after a ``resume`` that parks it again at once with nothing decided meanwhile: that
release goes with the resuming process's next commit, within milliseconds."""


class Runtime(ClosedOnExit):
    """Runs agents on an LMDB store. Use ``Runtime.open(path, agents=[...])``."""

    def __init__(
        self,
        store: LmdbStore,
        *,
        agents: Iterable[Agent] = (),
        clock: Callable[[], int] = time.time_ns,
        snapshot_every: int = 200,
        on_state: Callable[[RunState], None] | None = None,
        poll_interval: float = 0.1,
    ) -> None:
        self.store = store
        self.clock = clock
        self.owner = uuid.uuid4().hex[:16]
        self._agents: dict[str, Agent] = {}
        for agent in agents:
            self.register(agent)
        self._owner_lock = OwnerLock(store.owners_dir, self.owner)
        self.system = ActorSystem(
            store, self.owner, clock, snapshot_every=snapshot_every, on_state=on_state
        )
        self._closed = False
        self._poll_interval = poll_interval
        self._stop_polling = threading.Event()
        self.followers = Followers(store, clock)
        self.desk = ApprovalDesk(self)
        self._poller = threading.Thread(target=self._poll, name="foldloop-poller", daemon=True)
        self._poller.start()
        log.info("runtime_opened", path=str(store.path), owner=self.owner)

    @classmethod
    def open(
        cls,
        path: str | Path = ".foldloop",
        *,
        agents: Iterable[Agent] = (),
        clock: Callable[[], int] | None = None,
        map_size: int = DEFAULT_MAP_SIZE,
        snapshot_every: int = 200,
        on_state: Callable[[RunState], None] | None = None,
        create: bool = True,
        poll_interval: float = 0.1,
    ) -> Runtime:
        """Open (creating if absent) the store directory at ``path`` and start a runtime.

        ``clock`` returns unix ns (inject one in tests); ``snapshot_every`` bounds how many
        events a resume folds; ``on_state`` observes every state a run actor reaches;
        ``create=False`` refuses to create a missing store (read-only tools use it).
        """
        if not isinstance(snapshot_every, int) or snapshot_every < 0:
            raise ConfigError(f"snapshot_every must be an int >= 0; got {snapshot_every!r}")
        store = open_store(path, map_size=map_size, create=create)
        try:
            return cls(
                store,
                agents=agents,
                clock=clock or time.time_ns,
                snapshot_every=snapshot_every,
                on_state=on_state,
                poll_interval=poll_interval,
            )
        except BaseException:
            store.close()
            raise

    def close(self) -> None:
        """Stop driving runs (they stay resumable), commit what is queued, release the store."""
        if self._closed:
            return
        self._closed = True
        self._stop_polling.set()
        self._poller.join(timeout=5)
        self.followers.close()
        self.system.stop()
        self._owner_lock.release()
        self.store.close()
        log.info("runtime_closed", owner=self.owner)

    # -- agents --------------------------------------------------------------------------

    def register(self, agent: Agent) -> None:
        """Make ``agent`` known, so its runs can be resumed and recovered here."""
        if not isinstance(agent, Agent):
            raise ConfigError(f"expected an fl.Agent, got {type(agent).__name__}")
        known = self._agents.get(agent.name)
        if known is not None and known is not agent:
            raise ConfigError(
                f"another agent named {agent.name!r} is already registered with this runtime"
            )
        self._agents[agent.name] = agent

    def agent_named(self, name: str) -> Agent | None:
        """The agent registered here under ``name`` (None if this runtime does not know it)."""
        return self._agents.get(name)

    @property
    def closed(self) -> bool:
        """True once ``close()`` was called."""
        return self._closed

    def _agent_for(self, state: RunState) -> Agent:
        agent = self._agents.get(state.agent)
        if agent is None:
            raise ConfigError(
                f"run {state.run_id!r} belongs to agent {state.agent!r}, which this runtime does "
                f"not know; open it with Runtime.open(..., agents=[<the {state.agent!r} agent>])"
            )
        if agent.tools_digest != state.tools_digest:
            raise SchemaChangedError(tool_drift(state, agent))
        return agent

    # -- spawning ------------------------------------------------------------------------

    def spawn(
        self,
        agent: Agent,
        input: str,
        *,
        run_id: str | None = None,
        metadata: Mapping[str, str] | None = None,
        parent_run_id: str | None = None,
    ) -> RunHandle:
        """Start a run of ``agent`` on ``input``; returns once run.started is durable."""
        self.check_open()
        self.register(agent)
        check_spawn(input, run_id, metadata, parent_run_id)
        run_id = run_id if run_id is not None else f"{agent.name}-{secrets.token_hex(6)}"
        meta = tuple(sorted((metadata or {}).items()))
        now = self.clock()
        command = agent.start(
            input,
            now=now,
            metadata=meta,
            parent_run_id=parent_run_id,
            limits=priced_limits(agent, now),
        )
        decision = decide(RunState(run_id=run_id), command)
        payloads = encode_all(decision.events, command.now)
        owner = self.owner
        settles = decision.settles

        def start(w: WriteTxn) -> int:
            if w.head(run_id).seq:
                raise ConfigError(
                    f"run {run_id!r} already exists; resume it with rt.resume({run_id!r}) "
                    "or spawn with another run_id"
                )
            epoch = w.acquire_lease(run_id, owner)
            w.append(run_id, payloads, expected_seq=0, owner=owner, epoch=epoch)
            if settles:  # it ends or parks at once: the lease goes with its first events
                w.release_lease(run_id, owner, epoch)
            return epoch

        self.system.claim(run_id)
        try:
            epoch = self.store.submit(start).wait()
        except BaseException:
            self.system.unclaim(run_id)
            raise
        state = evolve_all(RunState(run_id=run_id), decision, command.now)
        log.info("run_started", run_id=run_id, agent=agent.name)
        self.drive(agent, state, epoch, decision, released=settles)
        return RunHandle(self, run_id)

    def drive(
        self,
        agent: Agent,
        state: RunState,
        epoch: int,
        decision: Decision,
        *,
        released: bool = False,
    ) -> None:
        """Hand a run taken here (``system.take``) whose decision is committed under ``epoch`` to
        a RunActor; ``released`` when a decision that settles it released the lease as it
        was committed. (For the runtime package: host code spawns, resumes or approves.)"""
        if decision.settles:
            try:
                for effect in decision.effects:
                    if isinstance(effect, RequestApproval):
                        self.system.notify(agent, state, effect.call_id)
            finally:  # the run is parked or done whatever notify met: never left claimed
                if not released:
                    self.system.release_lease(state.run_id, epoch)
                self.system.settled_without_actor(state)
            return
        self.system.start_run(agent, state, epoch, decision)

    def handle(self, run_id: str) -> RunHandle:
        """A handle to an existing run (to wait on it or cancel it)."""
        if not self.store.head(run_id):
            raise RunNotFound(run_id)
        return RunHandle(self, run_id)

    # -- resuming ------------------------------------------------------------------------

    def resume(self, run_id: str, *, extend: Limits | None = None) -> RunHandle:
        """Continue a resumable run (interrupted, limit reached, no progress, parked).

        Raises RunLocked if a live runtime drives it, SchemaChangedError if the agent's
        tools changed since the run started.
        """
        self.check_open()
        if extend is not None and not isinstance(extend, Limits):
            raise ConfigError("extend must be fl.Limits(...)")
        state = self.state(run_id)
        if state.unknown_events:
            self._refuse_unknown(run_id)
        if not state.resumable:
            raise ConfigError(
                f"run {run_id!r} is {state.status.value} and cannot be resumed"
                + (f": {state.reason}" if state.reason else "")
            )
        agent = self._agent_for(state)
        epoch = self.system.take(run_id, wait=HANDOVER_WAIT)
        try:
            state = self.state(run_id)  # re-read under the lease: nobody else appends now
            now = self.clock()
            gated, tokens = self.desk.tickets_again(agent, state, now)
            command = Resume(now=now, owner=self.owner, extend=extend, gated=gated)
            decision = decide(state, command)
            if decision.rejected:
                raise ConfigError(decision.rejected)
            self.append_decisions(state, [(decision, command)], epoch)
            state = evolve_all(state, decision, command.now)
            self.desk.remember_tokens(run_id, tokens)
            state, decisions, released = self.desk.apply(state, epoch, [decision])
        except BaseException:
            self.system.give_back(run_id, epoch)
            raise
        log.info("run_resumed", run_id=run_id, agent=agent.name, seq=state.seq)
        self.drive(agent, state, epoch, merged(decisions, state), released=released)
        return RunHandle(self, run_id)

    def _refuse_unknown(self, run_id: str) -> None:
        """A run holding events of a newer foldloop cannot be decided on by this one."""
        for rec in self.store.read(run_id):
            if isinstance(rec.event, UnknownEvent):
                raise SchemaChangedError(
                    f"run {run_id!r} seq {rec.seq} holds a {rec.event.tag!r} event written by a "
                    "newer foldloop; upgrade foldloop to resume it (reading it works)"
                )

    # -- approvals -----------------------------------------------------------------------

    def pending_approvals(self) -> list[PendingApproval]:
        """Gated calls waiting for a decision (with the token, where this runtime issued it)."""
        return self.desk.pending()

    def approve(
        self,
        token: str | None = None,
        *,
        run_id: str | None = None,
        call_id: str | None = None,
        by: str = "",
        note: str = "",
    ) -> None:
        """Approve a waiting call, by its token or by ids, from any process with the store.

        Exactly one decision wins; a second one, an unknown or forged token, or a decision
        after the deadline raises ApprovalError saying which.
        """
        self.desk.record_decision(token, run_id, call_id, approved=True, by=by, note=note)

    def deny(
        self,
        token: str | None = None,
        *,
        run_id: str | None = None,
        call_id: str | None = None,
        by: str = "",
        note: str = "",
    ) -> None:
        """Deny a waiting call; the model is told ``note`` and the run goes on without it."""
        self.desk.record_decision(token, run_id, call_id, approved=False, by=by, note=note)

    def _poll(self) -> None:
        """Every ``poll_interval``: decisions and expiries into runs, other processes'
        commits to the projections."""
        while not self._stop_polling.wait(self._poll_interval):
            try:
                self.desk.carry_due()
            except StoreError as exc:  # said already by what the host itself reads
                log.warning("approval_poll_failed", error=str(exc))
            except Exception:
                log.exception("approval_poll_failed")
            try:
                self.followers.tick()
            except StoreError as exc:
                log.warning("projection_poll_failed", error=str(exc))
            except Exception:
                log.exception("projection_poll_failed")

    # -- recovering ----------------------------------------------------------------------

    def recover(self) -> list[RunHandle]:
        """Resume every run left running by a runtime that died, for agents registered here."""
        self.check_open()
        handles: list[RunHandle] = []
        orphans = []
        for run_id in self.store.run_ids():
            if self.system.active(run_id):
                continue
            try:
                lease = self.store.lease(run_id)
            except StoreCorrupted as exc:
                log.warning("recover_skipped", run_id=run_id, error=str(exc))
                continue
            if (
                lease is not None
                and lease.owner
                and (lease.owner == self.owner or self.store.owner_alive(lease.owner))
            ):
                continue
            orphans.append(run_id)
        for state in self._states(orphans):
            if isinstance(state, Damaged):
                log.warning("recover_skipped", run_id=state.run_id, error=str(state.error))
                continue
            if state.status is not RunStatus.RUNNING or state.agent not in self._agents:
                continue
            try:
                handles.append(self.resume(state.run_id))
            except RunLocked:
                continue  # another runtime recovered it first
            except (SchemaChangedError, StoreCorrupted) as exc:
                log.warning("recover_skipped", run_id=state.run_id, error=str(exc))
        return handles

    def append_decisions(
        self,
        state: RunState,
        steps: Sequence[tuple[Decision, Command]],
        epoch: int,
        *,
        release: bool = False,
    ) -> None:
        """Append decisions taken outside any actor (resume, approvals, cancel), one after
        another from ``state``, durably and in one transaction, with their approvals-table
        writes, and (``release``) the run's lease in that transaction too, when nothing
        follows them. (For the runtime package.)"""
        run_id, owner = state.run_id, self.owner
        writes: list[tuple[list[Payload], int, Callable[[WriteTxn], None] | None]] = []
        for decision, command in steps:
            after = evolve_all(state, decision, command.now)
            events, now, seq = decision.events, command.now, state.seq
            writes.append(
                (encode_all(events, now), seq, approval_writes(run_id, after, events, now, seq + 1))
            )
            state = after

        def write(w: WriteTxn) -> None:
            for payloads, seq, extra in writes:
                w.append(run_id, payloads, expected_seq=seq, owner=owner, epoch=epoch)
                if extra is not None:
                    extra(w)
            if release:
                w.release_lease(run_id, owner, epoch)

        self.store.submit(write).wait()

    def _cancel(self, run_id: str, reason: str) -> None:
        command = Cancel(now=self.clock(), reason=reason)
        while not self.system.tell(run_id, command):
            if self.state(run_id).terminal:
                return
            try:
                epoch = self.system.take(run_id, wait=HANDOVER_WAIT)
            except RunLocked:
                if self.system.active(run_id):
                    continue  # another thread here handed it to an actor meanwhile: tell it
                raise
            self._cancel_taken(run_id, epoch, command)
            return

    def _cancel_taken(self, run_id: str, epoch: int, command: Cancel) -> None:
        """Cancel a run taken here that no actor drives; its lease goes with the cancel."""
        try:
            state = self.state(run_id)
            decision = decide(state, command)
            if decision.events:
                self.append_decisions(state, [(decision, command)], epoch, release=True)
        except BaseException:
            self.system.give_back(run_id, epoch)
            raise
        if decision.events:
            self.system.unclaim(run_id)
        else:
            self.system.give_back(run_id, epoch)

    # -- waiting -------------------------------------------------------------------------

    def _wait(self, run_id: str, timeout: float | None) -> RunResult:
        deadline = None if timeout is None else time.monotonic() + timeout
        while (settlement := self.system.settlement(run_id)) is not None:
            settlement.event.wait(None if deadline is None else max(0, deadline - time.monotonic()))
            state = settlement.state
            if not settlement.event.is_set() or state is None:
                return result_of(self.state(run_id))
            if self._decision_pending(state, deadline):
                # the poller (or the drive the decision started) continues the run; wait
                # for that settlement
                time.sleep(0.01)
                continue
            return result_of(state, interrupted=settlement.interrupted)
        return self._follow(run_id, deadline)

    def _decision_pending(self, state: RunState, deadline: float | None) -> bool:
        """Parked before a decision already taken reached it (and there is time left)."""
        return (
            state.status is RunStatus.AWAITING_APPROVAL
            and self.desk.decided_not_applied(state)
            and (deadline is None or time.monotonic() < deadline)
        )

    def _follow(self, run_id: str, deadline: float | None) -> RunResult:
        """Wait for a run driven elsewhere (another process) by following the log, every
        1 ms at first and backing off to every 20 ms: a short run is seen settled soon
        after it settles, a long one costs ~50 state reads a second."""
        pause = 0.001
        released_by: float | None = None
        while True:
            state = self.state(run_id)
            if state.settled and self._decision_pending(state, deadline):
                pass  # parked, but a runtime's poller carries a decision in: keep following
            elif state.settled:
                # The approvals table was read after the state: a decision carried in
                # between shows as applied there and not yet here. Settled means no change.
                if self.store.head(run_id) != state.seq:
                    continue
                # Parked again by a resume, its lease goes with that runtime's next commit:
                # wait for it (a little), so a resume right after this wait finds it free.
                now = time.monotonic()
                released_by = released_by or now + LEASE_RELEASE_GRACE
                if (
                    not self._driven(run_id)
                    or now >= released_by
                    or (deadline is not None and now >= deadline)
                ):
                    return result_of(state)
            elif not self._driven(run_id):
                # A run settles before its lease is released: read it again, then the lease
                state = self.state(run_id)
                if state.settled:
                    continue
                if not self._driven(run_id):
                    return result_of(state, interrupted="no runtime is driving it")
            if deadline is not None and time.monotonic() >= deadline:
                return result_of(state)
            time.sleep(pause)
            pause = min(pause * 1.5, 0.02)

    def _driven(self, run_id: str) -> bool:
        """A live runtime holds the run's lease."""
        lease = self.store.lease(run_id)
        return lease is not None and bool(lease.owner) and self.store.owner_alive(lease.owner)

    # -- reading -------------------------------------------------------------------------

    def events(self, run_id: str, from_seq: int = 1) -> Iterator[Recorded]:
        """The run's recorded events from ``from_seq``."""
        if not isinstance(from_seq, int) or from_seq < 1:
            raise ConfigError(f"from_seq must be an int >= 1; got {from_seq!r}")
        records = self.store.read(run_id, from_seq)
        if not records and not self.store.head(run_id):
            raise RunNotFound(run_id)
        return iter(records)

    def read_all(self, from_position: int = 1) -> Iterator[Recorded]:
        """The whole log in order, read in pages (cheap enough to tail)."""
        if not isinstance(from_position, int) or from_position < 1:
            raise ConfigError(f"from_position must be an int >= 1; got {from_position!r}")
        position = from_position
        while True:
            page = self.store.read_all(position, limit=1024)
            yield from page
            if len(page) < 1024:
                return
            position = page[-1].position + 1

    def state(self, run_id: str) -> RunState:
        """The run's state: its latest snapshot plus the events after it."""
        base = self._snapshot_state(run_id)
        state = self.store.consume_events(
            run_id, lambda pairs: fold_events(run_id, pairs, base), base.seq + 1
        )
        if not state.seq:  # no snapshot and no event: no such run
            raise RunNotFound(run_id)
        return state

    def _snapshot_state(self, run_id: str) -> RunState:
        """The run's latest snapshot (an empty state when it has none or it is unreadable:
        a snapshot is a cache, the log is folded instead)."""
        try:
            snap = self.store.snapshot(run_id)
        except StoreCorrupted:
            return RunState(run_id=run_id)
        if snap is not None and snap[0] == STATE_VERSION:
            try:
                return restore_state(snap[2], snap[3])
            except msgspec.MsgspecError:
                pass
        return RunState(run_id=run_id)

    def _states(self, run_ids: Iterable[str]) -> Iterator[RunState | Damaged]:
        """The states of many runs, reading the log in one transaction per batch; a run
        whose log is damaged gives what is wrong in its place, the others their state."""
        batch: list[str] = []
        for run_id in run_ids:
            batch.append(run_id)
            if len(batch) == 512:
                yield from self._state_batch(batch)
                batch = []
        if batch:
            yield from self._state_batch(batch)

    def _state_batch(self, run_ids: list[str]) -> Iterator[RunState | Damaged]:
        bases = {run_id: self._snapshot_state(run_id) for run_id in run_ids}
        try:
            tails = self.store.read_runs({rid: base.seq + 1 for rid, base in bases.items()})
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
        wanted = RunStatus(status) if status is not None else None
        out: list[RunSummary] = []
        for state in self._states(self.store.run_ids()):
            if isinstance(state, Damaged):
                if wanted in (None, RunStatus.FAILED) and agent is None:
                    out.append(state.summary())
                continue
            run_id = state.run_id
            current = state.status
            if current is RunStatus.RUNNING and self._orphaned(run_id):
                current = RunStatus.INTERRUPTED
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
                    reason=state.reason,
                    seq=state.seq,
                    updated_at=state.last_at,
                )
            )
        return out

    def explain(self, run_id: str) -> Explanation:
        """Why the run is where it is (status, reason, limit, last decision) and what to do."""
        records = list(self.events(run_id))
        return explain(fold(records), records, orphaned=self._orphaned(run_id))

    def export(self, run_id: str) -> Iterator[str]:
        """The run as JSONL lines (schema in ``foldloop.events.jsonl``)."""
        return dump_run(run_id, self.events(run_id))

    def import_jsonl(self, lines: Iterable[str], *, run_id: str | None = None) -> str:
        """Append an exported run to this store (as ``run_id`` if given); returns its id.

        The imported run folds to the same state; nobody drives it, so a resumable one
        shows as interrupted until a runtime with its agent resumes it.
        """
        self.check_open()
        header, exported = load_run(lines)
        target = run_id if run_id is not None else header.run_id
        check_run_id(target)
        if not exported:
            raise ConfigError("the export holds no events")
        payloads = [p for e in exported for p in encode_all([e.event], e.at)]

        def put(w: WriteTxn) -> None:
            if w.head(target).seq:
                raise ConfigError(
                    f"run {target!r} already exists in this store; import it under another "
                    "id (foldloop import FILE --run-id NEW)"
                )
            w.append(target, payloads, expected_seq=0)

        self.store.submit(put).wait()
        return target

    def _orphaned(self, run_id: str) -> bool:
        return not self.system.active(run_id) and not self._driven(run_id)

    def verify(self, run_id: str) -> RunState:
        """Replay the run's log through today's decide(); raise at the first difference.

        Checks the checksums and hash chain too. Raises NondeterminismError (with run, seq,
        recorded and new event) or SchemaChangedError if the agent's tools changed.
        """
        records = list(self.events(run_id))
        self.store.verify_chain(run_id)
        first = records[0].event
        if not isinstance(first, RunStarted):
            raise FoldloopError(f"run {run_id!r} does not begin with run.started")
        agent = self._agent_for(fold(records[:1]))

        def start(event: RunStarted, now: int) -> Start:
            return agent.start(
                event.input,
                now=now,
                limits=event.limits,
                metadata=event.metadata,
                parent_run_id=event.parent_run_id,
            )

        return replay(records, start)

    # -- projections ---------------------------------------------------------------------

    def attach(
        self, projection: Projection[Any], *, reset: bool = False, checkpoint_every: float = 1.0
    ) -> ProjectionHandle:
        """Fold the log into ``projection``: from its checkpoint (a new one backfills from
        the first record), then live, each record applied once and in log order.

        Returns a handle with ``.state``, ``.position``, ``.catch_up()``, ``.error`` and
        ``.detach()``. ``reset=True`` drops the stored checkpoint and rebuilds from the start.
        A stored projection writes its checkpoint at most every ``checkpoint_every`` seconds
        while live (and on detach or close); after a crash it re-applies at most that much.
        An ``apply`` that raises stops this projection only (see ``handle.error``).
        """
        self.check_open()
        return self.followers.attach(projection, reset=reset, checkpoint_every=checkpoint_every)

    def subscribe(
        self, callback: Callable[[Recorded], None], types: Iterable[str] | None = None
    ) -> ProjectionHandle:
        """Call ``callback`` with every record committed from now on, by any process (only
        those of ``types``, if given), in log order, on the subscription's own thread.

        A callback that raises is stopped (``handle.error`` says at which record); runs and
        other subscribers are untouched. Call the returned handle (or ``.detach()``) to stop.
        """
        self.check_open()
        return self.followers.subscribe(callback, types)

    def check_open(self) -> None:
        """Raise ConfigError if this runtime was closed."""
        if self._closed:
            raise ConfigError("this runtime is closed; open a new one with fl.Runtime.open()")
