"""RunActor: one run while it is active, a virtual actor hosted by a Shard.

Each message is handled in one place, ``handle``: decide, append, then perform the
effects. The append waits only when the decision is durable (an effect leaves the
process), and then without holding the shard: the run's next message waits for the commit,
other runs go on. Model calls go to the runtime's event loop (a model with ``acomplete``)
or its model pool; an instant one (a scripted list) is answered here and its reply queued
in the run's own mailbox, behind any cancel already there. Tool calls go to their tool's
pool or loop. A cancel cancels the model call in flight.

Nothing raises out of ``receive``: every failure becomes a settled, resumable run with a
reason.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Sequence
from typing import Any, Protocol, overload

import msgspec

from foldloop._agent import Agent
from foldloop._approvals import approval_changes, issue_tickets
from foldloop._log import get_logger
from foldloop.actors._base import FAILURES
from foldloop.actors._event_loop import EventLoop
from foldloop.actors._gates import Gates
from foldloop.actors._model_call import BACKOFF, ModelCall, reply_bound
from foldloop.actors._model_calls import ModelCalls
from foldloop.actors._queued import Cancellable, QueuedCall
from foldloop.actors._timers import Timers
from foldloop.actors._tool_actor import AsyncCall, RunToolCall, ToolRunner
from foldloop.core._commands import Cancel, Command, ModelReplied, ToolFinished
from foldloop.core._decide import decide
from foldloop.core._effects import (
    AwaitChildren,
    CallModel,
    CancelChildren,
    Decision,
    RequestApproval,
    RunTools,
    Settle,
    SpawnChild,
)
from foldloop.core._evolve import apply
from foldloop.core._messages import Chunks, MessageView, ToolSpec
from foldloop.core._snapshot import encode_chunk, split_state
from foldloop.core._state import STATE_VERSION, RunState, RunStatus
from foldloop.core._tree import waits_only_for_children
from foldloop.errors import FoldloopError
from foldloop.events._catalogue import ToolFailed
from foldloop.llm import async_form
from foldloop.store import (
    ApprovalChanges,
    EventStore,
    Lease,
    Payload,
    Pending,
    encode_all,
)

__all__ = ["AppendFailed", "ParkIfIdle", "RunActor", "RunHost"]

log = get_logger(__name__)


class ParkIfIdle(msgspec.Struct, frozen=True):
    """Park the run if it handled no command since (``handled`` of them then)."""

    handled: int


class AppendFailed(msgspec.Struct, frozen=True):
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
    def gates(self) -> Gates: ...
    @property
    def timers(self) -> Timers: ...
    @property
    def models(self) -> ModelCalls: ...
    @property
    def loop(self) -> EventLoop: ...

    def tool_runner(self, agent: Agent, name: str) -> ToolRunner: ...
    def tell(self, run_id: str, message: Any) -> bool: ...
    def spawn_children(self, parent: RunState, effects: tuple[SpawnChild, ...]) -> None: ...
    def park(self, actor: RunActor) -> None: ...
    @property
    def park_after_s(self) -> float: ...
    def cancel_children(self, run_ids: tuple[str, ...], reason: str) -> None: ...
    def proceed(self, actor: RunActor, then: Callable[[], bool]) -> None: ...
    def settled(self, run_id: str, epoch: int, state: RunState, *, released: bool) -> None: ...
    def interrupted(self, run_id: str, epoch: int, state: RunState, reason: str) -> None: ...


class RunActor:
    """Drives one run while it is active; parked runs hold no actor."""

    def __init__(self, system: RunHost, agent: Agent, state: RunState, epoch: int) -> None:
        self.system = system
        self.agent = agent
        self.state = state
        self.epoch = epoch
        self.lease = Lease(system.owner, epoch)
        self.run_id = state.run_id
        self.finished = False
        self._log: Any = None
        self._held: list[Payload] = []
        self._held_from = 0
        self._held_approvals: ApprovalChanges | None = None
        self._released = False  # the lease went in the settling decision's transaction
        self._inline = bool(getattr(agent.llm, "instant", False))
        self._asks = async_form(agent.llm)
        self._specs = _offered(agent, state)
        self._reply_bytes = reply_bound(system.store.max_event_bytes)  # what the store keeps
        self._cancelling = False
        """A cancel was told to this run and is not handled yet."""
        self._closing = False
        """Its runtime is closing: no new model call or child run starts."""
        self._handled = 0
        """Commands handled: a park check made before the last one is stale."""
        self._in_flight: list[Cancellable] = []
        """The async model call, async tool tasks, and sync tool and model calls waiting for
        a thread (cancelled with the run)."""
        self._in_flight_lock = threading.Lock()  # a retry's delayed call starts on a timer
        self._post: Callable[[Any], object] = functools.partial(system.tell, self.run_id)
        """Queues a message this run made for itself (the shard's, once activated)."""

    @property
    def log(self) -> Any:
        """This run's logger (bound on first use: most runs log only when they end)."""
        if self._log is None:
            self._log = log.bind(run_id=self.run_id, agent=self.agent.name)
        return self._log

    # -- messages (the shard hands them over one at a time) ------------------------------

    def receive(self, message: Any) -> bool:
        """Handle one message; False while a durable commit of it is on its way (the shard
        goes on with ``_committed`` when it lands)."""
        if self.finished:
            return True
        try:
            if isinstance(message, Command):
                if self._closing and type(message) not in (ToolFinished, Cancel):
                    # resume asks the model again, brings decisions in, follows children
                    self.log.debug("command_dropped_at_close", command=type(message).__name__)
                    return True
                self._handled += 1
                return self.handle(message)
            if isinstance(message, ParkIfIdle):
                if (
                    message.handled == self._handled
                    and not self._cancelling  # the cancel on its way is handled here first
                    and waits_only_for_children(self.state)
                ):
                    self._flush_held()
                    self.finished = True
                    self.system.park(self)
                return True
            if isinstance(message, Decision):
                return self.carry_out(message)
            if isinstance(message, AppendFailed):
                self.fail(message.error)
        except FAILURES as exc:
            self.log.exception("run_actor_error")
            self.fail(exc)
        return True

    def activated(self, post: Callable[[Any], None]) -> None:
        """On a shard now: ``post`` queues this run's own follow-ups in its mailbox."""
        self._post = post

    def idle(self) -> None:
        """No message waits: what was held back for the next append goes now."""
        try:
            self._flush_held()
        except FAILURES as exc:
            self.fail(exc)

    def stopping(self) -> None:
        """The runtime is closing: queue what this run holds back (the store commits it)."""
        if not self.finished:
            try:
                self._flush_held()
            except FAILURES:
                self.log.exception("flush_on_stop_failed")
        self._cancel_in_flight()

    # -- one step: decide, append, perform -------------------------------------------------

    def handle(self, command: Command) -> bool:
        """Decide on ``command``, append the decision's events, then perform its effects."""
        tokens: dict[str, str] = {}
        policy = self.agent.approvals
        if policy is not None and isinstance(command, ModelReplied) and command.tool_calls:
            gated, tokens = issue_tickets(
                policy,
                ((i, "", c.name, c.args) for i, c in enumerate(command.tool_calls)),
                command.now,
            )
            command = msgspec.structs.replace(command, gated=gated)
        if isinstance(command, Cancel):
            self._cancel_in_flight()
        decision = decide(self.state, command)
        if decision.rejected:
            self.log.debug("command_ignored", command=type(command).__name__, why=decision.rejected)
            return True
        if tokens and decision.state is not None:
            for index, call in enumerate(decision.state.calls):
                token = tokens.get(str(index))
                if token is not None:
                    self.system.gates.issued[(self.run_id, call.call_id)] = token
        self._log_failures(decision)
        return self.carry_out(decision, command.now)

    def carry_out(self, decision: Decision, at: int | None = None) -> bool:
        """Append a decision's events (none to append for the first decision: it is in the
        log already), then perform its effects, once committed when it is durable."""
        if at is not None and decision.events and self.commit(decision, at):
            return False
        self.perform(decision)
        return True

    def _committed(self, op: Pending[Any], decision: Decision, released: bool) -> bool:
        """The durable append of ``decision`` landed: go on with its effects."""
        if op.error is not None:
            self.fail(op.error)
            return True
        try:
            if not self.finished:
                self._released = released
                self.perform(decision)
        except FAILURES as exc:
            self.log.exception("run_actor_error")
            self.fail(exc)
        return True

    def commit(self, decision: Decision, at: int) -> bool:
        """Append the decision's events; True when an effect needs them durable: the shard
        is then told to go on (``_committed``) once they are.

        A non-durable decision followed by an instant model call keeps its events back to
        ride in the next decision's append (one head lookup, one lease check, one op);
        ``idle`` flushes them if no message follows.
        """
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
        if not decision.durable and self._holds(decision):
            self._held, self._held_from, self._held_approvals = payloads, expected, approvals
        else:
            self._append(
                payloads,
                expected,
                approvals=approvals,
                release=settles,
                landed=self._landing(decision, settles) if decision.durable else None,
            )
            every = self.system.snapshot_every
            if every and state.seq // every > before // every:
                self._snapshot(state)
        self.state = state
        observe = self.system.on_state
        if observe is not None:
            # it observes, it does not steer: the events are on their way to the log, so
            # its failure is the host's to see in the log, not the run's end
            try:
                observe(state)
            except Exception:
                self.log.exception("on_state_failed", seq=state.seq)
        return decision.durable

    def _landing(self, decision: Decision, released: bool) -> Callable[[Pending[Any]], None]:
        """The writer's callback for a durable append: the run goes on, on its shard."""
        proceed = self.system.proceed
        return lambda op: proceed(self, lambda: self._committed(op, decision, released))

    def _holds(self, decision: Decision) -> bool:
        """The decision's only effect is an instant model call: its events can wait for the
        reply's."""
        effects = decision.effects
        return (
            self._inline
            and len(effects) == 1
            and isinstance(effects[0], CallModel)
            and effects[0].delay_s <= 0
        )

    def _append(
        self,
        payloads: list[Payload],
        expected: int,
        *,
        approvals: ApprovalChanges | None,
        release: bool = False,
        landed: Callable[[Pending[Any]], None] | None = None,
    ) -> None:
        """Append under this actor's lease, with the approval records the events carry:
        durable when ``landed`` is given (told when it is), else queued."""
        self.system.store.append(
            self.run_id,
            payloads,
            expected_seq=expected,
            lease=self.lease,
            release=release,
            approvals=approvals,
            durable=landed is not None,
            records=False,
            callback=landed if landed is not None else self._on_queued_append,
        )

    def _flush_held(self) -> None:
        if self._held:
            payloads, approvals = self._held, self._held_approvals
            self._held, self._held_approvals = [], None
            self._append(payloads, self._held_from, approvals=approvals)

    def _on_queued_append(self, op: Pending[Any]) -> None:
        if op.error is not None:
            self.system.tell(self.run_id, AppendFailed(op.error))

    def _snapshot(self, state: RunState) -> None:
        blob, chunks = split_state(state)
        self.system.store.put_snapshot(
            state.run_id,
            seq=state.seq,
            state_version=STATE_VERSION,
            state=blob,
            chunks=_Encoded(chunks),
        )

    def _log_failures(self, decision: Decision) -> None:
        if self._closing:  # calls held back as the runtime closes: close() logs them together
            return
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

    # -- effects -------------------------------------------------------------------------

    def perform(self, decision: Decision) -> None:
        """Start each effect of a committed decision (a decision's child runs together);
        with a cancel on its way, nothing new starts (the cancel, handled next, settles)."""
        if self._cancelling:
            kept = tuple(e for e in decision.effects if type(e) in (Settle, CancelChildren))
            decision = msgspec.structs.replace(decision, effects=kept)
        elif self._closing:  # the tool calls already requested still run: they are in the log
            kept = tuple(e for e in decision.effects if type(e) not in (CallModel, SpawnChild))
            decision = msgspec.structs.replace(decision, effects=kept)
        children = tuple(e for e in decision.effects if type(e) is SpawnChild)
        if children:
            self.system.spawn_children(self.state, children)
        for effect in decision.effects:
            match effect:
                case CallModel():
                    self._call_model(effect)
                case RunTools():
                    tell, run_id = self.system.tell, self.run_id
                    for call in effect.calls:
                        runner = self.system.tool_runner(self.agent, call.tool)
                        task = runner.dispatch(
                            RunToolCall(run_id, call.call_id, call.args, _to_run(tell, run_id)),
                            closing=self._closing,
                        )
                        if task is not None:
                            self._track(task)
                case RequestApproval():
                    self.system.gates.notify(self.agent, self.state, effect.call_id)
                case CancelChildren():
                    self.system.cancel_children(effect.run_ids, effect.reason)
                case AwaitChildren():
                    self._park_when_idle()
                case Settle():
                    self.settle()

    def _call_model(self, effect: CallModel) -> None:
        """Ask the model: inline when instant, on the runtime's loop when it has
        ``acomplete``, else on the model pool; the reply comes back as a message."""
        messages = MessageView(self.state.history, self.state.steps)
        asked = ModelCall(
            self.agent,
            self.system.clock,
            effect,
            messages,
            self._specs,
            run_id=self.run_id,
            max_reply_bytes=self._reply_bytes,
        )
        if effect.delay_s <= 0 and self._inline:
            self._post(asked.sync())
        elif effect.delay_s > 0:  # a backoff past the run's max_seconds is cut there too
            wait = min(effect.delay_s, asked.seconds_left())
            self.system.timers.call_later(wait, lambda: self._start_call(asked))
        else:
            self._start_call(asked)

    def _start_call(self, asked: ModelCall) -> None:
        if self._closing or self._cancelling or self.finished:  # a retry's delay ran out late
            self.log.debug("model_call_dropped", closing=self._closing)
            return
        if asked.seconds_left() <= 0:  # the backoff outlasted max_seconds: not made
            self._post(asked.out_of_time(BACKOFF))
            return
        reply = _to_run(self.system.tell, self.run_id)
        self.system.models.start(asked, self._asks, reply, self._track)

    def _park_when_idle(self) -> None:
        """Park (give the actor up, keep the lease) if nothing else arrives for the run for
        ``park_after_s``: a parent waiting long on its children then holds nothing here."""
        handled, tell, run_id = self._handled, self.system.tell, self.run_id

        def check() -> None:
            tell(run_id, ParkIfIdle(handled))

        self.system.timers.call_later(self.system.park_after_s, check)

    def _track(self, future: Cancellable) -> None:
        """Keep an async call's future, for a cancel to cancel (the ones done go)."""
        with self._in_flight_lock:
            if not self.finished and not self._cancelling:
                self._in_flight = [f for f in self._in_flight if not f.done()]
                self._in_flight.append(future)
                return
        future.cancel()

    @property
    def cancelling(self) -> bool:
        """A cancel was told to this run and is not handled yet."""
        return self._cancelling

    def cancel_requested(self) -> None:
        """(Any thread.) A cancel is on its way to this run: calls waiting for a slot never
        start, calls under way are cancelled, and nothing new starts before it is handled."""
        with self._in_flight_lock:
            self._cancelling = True
        self._cancel_in_flight()

    def closing(self) -> None:
        """(Any thread.) The runtime is closing: the run records its tool calls' outcomes
        and a cancel, takes no other command, and starts no model call, child run, or call
        still waiting for one of its tool's threads (that one is recorded as not run)."""
        self._closing = True
        self.hold_queued()

    def hold_queued(self) -> None:
        """(Any thread.) The calls still waiting for a slot never start; each tool call is
        reported as not run."""
        with self._in_flight_lock:
            waiting = [f for f in self._in_flight if isinstance(f, QueuedCall | AsyncCall)]
        for call in waiting:
            call.hold()

    def tool_calls_under_way(self) -> int:
        """(Any thread.) Calls of this run's own tools requested and without an outcome (a
        sub-agent call's child run is none); 0 once the run stopped here."""
        if self.finished:
            return 0
        tool = self.agent.tool
        return sum(
            1 for c in self.state.calls if c.status == "requested" and tool(c.tool) is not None
        )

    def _cancel_in_flight(self) -> None:
        with self._in_flight_lock:
            futures, self._in_flight = self._in_flight, []
        for future in futures:
            future.cancel()

    # -- endings -------------------------------------------------------------------------

    def settle(self) -> None:
        """The run finished or parked: release the lease, tell waiters, deactivate."""
        self.finished = True
        self._cancel_in_flight()
        state = self.state
        what = "run_parked" if state.status is RunStatus.AWAITING_APPROVAL else "run_finished"
        self.log.info(what, status=state.status.value, steps=state.steps, seq=state.seq)
        self.system.settled(self.run_id, self.epoch, state, released=self._released)

    def fail(self, error: BaseException) -> None:
        """The run cannot be driven from here any more (fenced off, store error)."""
        if self.finished:
            return
        self.finished = True
        self._cancel_in_flight()
        reason = str(error) if isinstance(error, FoldloopError) else repr(error)
        self.log.error("run_interrupted", error=reason)
        self.system.interrupted(self.run_id, self.epoch, self.state, reason)


def _offered(agent: Agent, state: RunState) -> list[ToolSpec]:
    """The tools the model is shown: a run at its tree's max_depth is not offered the
    sub-agents it could not start."""
    if state.depth < state.limits.depth_ceiling:
        return list(agent.tool_specs)
    subagents = {a.name for a in agent.agents}
    return [spec for spec in agent.tool_specs if spec.name not in subagents]


def _to_run(tell: Callable[[str, Any], bool], run_id: str) -> Callable[[Any], bool]:
    return lambda command: tell(run_id, command)


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
