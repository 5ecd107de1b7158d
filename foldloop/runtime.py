"""Runtime: the host-facing facade (DESIGN.md section 6).

It opens the store, holds an owner lock (so a crash frees its runs at once), and wires
commands from host code to the pure core and the actors. A run is driven by one runtime
at a time through a lease with a growing epoch; every append checks the epoch in the
same write transaction, so a fenced-off runtime can never interleave its writes.
"""

from __future__ import annotations

import datetime
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import msgspec

from foldloop._log import get_logger
from foldloop.actors.followers import Followers
from foldloop.actors.projection_actor import ProjectionHandle
from foldloop.actors.system import ActorSystem
from foldloop.agent import Agent
from foldloop.approvals import PendingApproval, approval_writes, issue_tickets, token_digest
from foldloop.core.commands import (
    ApprovalTicket,
    Cancel,
    Command,
    DecideApproval,
    ExpireApproval,
    Resume,
    Start,
)
from foldloop.core.decide import decide
from foldloop.core.effects import Decision, Effect, RequestApproval, Settle
from foldloop.core.evolve import apply, fold
from foldloop.core.explain import Explanation, explain
from foldloop.core.replay import replay
from foldloop.core.snapshot import restore_state
from foldloop.core.state import STATE_VERSION, RunState, RunStatus
from foldloop.errors import (
    ApprovalError,
    ConfigError,
    FoldloopError,
    RunLocked,
    RunNotFound,
    SchemaChangedError,
)
from foldloop.events.catalogue import RunStarted
from foldloop.events.jsonl import dump_run, load_run
from foldloop.events.recorded import Recorded, UnknownEvent
from foldloop.events.values import Limits, Usage
from foldloop.projections.base import Projection
from foldloop.store.approvals import ApprovalRecord
from foldloop.store.lmdb_store import DEFAULT_MAP_SIZE, LmdbStore, WriteTxn, encode_all, open_store
from foldloop.store.owners import OwnerLock

__all__ = ["RunHandle", "RunResult", "RunSummary", "Runtime"]

log = get_logger(__name__)

_RUN_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


@dataclass(frozen=True)
class RunResult:
    """Where a run stands when ``wait`` returns. Every status but completed has a reason."""

    run_id: str
    status: RunStatus
    output: str
    reason: str
    resumable: bool
    usage: Usage
    steps: int

    @property
    def ok(self) -> bool:
        """True when the run completed."""
        return self.status is RunStatus.COMPLETED


@dataclass(frozen=True)
class RunSummary:
    """One line of ``Runtime.runs()``."""

    run_id: str
    agent: str
    status: RunStatus
    steps: int
    reason: str
    seq: int
    updated_at: int


def _result(state: RunState, *, interrupted: str = "") -> RunResult:
    status, reason = state.status, state.reason
    if interrupted:
        status, reason = (
            RunStatus.INTERRUPTED,
            (f"{interrupted}; rt.recover() or rt.resume(run_id) continues it"),
        )
    elif status is RunStatus.RUNNING:
        reason = "still running; call wait() again"
    return RunResult(
        run_id=state.run_id,
        status=status,
        output=state.output,
        reason=reason,
        resumable=status is RunStatus.INTERRUPTED or (state.resumable and not state.terminal),
        usage=state.usage,
        steps=state.steps,
    )


class RunHandle:
    """A run spawned or resumed through a runtime."""

    def __init__(self, runtime: Runtime, run_id: str) -> None:
        self._rt = runtime
        self.id = run_id

    def __repr__(self) -> str:
        return f"RunHandle({self.id!r})"

    def wait(self, timeout: float | None = None) -> RunResult:
        """Block until the run completes or parks (or ``timeout`` seconds pass)."""
        return self._rt._wait(self.id, timeout)

    def cancel(self, reason: str = "") -> None:
        """Cancel the run (at once: model calls run off the run's thread)."""
        self._rt._cancel(self.id, reason)

    @property
    def state(self) -> RunState:
        """The run's current state (the fold of its log)."""
        return self._rt.state(self.id)


class Runtime:
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
        self._poller = threading.Thread(
            target=self._poll_approvals, name="foldloop-approvals", daemon=True
        )
        self._poller.start()
        self.followers = Followers(store, clock)
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

    def __enter__(self) -> Runtime:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

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

    def _agent_for(self, state: RunState) -> Agent:
        agent = self._agents.get(state.agent)
        if agent is None:
            raise ConfigError(
                f"run {state.run_id!r} belongs to agent {state.agent!r}, which this runtime does "
                f"not know; open it with Runtime.open(..., agents=[<the {state.agent!r} agent>])"
            )
        if agent.tools_digest != state.tools_digest:
            raise SchemaChangedError(_tool_drift(state, agent))
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
        self._check_open()
        self.register(agent)
        _check_text("input", input)
        run_id = run_id if run_id is not None else f"{agent.name}-{uuid.uuid4().hex[:12]}"
        _check_run_id(run_id)
        if parent_run_id is not None:
            _check_run_id(parent_run_id)
        if metadata is not None and not isinstance(metadata, Mapping):
            raise ConfigError(f"metadata must be a mapping of str to str; got {metadata!r:.80}")
        for key, value in (metadata or {}).items():
            _check_text("a metadata key", key)
            _check_text(f"metadata[{key!r}]", value)
        meta = tuple(sorted((metadata or {}).items()))
        now = self.clock()
        command = agent.start(
            input,
            now=now,
            metadata=meta,
            parent_run_id=parent_run_id,
            limits=_priced_limits(agent, now),
        )
        decision = decide(RunState(run_id=run_id), command)
        payloads = encode_all(decision.events, command.now)
        owner = self.owner

        def start(w: WriteTxn) -> int:
            if w.head(run_id).seq:
                raise ConfigError(
                    f"run {run_id!r} already exists; resume it with rt.resume({run_id!r}) "
                    "or spawn with another run_id"
                )
            epoch = w.acquire_lease(run_id, owner)
            w.append(run_id, payloads, expected_seq=0, owner=owner, epoch=epoch)
            return epoch

        epoch = self.store.submit(start).wait()
        state = _evolve_all(RunState(run_id=run_id), decision, command.now)
        log.info("run_started", run_id=run_id, agent=agent.name)
        self._drive(agent, state, epoch, decision)
        return RunHandle(self, run_id)

    def _drive(self, agent: Agent, state: RunState, epoch: int, decision: Decision) -> None:
        for effect in decision.effects:
            if isinstance(effect, RequestApproval) and any(
                isinstance(e, Settle) for e in decision.effects
            ):
                self.system.notify(agent, state, effect.call_id)
        if any(isinstance(e, Settle) for e in decision.effects):
            owner = self.owner
            self.store.submit(lambda w: w.release_lease(state.run_id, owner, epoch), durable=False)
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
        self._check_open()
        if extend is not None and not isinstance(extend, Limits):
            raise ConfigError("extend must be fl.Limits(...)")
        if self.system.active(run_id):
            raise RunLocked(
                f"run {run_id!r} is being driven by this runtime right now; wait() for it first"
            )
        state = self.state(run_id)
        if state.unknown_events:
            self._refuse_unknown(run_id)
        if not state.resumable:
            raise ConfigError(
                f"run {run_id!r} is {state.status.value} and cannot be resumed"
                + (f": {state.reason}" if state.reason else "")
            )
        agent = self._agent_for(state)
        owner = self.owner
        epoch = self.store.submit(lambda w: w.acquire_lease(run_id, owner)).wait()
        try:
            state = self.state(run_id)  # re-read under the lease: nobody else appends now
            now = self.clock()
            gated, tokens = self._tickets_again(agent, state, now)
            command = Resume(now=now, owner=owner, extend=extend, gated=gated)
            decision = decide(state, command)
            if decision.rejected:
                raise ConfigError(decision.rejected)
            self._append(state, decision, command, epoch)
            state = _evolve_all(state, decision, command.now)
            self._remember_tokens(run_id, tokens)
            state, decisions = self._apply_approvals(state, epoch, [decision])
        except BaseException:
            self.store.submit(lambda w: w.release_lease(run_id, owner, epoch), durable=False)
            raise
        log.info("run_resumed", run_id=run_id, agent=agent.name, seq=state.seq)
        self._drive(agent, state, epoch, _merged(decisions, state))
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
        now = self.clock()
        return [
            self.system.pending(r)
            for r in self.store.open_approvals()
            if r.status == "pending" and now < r.expires_at
        ]

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
        self._decide_approval(token, run_id, call_id, approved=True, by=by, note=note)

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
        self._decide_approval(token, run_id, call_id, approved=False, by=by, note=note)

    def _decide_approval(
        self,
        token: str | None,
        run_id: str | None,
        call_id: str | None,
        *,
        approved: bool,
        by: str,
        note: str,
    ) -> None:
        self._check_open()
        if token is not None:
            record = self.store.approval_by_token(token_digest(token))
            if record is None:
                raise ApprovalError("no such approval request: the token is unknown or forged")
        elif run_id is not None and call_id is not None:
            record = self.store.approval(run_id, call_id)
            if record is None:
                raise ApprovalError(f"no approval request for run {run_id!r} call {call_id!r}")
        else:
            raise ConfigError("pass a token, or both run_id= and call_id=")
        now = self.clock()
        decided = self.store.submit(
            lambda w: w.decide_approval(record, approved=approved, by=by, note=note, now=now)
        ).wait()
        log.info(
            "approval_decided", run_id=record.run_id, call_id=record.call_id, status=decided.status
        )
        self._continue_approvals(record.run_id, record.agent)
        if decided.status == "expired":
            raise ApprovalError(
                f"the approval of run {record.run_id!r} call {record.call_id!r} expired at "
                f"{_iso(record.expires_at)}; rt.resume({record.run_id!r}) asks again"
            )

    def _tickets_again(
        self, agent: Agent, state: RunState, now: int
    ) -> tuple[tuple[ApprovalTicket, ...], dict[str, str]]:
        """Fresh tickets for expired requests and for gated calls never requested."""
        if agent.approvals is None:
            return (), {}
        calls = [
            (-1, c.call_id, c.tool, c.args)
            for c in state.calls
            if c.status in ("expired", "proposed")
        ]
        return issue_tickets(agent.approvals, calls, now)

    def _remember_tokens(self, run_id: str, tokens: dict[str, str]) -> None:
        for call_id, token in tokens.items():
            self.system.issued[(run_id, call_id)] = token

    def _approval_commands(self, state: RunState) -> Iterator[Command]:
        """Commands for the run's waiting calls that the approvals table has decided (or
        that passed their deadline, which is recorded as expired first)."""
        for call in state.calls:
            if call.status != "awaiting_approval":
                continue
            record = self.store.approval(state.run_id, call.call_id)
            if record is None or record.applied:
                continue
            now = self.clock()
            if record.status == "pending":
                if now < record.expires_at:
                    continue
                record = self.store.submit(_expiry(record, now)).wait()
            if record.status == "expired":
                yield ExpireApproval(now=now, call_id=call.call_id)
            else:
                yield DecideApproval(
                    now=now,
                    call_id=call.call_id,
                    approved=record.status == "approved",
                    by=record.by,
                    note=record.note,
                )

    def _decided_not_applied(self, state: RunState) -> bool:
        """True if a call the run waits on is decided in the approvals table already."""
        for call in state.calls:
            if call.status == "awaiting_approval":
                record = self.store.approval(state.run_id, call.call_id)
                if record is not None and record.status != "pending" and not record.applied:
                    return True
        return False

    def _apply_approvals(
        self, state: RunState, epoch: int, decisions: list[Decision]
    ) -> tuple[RunState, list[Decision]]:
        """Append the decisions (and expiries) the approvals table holds for a run we hold."""
        for command in list(self._approval_commands(state)):
            decision = decide(state, command)
            if decision.rejected:
                continue
            self._append(state, decision, command, epoch)
            state = _evolve_all(state, decision, command.now)
            decisions.append(decision)
        return state, decisions

    def _continue_approvals(self, run_id: str, agent_name: str) -> None:
        """Carry decisions into the run's log now, if this runtime can drive it."""
        if self.system.active(run_id):
            # Its actor appends them (it rejects any it has already applied).
            for command in self._approval_commands(self.state(run_id)):
                self.system.tell(run_id, command)
            return
        agent = self._agents.get(agent_name)
        if agent is None or self._closed:
            return  # a runtime with the agent (its poller, resume or recover) carries it on
        owner = self.owner
        try:
            epoch = self.store.submit(lambda w: w.acquire_lease(run_id, owner)).wait()
        except RunLocked:
            return  # the runtime that drives it sees the decision itself
        try:
            state = self.state(run_id)
            if state.status is not RunStatus.AWAITING_APPROVAL:
                raise _NothingToDo
            state, decisions = self._apply_approvals(state, epoch, [])
            if not decisions:
                raise _NothingToDo
        except _NothingToDo:
            self.store.submit(lambda w: w.release_lease(run_id, owner, epoch), durable=False)
            return
        except Exception:
            log.exception("approval_apply_failed", run_id=run_id)
            self.store.submit(lambda w: w.release_lease(run_id, owner, epoch), durable=False)
            return
        self._drive(agent, state, epoch, _merged(decisions, state))

    def _poll_approvals(self) -> None:
        """Every ``poll_interval``: carry decisions made elsewhere, and expiries, into runs."""
        while not self._stop_polling.wait(self._poll_interval):
            try:
                now = self.clock()
                runs = {
                    (r.run_id, r.agent)
                    for r in self.store.due_approvals(now)
                    if r.agent in self._agents
                }
                for run_id, agent_name in sorted(runs):
                    self._continue_approvals(run_id, agent_name)
            except Exception:
                log.exception("approval_poll_failed")
            try:
                self.followers.tick()
            except Exception:
                log.exception("projection_poll_failed")

    def recover(self) -> list[RunHandle]:
        """Resume every run left running by a runtime that died, for agents registered here."""
        self._check_open()
        handles: list[RunHandle] = []
        for run_id in self.store.run_ids():
            if self.system.active(run_id):
                continue
            lease = self.store.lease(run_id)
            if (
                lease is not None
                and lease.owner
                and (lease.owner == self.owner or self.store.owner_alive(lease.owner))
            ):
                continue
            state = self.state(run_id)
            if state.status is not RunStatus.RUNNING or state.agent not in self._agents:
                continue
            try:
                handles.append(self.resume(run_id))
            except RunLocked:
                continue  # another runtime recovered it first
            except SchemaChangedError as exc:
                log.warning("recover_skipped", run_id=run_id, error=str(exc))
        return handles

    def _append(self, state: RunState, decision: Decision, command: Command, epoch: int) -> None:
        payloads = encode_all(decision.events, command.now)
        run_id, owner, seq = state.run_id, self.owner, state.seq
        after = _evolve_all(state, decision, command.now)
        extra = approval_writes(run_id, after, decision.events, command.now, seq + 1)

        def write(w: WriteTxn) -> None:
            w.append(run_id, payloads, expected_seq=seq, owner=owner, epoch=epoch)
            if extra is not None:
                extra(w)

        self.store.submit(write).wait()

    def _cancel(self, run_id: str, reason: str) -> None:
        command = Cancel(now=self.clock(), reason=reason)
        if self.system.tell(run_id, command):
            return
        state = self.state(run_id)
        if state.terminal:
            return
        owner = self.owner
        epoch = self.store.submit(lambda w: w.acquire_lease(run_id, owner)).wait()
        try:
            state = self.state(run_id)
            decision = decide(state, command)
            if decision.events:
                self._append(state, decision, command, epoch)
        finally:
            self.store.submit(lambda w: w.release_lease(run_id, owner, epoch), durable=False)

    # -- waiting -------------------------------------------------------------------------

    def _wait(self, run_id: str, timeout: float | None) -> RunResult:
        deadline = None if timeout is None else time.monotonic() + timeout
        while (settlement := self.system.settlement(run_id)) is not None:
            settlement.event.wait(None if deadline is None else max(0, deadline - time.monotonic()))
            state = settlement.state
            if not settlement.event.is_set() or state is None:
                return _result(self.state(run_id))
            if (
                state.status is RunStatus.AWAITING_APPROVAL
                and self._decided_not_applied(state)
                and (deadline is None or time.monotonic() < deadline)
            ):
                # parked before a decision already taken reached it: the poller (or the
                # drive the decision started) continues the run; wait for that settlement
                time.sleep(0.01)
                continue
            return _result(state, interrupted=settlement.interrupted)
        while True:  # driven elsewhere (another process): follow the log
            state = self.state(run_id)
            if state.settled:
                return _result(state)
            lease = self.store.lease(run_id)
            if lease is None or not lease.owner or not self.store.owner_alive(lease.owner):
                return _result(state, interrupted="no runtime is driving it")
            if deadline is not None and time.monotonic() >= deadline:
                return _result(state)
            time.sleep(0.02)

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
        base = RunState(run_id=run_id)
        snap = self.store.snapshot(run_id)
        if snap is not None and snap[0] == STATE_VERSION:
            try:
                base = restore_state(snap[2], snap[3])
            except msgspec.MsgspecError:
                base = RunState(run_id=run_id)  # a snapshot is a cache: fold the log instead
        tail = self.store.read(run_id, base.seq + 1)
        if not tail and not base.seq:
            raise RunNotFound(run_id)
        return fold(tail, base)

    def runs(
        self, status: RunStatus | str | None = None, agent: str | None = None
    ) -> list[RunSummary]:
        """Summaries of the runs in the store, optionally filtered by status and agent."""
        wanted = RunStatus(status) if status is not None else None
        out: list[RunSummary] = []
        for run_id in self.store.run_ids():
            state = self.state(run_id)
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
        self._check_open()
        header, exported = load_run(lines)
        target = run_id if run_id is not None else header.run_id
        _check_run_id(target)
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
        if self.system.active(run_id):
            return False
        lease = self.store.lease(run_id)
        return lease is None or not lease.owner or not self.store.owner_alive(lease.owner)

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
        self._check_open()
        return self.followers.attach(projection, reset=reset, checkpoint_every=checkpoint_every)

    def subscribe(
        self, callback: Callable[[Recorded], None], types: Iterable[str] | None = None
    ) -> ProjectionHandle:
        """Call ``callback`` with every record committed from now on, by any process (only
        those of ``types``, if given), in log order, on the subscription's own thread.

        A callback that raises is stopped (``handle.error`` says at which record); runs and
        other subscribers are untouched. Call the returned handle (or ``.detach()``) to stop.
        """
        self._check_open()
        return self.followers.subscribe(callback, types)

    def _check_open(self) -> None:
        if self._closed:
            raise ConfigError("this runtime is closed; open a new one with fl.Runtime.open()")


def _expiry(record: ApprovalRecord, now: int) -> Callable[[WriteTxn], ApprovalRecord]:
    """A write op that marks a pending request expired (its deadline has passed)."""
    return lambda w: w.decide_approval(record, approved=False, by="", note="", now=now)


def _priced_limits(agent: Agent, now: int) -> Limits:
    """The agent's limits, given how old its price table is (its ``stale`` policy decides)."""
    limits, pricing = agent.limits, agent.pricing
    if limits.max_cost_usd is None:
        return limits
    today = datetime.datetime.fromtimestamp(now / 1e9, tz=datetime.UTC).date()
    age = pricing.age_days(today)
    if age <= pricing.max_age_days:
        return limits
    why = (
        f"agent {agent.name!r}: the price table is {age} days old (as of {pricing.as_of}, "
        f"over {pricing.max_age_days}), so max_cost_usd may be off"
    )
    if pricing.stale == "refuse":
        raise ConfigError(why + "; update the prices (fl.Pricing) or choose stale='warn'")
    if pricing.stale == "tokens_only":
        log.warning("pricing_stale_cost_ceiling_dropped", agent=agent.name, age_days=age)
        return msgspec.structs.replace(limits, max_cost_usd=None)
    log.warning("pricing_stale", agent=agent.name, age_days=age, as_of=pricing.as_of)
    return limits


class _NothingToDo(Exception):
    """Internal: a lease was taken for nothing to apply."""


def _merged(decisions: list[Decision], state: RunState) -> Decision:
    """The effects of several decisions in a row: every effect but the earlier Settles."""
    effects: list[Effect] = [
        e for d in decisions[:-1] for e in d.effects if not isinstance(e, Settle)
    ]
    effects.extend(decisions[-1].effects)
    return Decision(effects=tuple(effects), state=state)


def _iso(ns: int) -> str:
    return datetime.datetime.fromtimestamp(ns / 1e9, tz=datetime.UTC).isoformat(timespec="seconds")


def _evolve_all(state: RunState, decision: Decision, at: int) -> RunState:
    if decision.state is not None:
        return decision.state
    for event in decision.events:
        state = apply(state, event, at)
    return state


def _check_text(what: str, value: object) -> None:
    """Refuse what the log cannot hold as text, naming the value and the rule."""
    if not isinstance(value, str):
        raise ConfigError(f"{what} must be a str; got {type(value).__name__}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ConfigError(
            f"{what} contains an unpaired surrogate (U+{ord(value[exc.start]):04X}) at index "
            f"{exc.start}; text must be valid Unicode (decode bytes with errors='replace')"
        ) from None


def _check_run_id(run_id: object) -> None:
    if not isinstance(run_id, str) or not _RUN_ID.match(run_id):
        raise ConfigError(f"run_id must be 1-128 characters of [A-Za-z0-9._:-]; got {run_id!r}")


def _tool_drift(state: RunState, agent: Agent) -> str:
    old = {t.name: t for t in state.tools}
    new = {t.name: t.info for t in agent.tools}
    added = sorted(set(new) - set(old))
    removed = sorted(set(old) - set(new))
    changed = sorted(n for n in set(old) & set(new) if old[n] != new[n])
    parts = [
        f"{label}: {', '.join(names)}"
        for label, names in (("added", added), ("removed", removed), ("changed", changed))
        if names
    ]
    return (
        f"run {state.run_id!r} was started with other tools than agent {agent.name!r} has now "
        f"({'; '.join(parts) or 'digest differs'}); resume it with the original tools, "
        "or start a new run"
    )
