"""The runtime's approvals desk: decisions taken from any process, carried into runs.

A decision is checked and recorded in the store's approvals table in one write
transaction (so of two racing deciders exactly one wins); the desk then carries it into
the run's log: through the run's actor if this runtime drives it, by taking the run's
lease and appending if the run is parked here, or not at all (a runtime with the agent
does it: its poller, ``resume`` or ``recover``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace

from foldloop._agent import Agent
from foldloop._approvals import PendingApproval, issue_tickets, token_digest
from foldloop._log import get_logger
from foldloop.actors._system import ActorSystem
from foldloop.core._commands import ApprovalTicket, Command, DecideApproval, ExpireApproval
from foldloop.core._decide import decide
from foldloop.core._effects import Decision
from foldloop.core._state import RunState, RunStatus
from foldloop.errors import ApprovalError, ConfigError, FoldloopError, RunLocked
from foldloop.runtime._driving import drive
from foldloop.runtime._lifecycle import Lifecycle
from foldloop.runtime._queries import Queries
from foldloop.runtime._registry import AgentRegistry
from foldloop.runtime._rules import NothingToDo, check_decision, evolve_all, iso, merged
from foldloop.runtime._writes import RunWrites
from foldloop.store import EventStore
from foldloop.store._approvals import ApprovalRecord

__all__ = ["ApprovalDesk"]

log = get_logger("foldloop.runtime")


class ApprovalDesk:
    """Approvals for one runtime (``rt.approve``/``deny``/``pending_approvals`` land here)."""

    def __init__(
        self,
        *,
        store: EventStore,
        system: ActorSystem,
        writes: RunWrites,
        queries: Queries,
        agents: AgentRegistry,
        lifecycle: Lifecycle,
        clock: Callable[[], int],
        tree_ended: Callable[[RunState], str | None],
    ) -> None:
        self._tree_ended = tree_ended
        """Why a run's tree ended above it ("parent cancelled"), or None: a request there
        is no one's to decide (the cancel cascading to it may not have reached it yet)."""
        self._store = store
        self._system = system
        self._writes = writes
        self._queries = queries
        self._agents = agents
        self._lifecycle = lifecycle
        self._clock = clock

    def pending(self) -> list[PendingApproval]:
        """Gated calls waiting for a decision (with the token, where this runtime issued it),
        each with the root of its run's tree; not those past their deadline, nor those in
        a tree that ended above them (the cancel cascading to them)."""
        now = self._clock()
        roots: dict[str, str] = {}
        listed = []
        for record in self._store.open_approvals():
            if record.status != "pending" or record.lapsed(now):
                continue
            root = self._queries.root_of(record.run_id, roots)
            if root != record.run_id and self._below_an_end(record):  # a root has none above
                continue
            listed.append(replace(self._system.gates.pending(record), root_run_id=root))
        return listed

    def _restorable(self, run_id: str, call_id: str) -> str:
        """Advice when the log says the call waits for a decision its request is missing
        for (a crash between a JetStream write's log and its records): a resume restores it."""
        try:
            state = self._queries.state(run_id)
        except FoldloopError:
            return ""
        if any(c.call_id == call_id and c.status == "awaiting_approval" for c in state.calls):
            return (
                "its log says it waits, its request unwritten (a crash between a JetStream "
                f"write's events and its records): taking the run up, rt.resume({run_id!r}) "
                "restores the request there"
            )
        return ""

    def _below_an_end(self, record: ApprovalRecord) -> bool:
        """The request's run is a child in a tree that ended above it."""
        try:
            return self._tree_ended(self._queries.state(record.run_id)) is not None
        except FoldloopError:  # an unreadable run: its request stays listed
            return False

    def record_decision(
        self,
        token: str | None,
        run_id: str | None,
        call_id: str | None,
        *,
        approved: bool,
        by: str,
        note: str,
    ) -> None:
        """Check and record a decision in one write transaction (exactly one racing decider
        wins), then carry it into the run if this runtime can."""
        check_decision(token, run_id, call_id, by, note)
        record: ApprovalRecord | None
        if token is not None:
            record = self._by_token(token, run_id, call_id)
        elif run_id is not None and call_id is not None:
            record = self._store.approval(run_id, call_id)
            if record is None:
                raise ApprovalError(
                    f"no approval request for run {run_id!r} call {call_id!r}",
                    advice=self._restorable(run_id, call_id),
                )
        else:
            raise ConfigError("pass a token, or both run_id= and call_id=")
        # an approval only: a denied call never runs, whoever denies it
        ended = (
            self._tree_ended(self._queries.state(record.run_id))
            if approved and record.status == "pending"
            else None
        )
        if ended is not None:
            raise ApprovalError(
                f"run {record.run_id!r} is in a tree that ended above it ({ended}): its "
                f"request for call {record.call_id!r} is no one's to decide; the cancel "
                "reaches the run"
            )
        now = self._clock()
        decided = self._writes.decide_approval(record, approved=approved, by=by, note=note, now=now)
        log.info(
            "approval_decided", run_id=record.run_id, call_id=record.call_id, status=decided.status
        )
        self.carry(record.run_id, record.agent)
        if decided.status == "expired":
            raise ApprovalError(
                f"the approval of run {record.run_id!r} call {record.call_id!r} expired at "
                f"{iso(record.expires_at)}",
                advice=f"rt.resume({record.run_id!r}) asks again",
            )

    def _by_token(self, token: str, run_id: str | None, call_id: str | None) -> ApprovalRecord:
        """The request ``token`` decides: refused when unknown, superseded by a request
        issued again (``resume`` after an expiry), or not the ids given beside it."""
        digest = token_digest(token)
        record = self._store.approval_by_token(digest)
        if record is None:
            raise ApprovalError("no such approval request: the token is unknown or forged")
        if record.token_digest != digest:
            raise ApprovalError(
                f"this token was for an earlier request of run {record.run_id!r} call "
                f"{record.call_id!r}, asked again at {iso(record.requested_at)} with a new token",
                advice="decide with the new token (rt.pending_approvals()) or by ids",
            )
        if (run_id is not None and run_id != record.run_id) or (
            call_id is not None and call_id != record.call_id
        ):
            given = " ".join(
                f"{name} {value!r}" for name, value in (("run", run_id), ("call", call_id)) if value
            )
            raise ApprovalError(
                f"the token is for run {record.run_id!r} call {record.call_id!r}, not {given}; "
                "pass the token alone, or the ids alone"
            )
        return record

    def tickets_again(
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

    def remember_tokens(self, run_id: str, tokens: dict[str, str]) -> None:
        for call_id, token in tokens.items():
            self._system.gates.issued[(run_id, call_id)] = token

    def commands(self, state: RunState) -> Iterator[Command]:
        """Commands for the run's waiting calls that the approvals table has decided (or
        that passed their deadline, which is recorded as expired first)."""
        for call in state.calls:
            if call.status != "awaiting_approval":
                continue
            record = self._store.approval(state.run_id, call.call_id)
            if record is None or record.applied:
                continue
            now = self._clock()
            if record.status == "pending":
                if not record.lapsed(now):
                    continue
                try:
                    record = self._writes.expire(record, now)
                except ApprovalError:  # decided between the read and the expiry: use that
                    record = self._store.approval(state.run_id, call.call_id)
                    if record is None or record.applied or record.status == "pending":
                        continue
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

    def decided_not_applied(self, state: RunState) -> bool:
        """True if a call the run waits on is decided in the approvals table already."""
        for call in state.calls:
            if call.status == "awaiting_approval":
                record = self._store.approval(state.run_id, call.call_id)
                if record is not None and record.status != "pending" and not record.applied:
                    return True
        return False

    def apply(
        self, state: RunState, epoch: int, decisions: list[Decision]
    ) -> tuple[RunState, list[Decision], bool]:
        """Append the decisions (and expiries) the approvals table holds for a run we hold,
        after ``decisions`` (already committed), in one transaction; when the last of them
        settles the run, its lease is released in that transaction too. Returns the state
        after them, every decision, and whether the lease went."""
        steps: list[tuple[Decision, Command]] = []
        after = state
        for command in list(self.commands(state)):
            decision = decide(after, command)
            if decision.rejected:
                continue
            steps.append((decision, command))
            after = evolve_all(after, decision, command.now)
        if not steps:
            return state, decisions, False
        decisions = [*decisions, *(decision for decision, _ in steps)]
        settles = decisions[-1].settles
        self._writes.append_decisions(state, steps, epoch, release=settles)
        return after, decisions, settles

    def carry(self, run_id: str, agent_name: str) -> None:
        """Carry decisions into the run's log now, if this runtime can drive it."""
        if self._system.active(run_id):
            # Its actor appends them (it rejects any it has already applied).
            for command in self.commands(self._queries.state(run_id)):
                self._system.tell(run_id, command)
            return
        agent = self._agents.named(agent_name)
        if agent is None or self._lifecycle.closed:
            return  # a runtime with the agent (its poller, resume or recover) carries it on
        try:
            epoch = self._system.take(run_id)
        except RunLocked:
            return  # whoever drives it (here or elsewhere) sees the decision itself
        try:
            state = self._queries.state(run_id)
            if state.status is not RunStatus.AWAITING_APPROVAL:
                raise NothingToDo
            state, decisions, released = self.apply(state, epoch, [])
            if not decisions:
                raise NothingToDo
        except NothingToDo:
            self._system.give_back(run_id, epoch)
            return
        except Exception:
            log.exception("approval_apply_failed", run_id=run_id)
            self._system.give_back(run_id, epoch)
            return
        except BaseException:
            self._system.give_back(run_id, epoch)
            raise
        drive(self._system, agent, state, epoch, merged(decisions, state), released=released)

    def carry_due(self) -> None:
        """Carry decisions made elsewhere, and expiries, into runs of agents known here."""
        now = self._clock()
        runs = {
            (r.run_id, r.agent)
            for r in self._store.due_approvals(now)
            if self._agents.named(r.agent) is not None
        }
        for run_id, agent_name in sorted(runs):
            self.carry(run_id, agent_name)
