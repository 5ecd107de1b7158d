"""The host's commands that move runs: spawn, resume, cancel (``Cancels``, in ``_cancels.py``;
recovery is ``Recovery``, in ``_recovery.py``), and the admission of a queued run when its
turn comes.

Each takes the run (a claim here and its lease in the store), decides with the pure core,
writes the decision through ``RunWrites`` and hands the run on (``drive``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from msgspec.structs import replace

from foldloop._agent import Agent
from foldloop._log import get_logger
from foldloop.actors._system import HANDOVER_WAIT, ActorSystem
from foldloop.core._commands import Resume, Start
from foldloop.core._decide import decide
from foldloop.core._effects import Decision, SpawnChild
from foldloop.core._state import RunState, RunStatus
from foldloop.core._tree import child_finished, ended_for_parent, unstartable
from foldloop.errors import (
    ConcurrencyError,
    ConfigError,
    FoldloopError,
    RunLocked,
    SchemaChangedError,
    StoreError,
)
from foldloop.events._codec import plain_str
from foldloop.events._recorded import UnknownEvent
from foldloop.events._values import Limits
from foldloop.runtime._admission import Admission
from foldloop.runtime._admits import Admits
from foldloop.runtime._approval_desk import ApprovalDesk
from foldloop.runtime._calls import CallsUnderWay
from foldloop.runtime._cancels import Cancels
from foldloop.runtime._driving import drive
from foldloop.runtime._lifecycle import CLOSED, REOPEN
from foldloop.runtime._queries import Queries
from foldloop.runtime._recovery import Recovery
from foldloop.runtime._registry import AgentRegistry
from foldloop.runtime._rules import (
    check_spawn,
    evolve_all,
    input_room,
    merged,
    metadata_pairs,
    new_run_id,
    partly_spawned,
    priced_limits,
)
from foldloop.runtime._trees import TreeWork
from foldloop.runtime._writes import RunWrites, together
from foldloop.store import EventStore, Pending, WorkQueue, answer_by
from foldloop.tools._decorator import bound_text

__all__ = ["Commands"]

log = get_logger("foldloop.runtime")

LANDED_LOOK_S = 5.0
"""How long a start whose write failed looks for it in the log before saying it failed."""
SPAWNS_CLOSE_WAIT = 10.0
"""Seconds a close waits for the spawn calls under way to finish the starts they began."""


class Commands:
    """Spawn, resume, cancel and recover for the runtime ``owner``; each returns run ids."""

    def __init__(
        self,
        *,
        store: EventStore,
        system: ActorSystem,
        writes: RunWrites,
        queries: Queries,
        agents: AgentRegistry,
        desk: ApprovalDesk,
        clock: Callable[[], int],
        owner: str,
        admission: Admission,
    ) -> None:
        self._store = store
        self._system = system
        self._writes = writes
        self._queries = queries
        self._agents = agents
        self._desk = desk
        self._clock = clock
        self._owner = owner
        self._spawns = CallsUnderWay()  # see ``stop_spawns``
        self._closing = False
        self.cancels = Cancels(
            store=store,
            system=system,
            writes=writes,
            queries=queries,
            desk=desk,
            clock=clock,
            admission=admission,
            cascade=lambda job: self.trees.submit(job),  # noqa: PLW0108 - made below
            closing=lambda: self._closing,
        )
        """Cancels of runs (here or by taking them) and their cascade down a tree."""
        self.trees = TreeWork(
            system=system,
            queries=queries,
            agents=agents,
            writes=writes,
            clock=clock,
            cancel_child=self.cancels.cancel_child,
        )
        """Work on trees off the shards: a parent's children start in one job there, sharing
        commits; cancels go down a tree there; parked runs are taken up there."""
        self._admission = admission
        self._shared = store if isinstance(store, WorkQueue) else None
        """The store's work queue, when it has one: every spawn is queued there, for any
        runtime with the agent to take (``recovery.take_queued``)."""
        self.recovery = Recovery(
            store=store,
            system=system,
            queries=queries,
            agents=agents,
            trees=self.trees,
            clock=clock,
            owner=owner,
            admission=admission,
            resume=lambda run_id: self.resume(run_id, extend=None),
            cancel_child=self.cancels.cancel_child,
        )
        """Takes up runs a runtime left behind (``recover``, and a wait's take-up)."""
        self.admits = Admits(
            store=store,
            system=system,
            queries=queries,
            agents=agents,
            writes=writes,
            clock=clock,
            owner=owner,
        )
        """Starts the queued runs whose turn came (for ``Admission``)."""

    def spawn(
        self,
        agent: Agent,
        input: str,
        *,
        run_id: str | None,
        metadata: Mapping[str, str] | None,
        parent_run_id: str | None,
    ) -> str:
        """Start a run of ``agent`` on ``input``; returns once run.started is durable.

        Past ``max_active_runs`` the run is recorded queued and waits its turn (FIFO)."""
        return self.spawn_many(
            agent,
            [input],
            run_ids=[run_id],
            metadata=metadata,
            parent_run_id=parent_run_id,
            indexed=False,
        )[0]

    def spawn_many(
        self,
        agent: Agent,
        inputs: Sequence[str],
        *,
        run_ids: Sequence[str | None] | None = None,
        metadata: Mapping[str, str] | None,
        parent_run_id: str | None = None,
        indexed: bool = True,
    ) -> list[str]:
        """Start a run of ``agent`` on each input, in order; returns once every run.started
        is durable. Their writes are under way together, so they share commits. Nothing is
        written when an input is refused; when a start fails (a run id in use, the runtime
        closing), the others written are still driven and SpawnError says which started
        (the first failure itself when none did, or for a single input). On a shared work
        queue a runtime drives only the agents it was opened with: it enqueues the others'
        runs for the runtimes that have them (here it would run their tools, an approval's
        included, and take its queued runs up in a wait). A refused input is named by its
        index (``indexed``; not for ``spawn``'s one)."""
        if self._shared is None:
            self._agents.register(agent)
        else:
            self._agents.check(agent)
        ids = list(run_ids) if run_ids is not None else [None] * len(inputs)
        check_spawn("", None, metadata, parent_run_id)  # once: the same for every input
        meta = metadata_pairs(metadata)
        now = self._clock()
        limits = priced_limits(agent, now)
        room = None  # spawn's one input: its encode refuses it unwritten (one encode)
        if indexed:
            room = input_room(
                agent,
                now=now,
                limits=limits,
                metadata=meta,
                parent_run_id=parent_run_id,
                max_event_bytes=self._store.max_event_bytes,
            )
        for index, (text, run_id) in enumerate(zip(inputs, ids, strict=True)):
            try:
                check_spawn(text, run_id, None, None, room=room)
            except ConfigError as exc:
                if not indexed:
                    raise
                raise ConfigError(f"inputs[{index}]: {exc.fact}", advice=exc.advice) from None
        inputs = [plain_str(text) for text in inputs]
        named = [run_id for run_id in ids if run_id is not None]
        if len(set(named)) != len(named):
            raise ConfigError("spawn_many was given a run_id twice; give each run its own")
        if parent_run_id is not None and self._store.head(parent_run_id) == 0:
            raise ConfigError(
                f"parent_run_id {parent_run_id!r} names no run in this store",
                advice="give the id of a run spawned here before (or leave parent_run_id out)",
            )
        starts: list[_Start] = []
        with self._spawns.call():
            try:
                refused = self._begin_starts(
                    agent,
                    inputs,
                    ids,
                    meta=meta,
                    parent_run_id=parent_run_id,
                    starts=starts,
                    now=now,
                    limits=limits,
                )
            finally:  # the writes begun stand, even past a Ctrl-C: each run is driven or queued
                outcomes = [(start, self._finish_start(start)) for start in starts]
        failures = [failure for _start, failure in outcomes if failure is not None]
        interrupt = next((f for f in failures if not isinstance(f, Exception)), None)
        if interrupt is not None:
            raise interrupt
        first = failures[0] if failures else refused
        if first is None:
            return [start.run_id for start in starts]
        landed = [start.written or self._landed(start, f) for start, f in outcomes]
        if len(inputs) == 1 or not any(landed):
            raise first
        started = tuple(start.run_id for start, ok in zip(starts, landed, strict=True) if ok)
        missing = tuple(i for i in range(len(inputs)) if i >= len(starts) or not landed[i])
        raise partly_spawned(len(inputs), started, missing, first) from first

    def _begin_starts(
        self,
        agent: Agent,
        inputs: Sequence[str],
        ids: Sequence[str | None],
        *,
        meta: tuple[tuple[str, str], ...],
        parent_run_id: str | None,
        starts: list[_Start],
        now: int,
        limits: Limits,
    ) -> Exception | None:
        """Begin the starts, in order, into ``starts`` (their writes sharing commits); the
        failure that stopped them (the rest are not tried), None when all began."""
        with together(self._store, len(inputs)):
            for text, given in zip(inputs, ids, strict=True):
                try:
                    if self._closing:
                        raise ConfigError(CLOSED, advice=REOPEN)
                    command = agent.start(
                        text, now=now, metadata=meta, parent_run_id=parent_run_id, limits=limits
                    )
                    run_id = given if given is not None else new_run_id(agent.name)
                    # once one waits, the rest wait behind it (FIFO), whatever slot frees
                    queue = self._shared is not None or (bool(starts) and not starts[-1].admitted)
                    starts.append(self._start(agent, run_id, command, queue=queue))
                except Exception as exc:
                    return exc
        return None

    def _landed(self, start: _Start, failure: BaseException | None) -> bool:
        """Whether a start whose wait failed with the store's error is in the log all the
        same (the store may fail after the commit): then it is not to be spawned again, and
        its lease, this runtime's, is let go, for ``recover()`` or a wait to take it up."""
        if not isinstance(failure, StoreError):
            return False
        # the server may be away: the spawn's error is not held up by these looks long
        with answer_by(time.monotonic() + LANDED_LOOK_S):
            try:
                if self._store.head(start.run_id) == 0:
                    return False
            except FoldloopError:
                return False
            try:
                lease = self._store.lease(start.run_id)
                if lease is not None and lease.owner == self._owner:
                    self._store.release_lease(start.run_id, lease, durable=True).wait()
            except FoldloopError:
                pass  # the store is failing: the lease goes when this runtime closes
        return True

    def _finish_start(self, start: _Start) -> BaseException | None:
        """``_started``, or what it raised (the run's claim and slot then given back). A
        Ctrl-C while its write is under way is noted and the write waited for all the same:
        a run whose start is written must not be left claimed and undriven."""
        interrupted: BaseException | None = None
        while True:
            try:
                self._started(start)
            except Exception as exc:
                self._abandon(start)
                return exc
            except BaseException as exc:
                interrupted = interrupted or exc
                if start.pending is not None and not start.finished:
                    continue  # the wait was cut short: the write is still landing
                self._abandon(start)
            return interrupted

    def _start(
        self, agent: Agent, run_id: str, command: Start, *, queue: bool, exempt: bool = False
    ) -> _Start:
        """Decide a new run's start (queued past the cap, or with ``queue``; never when
        ``exempt``), claim it and begin its write."""
        reserved = not exempt and not queue and self._admission.reserve()
        admitted = exempt or reserved
        if not admitted:
            command = replace(command, queued=True)
        decision = decide(RunState(run_id=run_id), command)
        # A queued run keeps its lease: who holds it admits it, and only the queued runs
        # of a runtime that died are taken over by another's recover(). On a shared work
        # queue nobody holds it until a runtime takes it from there.
        shared = self._shared is not None and not admitted  # see queries' STRANDED_AFTER_S
        settles = (decision.settles and admitted) or shared
        try:
            self._system.claim(run_id)
        except BaseException as exc:
            if reserved:
                self._admission.release()
            if isinstance(exc, RunLocked):  # driven here: it exists (a start refuses that)
                raise ConfigError(
                    f"run {run_id!r} already exists",
                    advice="spawn with another run_id (this runtime is driving that one)",
                ) from None
            raise
        start = _Start(
            agent, run_id, command, decision, admitted=admitted, reserved=reserved, settles=settles
        )
        try:
            start.pending = self._writes.start(
                run_id, decision.events, command.now, settles=settles
            )
        except BaseException:
            self._abandon(start)
            raise
        return start

    def _abandon(self, start: _Start) -> None:
        """Give back what a start that went no further took: its claim, its slot."""
        if start.finished:
            return
        start.finished = True
        self._system.unclaim(start.run_id)
        if start.reserved:
            self._admission.release()

    def _started(self, start: _Start) -> None:
        """Once its write is durable, hand a started run to an actor, or queue it."""
        run_id, agent = start.run_id, start.agent
        assert start.pending is not None
        epoch = self._writes.started(run_id, start.pending)
        start.pending = None
        start.written = True
        if not start.admitted:
            self._system.unclaim(run_id)
            if self._shared is not None:
                self._shared.enqueue(agent.name, [run_id])
            else:
                self._admission.enqueue((run_id,))
            start.finished = True
            log.info("run_queued", run_id=run_id, agent=agent.name)
            return
        state = evolve_all(RunState(run_id=run_id), start.decision, start.command.now)
        log.info("run_started", run_id=run_id, agent=agent.name)
        start.finished = True  # drive gives the claim back itself if it fails
        try:
            drive(self._system, agent, state, epoch, start.decision, released=start.settles)
        finally:
            if start.reserved:
                self._admission.release()

    def resume(self, run_id: str, *, extend: Limits | None) -> str:
        """Continue a resumable run (interrupted, limit reached, no progress, parked)."""
        if extend is not None and not isinstance(extend, Limits):
            raise ConfigError("extend must be fl.Limits(...)")
        state = self._queries.state(run_id)
        if state.unknown_events:
            self._refuse_unknown(run_id)
        if state.status is RunStatus.QUEUED:
            raise ConfigError(
                f"run {run_id!r} is queued: its runtime starts it when a slot is free "
                "(max_active_runs)",
                advice="wait() for it; if its runtime is gone, recover() in a runtime with "
                "its agent admits it in turn",
            )
        if not state.resumable:
            raise ConfigError(
                f"run {run_id!r} is {state.status.value} and cannot be resumed"
                + (f": {state.reason}" if state.reason else "")
            )
        if state.parent_call_id:
            self.trees.check_child_resume(state, extend)
        agent = self._agents.for_run(state)
        epoch = self._system.take(run_id, wait=HANDOVER_WAIT)
        try:
            state = self._queries.state(run_id)  # re-read under the lease: nobody else appends
            now = self._clock()
            gated, tokens = self._desk.tickets_again(agent, state, now)
            command = Resume(now=now, owner=self._owner, extend=extend, gated=gated)
            decision = decide(state, command)
            if decision.rejected:
                raise ConfigError(decision.rejected)
            self._writes.append_decisions(state, [(decision, command)], epoch)
            state = evolve_all(state, decision, command.now)
            self._desk.remember_tokens(run_id, tokens)
            state, decisions, released = self._desk.apply(state, epoch, [decision])
        except BaseException:
            self._system.give_back(run_id, epoch)
            raise
        log.info("run_resumed", run_id=run_id, agent=agent.name, seq=state.seq)
        drive(self._system, agent, state, epoch, merged(decisions, state), released=released)
        return run_id

    def _refuse_unknown(self, run_id: str) -> None:
        """A run holding events of a newer foldloop cannot be decided on by this one."""
        for rec in self._queries.events(run_id):
            if isinstance(rec.event, UnknownEvent):
                raise SchemaChangedError(
                    f"run {run_id!r} seq {rec.seq} holds a {rec.event.tag!r} event written by a "
                    "newer foldloop; upgrade foldloop to resume it (reading it works)"
                )

    def spawn_children(self, parent: RunState, effects: Sequence[SpawnChild]) -> None:
        """Start the child runs of a parent's sub-agent calls, or follow those that exist
        already (a resumed parent), off the calling shard; their starts share commits. A
        child that cannot start is the parent's failed call; one that has ended already is
        told to the parent again."""
        self.trees.submit(lambda: self._spawn_children(parent, list(effects)))

    def _spawn_children(self, parent: RunState, effects: list[SpawnChild]) -> None:
        now = self._clock()
        starts: list[tuple[SpawnChild, _Start]] = []
        follow: list[SpawnChild] = []
        try:
            with together(self._store, len(effects)):
                for effect in effects:
                    if self._store.head(effect.run_id):
                        follow.append(effect)
                        continue
                    try:
                        starts.append((effect, self._start_child(parent, effect, now)))
                    except FoldloopError as exc:
                        self._child_not_started(parent, effect, exc)
        finally:  # the writes begun stand: each child is driven (see spawn_many)
            for effect, start in starts:
                failure = self._finish_start(start)
                if isinstance(failure, ConcurrencyError):
                    follow.append(effect)  # started meanwhile (its parent resumed elsewhere)
                elif isinstance(failure, FoldloopError):
                    self._child_not_started(parent, effect, failure)
        if starts and self._queries.state(parent.run_id).terminal:
            # cancelled while they started: the cascade may have found them not there yet
            self.cancels.cancel_children(
                tuple(effect.run_id for effect, _ in starts), "parent cancelled"
            )
        for effect in follow:
            self._follow_child(parent, effect.run_id)

    def _follow_child(self, parent: RunState, run_id: str) -> None:
        """A child that exists: tell its parent if it ended; resume it if its runtime died
        (a parent resumed alone would wait for it for ever); else its settlement tells the
        parent, or the poller sees it end elsewhere."""
        try:
            state = self._queries.state(run_id)
            if ended_for_parent(state):
                self._system.tell(parent.run_id, child_finished(state, self._clock(), bound_text))
            elif (
                state.status is RunStatus.RUNNING
                and not self._system.active(run_id)
                and self._queries.orphaned(run_id)
                and self._agents.named(state.agent) is not None
            ):
                self.resume(run_id, extend=None)
        except RunLocked:
            pass  # another runtime took it up first: the poller follows it there
        except FoldloopError as exc:
            log.warning("child_not_followed", run_id=run_id, error=str(exc))

    def _start_child(self, parent: RunState, effect: SpawnChild, now: int) -> _Start:
        """Begin writing a child run's start: its allotment for limits, admitted at once (its
        root already was: a tree never waits behind the runs it holds slots from)."""
        agent = self._agents.named(effect.agent)
        if agent is None:
            raise ConfigError(f"this runtime does not know agent {effect.agent!r}")
        check_spawn(effect.input, effect.run_id, None, parent.run_id)
        command = agent.start(
            effect.input,
            now=now,
            parent_run_id=parent.run_id,
            limits=effect.limits,
            parent_call_id=effect.call_id,
            depth=effect.depth,
        )
        return self._start(agent, effect.run_id, command, queue=False, exempt=True)

    def _child_not_started(self, parent: RunState, effect: SpawnChild, exc: BaseException) -> None:
        log.warning("child_not_started", run_id=effect.run_id, error=str(exc))
        self._system.tell(parent.run_id, unstartable(self._clock(), effect, str(exc)))

    def stop_spawns(self) -> None:
        """Closing: spawn calls under way start no more runs, and finish those they began
        (waited for up to SPAWNS_CLOSE_WAIT s), so that none is left written but neither
        driven nor queued (on a shared work queue, put in it) while the store is still open."""
        self._closing = True
        if not self._spawns.wait_others(SPAWNS_CLOSE_WAIT):
            log.warning("spawns_unfinished_at_close", calls=self._spawns.under_way)

    def close(self) -> None:
        """Stop carrying lost cancels; finish the tree work queued (a cancel's cascade, the
        children a decision started) and the cancels it told, up to ``TREE_CLOSE_WAIT`` s."""
        self.cancels.close()
        self.trees.close()


@dataclass(slots=True)
class _Start:
    """A run being started by ``spawn_many``: its decision, reservation and write."""

    agent: Agent
    run_id: str
    command: Start
    decision: Decision
    admitted: bool = field(kw_only=True)
    """It is driven now (else it is queued)."""
    reserved: bool = field(kw_only=True)
    """It holds an admission slot, released once it has its actor (a child run holds none)."""
    settles: bool = field(kw_only=True)
    """Its first decision ends or parks it: the lease goes with the write."""
    pending: Pending[int] | None = None
    written: bool = False
    """Its run.started is durable: the run exists, driven here or left for recover()."""
    finished: bool = False
