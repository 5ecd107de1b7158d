"""RunActor: the thin shell around decide() for one active run.

For each command: decide, append the decision's events, evolve, start the effects. The
append is the only blocking hop, and only when the decision is durable (an effect leaves
the process); otherwise the events are queued for the next group commit and the run moves
on. Model calls that may block run on the runtime's model pool; an instant one (a scripted
list) is called here. A step's only tool call runs on this thread too (``_run_here``), and
the system hands the run to a fresh actor if a cancel, an approval or the tool's timeout
arrives meanwhile; several calls go to their tool's pool. So a cancel never waits.

Nothing raises out of ``on_receive``: pykka kills an actor whose ``tell`` handler raises,
so every failure becomes a settled, resumable run with a reason.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, overload

import msgspec
import pykka

from foldloop._agent import Agent
from foldloop._approvals import approval_changes, issue_tickets
from foldloop._log import get_logger
from foldloop.actors._base import FastActor
from foldloop.actors._timers import Timers
from foldloop.actors._tool_actor import OneOutcome, RunToolCall, ToolRunner
from foldloop.actors._workers import Workers
from foldloop.core._commands import Command, ModelCallFailed, ModelReplied
from foldloop.core._decide import decide
from foldloop.core._effects import CallModel, Decision, RequestApproval, RunTools, Settle
from foldloop.core._evolve import apply
from foldloop.core._messages import Chunks, MessageView
from foldloop.core._snapshot import encode_chunk, split_state
from foldloop.core._state import STATE_VERSION, RunState, RunStatus
from foldloop.errors import FoldloopError, ModelCallError
from foldloop.events._catalogue import ToolFailed
from foldloop.events._codec import storable_text
from foldloop.events._values import Usage
from foldloop.store import ApprovalChanges, EventStore, Lease, Payload, Pending, encode_all

__all__ = ["AppendFailed", "RunActor", "RunHost"]

log = get_logger(__name__)

_INLINE_DEPTH = 8
"""Instant model replies handled in place, one inside the other, before one goes by mail."""


@dataclass(frozen=True)
class AppendFailed:
    """A queued (non-durable) append of this run was refused by the store."""

    error: BaseException


class RunHost(Protocol):
    """**Protocol:** what a RunActor needs of the system hosting it (``ActorSystem``), so
    that the actor does not import its supervisor."""

    @property
    def owner(self) -> str: ...
    @property
    def store(self) -> EventStore: ...
    @property
    def clock(self) -> Callable[[], int]: ...
    @property
    def snapshot_every(self) -> int: ...
    @property
    def on_state(self) -> Callable[[RunState], None] | None: ...
    @property
    def issued(self) -> dict[tuple[str, str], str]: ...
    @property
    def timers(self) -> Timers: ...
    @property
    def model_pool(self) -> Workers: ...

    def tool_runner(self, agent: Agent, name: str) -> ToolRunner: ...
    def notify(self, agent: Agent, state: RunState, call_id: str) -> None: ...
    def tell(self, run_id: str, message: Any) -> bool: ...
    def hand_on(self, old: Any, outcome: Any | None) -> None: ...
    def settled(self, run_id: str, epoch: int, state: RunState, *, released: bool) -> None: ...
    def interrupted(self, run_id: str, epoch: int, state: RunState, reason: str) -> None: ...


class RunActor(FastActor):
    """Drives one run while it is active; parked runs hold no actor."""

    def __init__(self, system: RunHost, agent: Agent, state: RunState, epoch: int) -> None:
        super().__init__()
        self.system = system
        self.agent = agent
        self.state = state
        self.epoch = epoch
        self.lease = Lease(system.owner, epoch)
        self.run_id = state.run_id
        self._log: Any = None
        self._dead = False
        self._held: list[Payload] = []
        self._held_from = 0
        self._held_approvals: ApprovalChanges | None = None
        self._released = False  # the lease went in the settling decision's transaction
        self._inline = bool(getattr(agent.llm, "instant", False))
        self._specs = [t.spec for t in agent.tools]
        self._depth = 0
        # A tool running on this actor's own thread (see _run_here): while it runs, the
        # system may hand the run to a fresh actor (timeout, cancel, any message).
        self.guard = threading.Lock()
        self.away: str | None = None
        self.replaced = False

    @property
    def log(self) -> Any:
        """This run's logger (bound on first use: most runs log only when they end)."""
        if self._log is None:
            self._log = log.bind(run_id=self.run_id, agent=self.agent.name)
        return self._log

    # -- messages ------------------------------------------------------------------------

    def on_receive(self, message: Any) -> None:
        if self._dead:
            return
        try:
            if isinstance(message, Command):
                self.handle(message)
            elif isinstance(message, Decision):
                self.perform(message)
            elif isinstance(message, AppendFailed):
                self.fail(message.error)
            if self._held and self.actor_inbox.empty():
                self._flush_held()
        except Exception as exc:
            self.log.exception("run_actor_error")
            self.fail(exc)

    def on_stop(self) -> None:
        # The runtime is closing: queue what this run holds back (the store commits it).
        if not self._dead:
            try:
                self._flush_held()
            except Exception:
                self.log.exception("flush_on_stop_failed")

    def handle(self, command: Command) -> None:
        """Decide, append, evolve, act."""
        tokens: dict[str, str] = {}
        policy = self.agent.approvals
        if policy is not None and isinstance(command, ModelReplied) and command.tool_calls:
            gated, tokens = issue_tickets(
                policy,
                ((i, "", c.name, c.args) for i, c in enumerate(command.tool_calls)),
                command.now,
            )
            command = msgspec.structs.replace(command, gated=gated)
        decision = decide(self.state, command)
        if decision.rejected:
            self.log.debug("command_ignored", command=type(command).__name__, why=decision.rejected)
            return
        if tokens and decision.state is not None:
            for index, call in enumerate(decision.state.calls):
                token = tokens.get(str(index))
                if token is not None:
                    self.system.issued[(self.run_id, call.call_id)] = token
        inline_model = (
            self._inline
            and len(decision.effects) == 1
            and isinstance(decision.effects[0], CallModel)
            and decision.effects[0].delay_s <= 0
        )
        self.commit(decision, command.now, hold=inline_model)
        for event in decision.events:
            if type(event) is ToolFailed:
                tool = next((c.tool for c in self.state.calls if c.call_id == event.call_id), "")
                self.log.warning(
                    "tool_failed",
                    tool=tool,
                    call_id=event.call_id,
                    kind=event.kind,
                    error=event.error[:300],
                )
        self.perform(decision)

    def commit(self, decision: Decision, at: int, *, hold: bool = False) -> None:
        """Append the decision's events; wait only if an effect needs them durable.

        ``hold`` keeps a non-durable decision's events back so that they ride in the next
        decision's append (one head lookup, one lease check, one op); ``on_receive``
        flushes them if no message follows.
        """
        if not decision.events:
            return
        payloads = encode_all(decision.events, at)
        state = decision.state
        if state is None:
            state = self.state
            for event in decision.events:
                state = apply(state, event, at)
        approvals = _joined(
            self._held_approvals,
            approval_changes(self.run_id, state, decision.events, at, self.state.seq + 1),
        )
        # A run that ends or parks here gives its lease up in the same write as the events
        # that say so: no reader (a wait in another process, a resume) sees it settled and
        # still held, and the release costs no commit of its own.
        settles = decision.durable and decision.settles
        if self._held:
            payloads = self._held + payloads
            expected = self._held_from
            self._held, self._held_approvals = [], None
        else:
            expected = self.state.seq
        before = self.state.seq
        if hold and not decision.durable:
            self._held, self._held_from, self._held_approvals = payloads, expected, approvals
        else:
            op = self._append(
                payloads, expected, durable=decision.durable, approvals=approvals, release=settles
            )
            if decision.durable:
                op.wait()
                self._released = settles
            every = self.system.snapshot_every
            if every and state.seq // every > before // every:
                self._snapshot(state)
        self.state = state
        if self.system.on_state is not None:
            self.system.on_state(state)

    def _append(
        self,
        payloads: list[Payload],
        expected: int,
        *,
        durable: bool,
        approvals: ApprovalChanges | None,
        release: bool = False,
    ) -> Pending[Any]:
        """Append under this actor's lease, with the approval records the events carry."""
        return self.system.store.append(
            self.run_id,
            payloads,
            expected_seq=expected,
            lease=self.lease,
            release=release,
            approvals=approvals,
            durable=durable,
            records=False,
            callback=None if durable else self._on_queued_append,
        )

    def _flush_held(self) -> None:
        if self._held:
            payloads, approvals = self._held, self._held_approvals
            self._held, self._held_approvals = [], None
            self._append(payloads, self._held_from, durable=False, approvals=approvals)

    def _on_queued_append(self, op: Pending[Any]) -> None:
        if op.error is not None:
            with contextlib.suppress(pykka.ActorDeadError):
                self.actor_ref.tell(AppendFailed(op.error))

    def _snapshot(self, state: RunState) -> None:
        blob, chunks = split_state(state)
        self.system.store.put_snapshot(
            state.run_id,
            seq=state.seq,
            state_version=STATE_VERSION,
            state=blob,
            chunks=_Encoded(chunks),
        )

    # -- effects -------------------------------------------------------------------------

    def perform(self, decision: Decision) -> None:
        """Start each effect of a committed decision."""
        for effect in decision.effects:
            match effect:
                case CallModel():
                    self._call_model(effect)
                case RunTools():
                    if not self._run_here(effect):
                        for call in effect.calls:
                            runner = self.system.tool_runner(self.agent, call.tool)
                            runner.dispatch(
                                RunToolCall(self.run_id, call.call_id, call.args, self.actor_ref)
                            )
                case RequestApproval():
                    self.system.notify(self.agent, self.state, effect.call_id)
                case Settle():
                    self.settle()

    def _call_model(self, effect: CallModel) -> None:
        messages = MessageView(self.state.history, self.state.steps)
        specs = self._specs
        llm, agent, clock = self.agent.llm, self.agent, self.system.clock
        ref = self.actor_ref

        def ask() -> Command:
            start = time.perf_counter()
            try:
                reply = llm.complete(messages, specs, max_tokens=effect.max_tokens)
                usage = reply.usage or Usage()
                model = reply.model or llm.model
                if not usage.cost_usd:
                    usage = agent.pricing.usage(model, usage.input_tokens, usage.output_tokens)
                return ModelReplied(
                    now=clock(),
                    step=effect.step,
                    text=storable_text(reply.text),
                    tool_calls=tuple(reply.tool_calls),
                    usage=usage,
                    model=model,
                    latency_ms=round((time.perf_counter() - start) * 1000, 3),
                )
            except ModelCallError as exc:
                return ModelCallFailed(
                    now=clock(), step=effect.step, error=str(exc), retryable=exc.retryable
                )
            except Exception as exc:
                return ModelCallFailed(
                    now=clock(),
                    step=effect.step,
                    error=f"{type(exc).__name__}: {exc}",
                    retryable=False,
                )

        def call() -> None:
            command = ask()
            with contextlib.suppress(pykka.ActorDeadError):
                ref.tell(command)

        pool = self.system.model_pool
        if effect.delay_s <= 0 and self._inline:
            # Nothing to wait for, so nothing a cancel could interrupt: call it here, and
            # handle the reply at once unless a message (a cancel) is already queued, which
            # must come first. The depth bound keeps a run of instant steps (unknown tools,
            # no tool calls to wait for) from growing the stack without limit.
            self._deliver(ask())
        elif effect.delay_s > 0:
            self.system.timers.call_later(effect.delay_s, lambda: pool.submit(call))
        else:
            pool.submit(call)

    def _deliver(self, command: Command) -> None:
        """Handle a command produced on this thread at once, unless a message (a cancel)
        is already queued, which must come first. The depth bound keeps a run of instant
        steps from growing the stack without limit: past it, the command goes by mail."""
        if self._depth < _INLINE_DEPTH and self.actor_inbox.empty():
            self._depth += 1
            try:
                self.handle(command)
            finally:
                self._depth -= 1
        else:
            with contextlib.suppress(pykka.ActorDeadError):
                self.actor_ref.tell(command)

    def _run_here(self, effect: RunTools) -> bool:
        """Run a step's only tool call on this thread, if its tool has a free slot.

        Handing the call to the tool's pool and its result back costs two thread wake-ups
        on every step. Running it here costs none, and nothing is lost: the call is durable
        already, the tool's concurrency bound is kept by its slots, and if the tool
        overruns its timeout, or any message (a cancel, an approval) arrives meanwhile,
        the system hands the run to a fresh actor (``ActorSystem.take_over``); this one
        then only forwards the tool's late outcome and stops.
        """
        if len(effect.calls) != 1 or len(self.state.calls) != 1:
            return False
        call = effect.calls[0]
        runner = self.system.tool_runner(self.agent, call.tool)
        if runner.tool.isolated or runner.tool.is_async or not runner.slots.try_take():
            return False
        with self.guard:
            self.away = call.call_id
        # Said first, checked second (``ActorSystem.tell`` queues, then checks): a message
        # that slipped in is seen here and handled first, the call going to the pool;
        # unless its teller already handed the run over, and then the call runs here.
        if not self.actor_inbox.empty():
            with self.guard:
                if not self.replaced:
                    self.away = None
                stay = self.away is not None
            if not stay:
                runner.slots.give()
                return False
        once = OneOutcome()
        timer = None
        try:
            run_id, system = self.run_id, self.system
            timer = runner.watch(
                run_id, call.call_id, once, lambda command: system.tell(run_id, command)
            )
            outcome = runner.tool.invoke(call.args)
        finally:
            runner.slots.give()
            if timer is not None:
                timer.cancel()
            with self.guard:
                self.away = None
                replaced = self.replaced
        command: Command | None = None
        if once.claim():
            command = runner.finished(self.state.run_id, call.call_id, outcome)
        else:  # its timeout was reported: dropped, as on the pool
            self.log.info("tool_result_unclaimed", call_id=call.call_id)
        if replaced:
            self._dead = True
            self.system.hand_on(self, command)
            self.stop()
        elif command is not None:
            self._deliver(command)
        return True

    # -- endings -------------------------------------------------------------------------

    def settle(self) -> None:
        """The run finished or parked: release the lease, tell waiters, stop."""
        self._dead = True
        state = self.state
        what = "run_parked" if state.status is RunStatus.AWAITING_APPROVAL else "run_finished"
        self.log.info(what, status=state.status.value, steps=state.steps, seq=state.seq)
        self.system.settled(self.run_id, self.epoch, state, released=self._released)
        self.stop()

    def fail(self, error: BaseException) -> None:
        """The run cannot be driven from here any more (fenced off, store error)."""
        if self._dead:
            return
        self._dead = True
        reason = str(error) if isinstance(error, FoldloopError) else repr(error)
        self.log.error("run_interrupted", error=reason)
        self.system.interrupted(self.run_id, self.epoch, self.state, reason)
        self.stop()


def _joined(a: ApprovalChanges | None, b: ApprovalChanges | None) -> ApprovalChanges | None:
    """Both decisions' approval changes, in order (None when neither has any)."""
    if a is None or b is None:
        return a or b
    return a + b


class _Encoded(Sequence[bytes]):
    """A snapshot's history chunks, each encoded only when the store asks for it (the
    chunks it holds already are never encoded again)."""

    def __init__(self, chunks: Chunks) -> None:
        self._chunks = chunks

    def __len__(self) -> int:
        return len(self._chunks)

    @overload
    def __getitem__(self, index: int) -> bytes: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[bytes]: ...

    def __getitem__(self, index: int | slice) -> bytes | Sequence[bytes]:
        if isinstance(index, slice):
            return [encode_chunk(c) for c in self._chunks[index]]
        return encode_chunk(self._chunks[index])
