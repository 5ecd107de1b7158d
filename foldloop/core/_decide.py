"""decide(state, command) -> Decision: every rule of the agent loop, as a pure function.

The decider pattern: a command meets the current state and yields the events that record
what happened plus the effects to start once they are stored. Decisions are built by
emitting events one at a time and folding them into a draft of the state with the same
rules the fold uses, so the state after a decision is, by construction, the fold of
the log with the decision's events appended.

Limits are checked before every action: before each model call (steps, tokens, cost,
time) and before each batch of tool calls (time, cost).
"""

from __future__ import annotations

from msgspec.structs import replace

from foldloop.core._ceilings import before_tools, call_room, next_call
from foldloop.core._commands import (
    Admit,
    ApprovalTicket,
    Cancel,
    ChildFinished,
    Command,
    DecideApproval,
    ExpireApproval,
    ModelCallFailed,
    ModelReplied,
    Resume,
    Start,
    ToolFinished,
)
from foldloop.core._effects import (
    AwaitChildren,
    CallModel,
    CancelChildren,
    Decision,
    Effect,
    RequestApproval,
    RunTools,
    Settle,
    SpawnChild,
    ToolRun,
)
from foldloop.core._evolve import Draft, all_finished
from foldloop.core._messages import prompt_digest
from foldloop.core._retries import MAX_MODEL_ATTEMPTS, retry_delay
from foldloop.core._state import CallState, RunState, RunStatus
from foldloop.core._tree import (
    allotment,
    child_input,
    child_refused,
    child_run_id,
    spent,
    unstarted_children,
    waits_only_for_children,
)
from foldloop.events._catalogue import (
    ApprovalDecided,
    ApprovalExpired,
    ApprovalRequested,
    ChildEnded,
    ChildSpawned,
    KnownEvent,
    ModelFailed,
    ModelRequested,
    ModelResponded,
    RunAdmitted,
    RunCancelled,
    RunCompleted,
    RunFailed,
    RunFailureKind,
    RunNoProgress,
    RunQueued,
    RunResumed,
    RunStarted,
    ToolCompleted,
    ToolFailed,
    ToolFailureKind,
    ToolRequested,
)
from foldloop.events._values import ToolCall

__all__ = ["MAX_INVALID_ARGS", "decide"]

MAX_INVALID_ARGS = 3
"""Invalid-argument tool calls in one step that end the run failed."""


class _Builder:
    """Accumulates one decision: events (folded into a draft of the state as they are
    emitted; the state is built from the draft when next asked for)."""

    def __init__(self, state: RunState, now: int) -> None:
        self._state: RunState | None = state
        self._draft: Draft | None = None
        self.now = now
        self.events: list[KnownEvent] = []
        self.effects: list[Effect] = []
        self.durable = False

    @property
    def state(self) -> RunState:
        """The state after the events emitted so far."""
        if self._state is None:
            assert self._draft is not None  # an event was emitted since the last build
            self._state = self._draft.state()
        return self._state

    def emit(self, event: KnownEvent) -> None:
        self.events.append(event)
        if self._draft is None:
            self._draft = Draft(self.state)
        self._draft.take(((event, self.now),))
        self._state = None

    def settle(self) -> None:
        self.effects.append(Settle())
        self.durable = True

    def cancel_children(self, reason: str) -> None:
        """Cancel the child runs still running (the run ends without their answers)."""
        running = tuple(c.run_id for c in self.state.children if c.running)
        if running:
            self.effects.append(CancelChildren(run_ids=running, reason=reason))

    def decision(self) -> Decision:
        if not any(type(e) is Settle for e in self.effects) and waits_only_for_children(self.state):
            self.effects.append(AwaitChildren())
            self.durable = True  # what it waits with is in the log before it may park
        return Decision(
            events=tuple(self.events),
            effects=tuple(self.effects),
            durable=self.durable,
            state=self.state,
        )

    # -- the loop's rules ---------------------------------------------------------------

    def call_model(self) -> None:
        """Ask the model for the next step, unless a ceiling forbids it."""
        room = next_call(self.state, self.now)
        if room.limit is not None:
            self.emit(room.limit)
            self.settle()
            return
        s = self.state
        left = room.max_tokens
        step = s.steps + 1
        digest = prompt_digest(s.history_digest, s.tools_digest, left)
        self.emit(ModelRequested(step=step, prompt_digest=digest, max_tokens=left))
        self.effects.append(
            CallModel(
                step=step,
                max_tokens=left,
                prompt_bound=room.prompt_bound,
                reserved_usd=room.reserved_usd,
            )
        )

    def ask_again(self, step: int, attempt: int = 1, delay_s: float = 0.0) -> None:
        """Make the pending call of ``step`` again (a retry, a recovery, a resume) with the
        room the run has now, unless none is left: a resume gave a run whose call went out
        without a ceiling one that its prompt does not fit."""
        room = call_room(self.state, spent(self.state))
        if room.limit is not None:
            self.emit(room.limit)
            self.settle()
            return
        self.effects.append(
            CallModel(
                step=step,
                max_tokens=room.max_tokens,
                attempt=attempt,
                delay_s=delay_s,
                prompt_bound=room.prompt_bound,
                reserved_usd=room.reserved_usd,
            )
        )

    def request_tools(self, calls: tuple[CallState, ...]) -> None:
        """Record the intent of each proposed call and run the known ones."""
        limit = before_tools(self.state, self.now)
        if limit is not None:
            self.emit(limit)
            self.settle()
            return
        runs: list[ToolRun] = []
        step = self.state.steps
        for call in calls:
            self.emit(
                ToolRequested(call_id=call.call_id, tool=call.tool, args=call.args, step=step)
            )
            info = self.state.tool_info(call.tool)
            if info is None:
                names = ", ".join(t.name for t in self.state.tools) or "none"
                self.emit(
                    ToolFailed(
                        call_id=call.call_id,
                        kind="invalid_args",
                        error=f"there is no tool named {call.tool!r}; the tools are: {names}",
                    )
                )
                continue
            if info.agent_limits is not None:
                refused = child_refused(self.state, info, call.args)
                if refused is not None:
                    kind, why = refused
                    self.emit(ToolFailed(call_id=call.call_id, kind=kind, error=why))
                continue  # started by spawn_children, as slots allow
            if not info.idempotent:
                self.durable = True
            runs.append(ToolRun(call_id=call.call_id, tool=call.tool, args=call.args))
        self.spawn_children()
        if runs:
            self.effects.append(RunTools(calls=tuple(runs)))
        elif self.children_pending():
            return
        elif all_finished(self.state.calls):
            self.after_step()
        elif self.state.status is RunStatus.AWAITING_APPROVAL:
            self.settle()

    def propose(self, calls: tuple[CallState, ...], tickets: tuple[ApprovalTicket, ...]) -> None:
        """Hold back the calls a gate ticketed (approval.requested), request the others."""
        if not tickets:  # no gate holds any of them (the common case)
            self.request_tools(calls)
            return
        limit = before_tools(self.state, self.now)
        if limit is not None:
            self.emit(limit)
            self.settle()
            return
        by_index = {t.index: t for t in tickets if t.index >= 0}
        by_id = {t.call_id: t for t in tickets if t.call_id}
        positions = {c.call_id: i for i, c in enumerate(self.state.calls)}
        plain: list[CallState] = []
        for call in calls:
            ticket = by_id.get(call.call_id) or by_index.get(positions.get(call.call_id, -1))
            if ticket is None or self.state.tool_info(call.tool) is None:
                plain.append(call)
                continue
            self.emit(
                ApprovalRequested(
                    call_id=call.call_id,
                    gate=ticket.gate,
                    token_digest=ticket.token_digest,
                    expires_at=ticket.expires_at,
                    summary=ticket.summary,
                )
            )
            self.effects.append(RequestApproval(call_id=call.call_id, gate=ticket.gate))
            self.durable = True
        self.request_tools(tuple(plain))

    def spawn_children(self) -> None:
        """Start the sub-agent calls waiting for a child run, as many as ``max_children``
        allows running at once, each with its allotment escrowed (``child.spawned``)."""
        s = self.state
        running = sum(1 for c in s.children if c.running)
        waiting = unstarted_children(s)
        for index, (call, info) in enumerate(waiting):
            if running >= s.limits.children_ceiling:
                return
            assert info.agent_limits is not None
            limits = allotment(self.state, info.agent_limits, self.now, len(waiting) - index)
            if isinstance(limits, str):
                error = f"sub-agent {call.tool!r} was not started: {limits}"
                self.emit(ToolFailed(call_id=call.call_id, kind="exception", error=error))
                continue
            run_id = child_run_id(s.run_id, s.steps, call.call_id, call.tool)
            self.emit(
                ChildSpawned(call_id=call.call_id, run_id=run_id, agent=call.tool, limits=limits)
            )
            self.effects.append(
                SpawnChild(
                    call_id=call.call_id,
                    run_id=run_id,
                    agent=call.tool,
                    input=child_input(call.args),
                    limits=limits,
                    depth=s.depth + 1,
                )
            )
            self.durable = True  # the escrow is recorded before the child can spend
            running += 1

    def children_pending(self) -> bool:
        """A sub-agent call of the step has no outcome yet (its child runs, or waits to)."""
        s = self.state
        return any(c.running for c in s.children) or bool(unstarted_children(s))

    def after_step(self) -> None:
        """Every call of the step has an outcome: stop for a rule, or ask the model again."""
        s = self.state
        if s.invalid_args_in_step >= MAX_INVALID_ARGS:
            last = next(c for c in reversed(s.calls) if c.kind == "invalid_args")
            self.emit(
                RunFailed(
                    kind=RunFailureKind.INVALID_ARGS,
                    error=(
                        f"the model sent invalid tool arguments {s.invalid_args_in_step} times "
                        f"in step {s.steps} (last: {last.tool}: {last.result}); improve the tool "
                        "descriptions or instructions, or use a stronger model"
                    ),
                )
            )
            self.settle()
            return
        window = s.limits.no_progress_window
        if window > 0 and s.repeat_count >= window:
            last_call = s.calls[-1]
            self.emit(
                RunNoProgress(
                    window=window,
                    detail=(
                        f"tool {last_call.tool!r} was called with the same arguments and gave "
                        f"the same result {s.repeat_count} times running"
                    ),
                )
            )
            self.settle()
            return
        self.call_model()


def _assign_ids(step: int, calls: tuple[ToolCall, ...]) -> tuple[ToolCall, ...]:
    """Give every call a unique id: the provider's if it has one, else one from step and index."""
    seen: set[str] = set()
    out: list[ToolCall] = []
    for i, call in enumerate(calls, start=1):
        call_id = call.id or f"call_{step}_{i}"
        if call_id in seen:
            call_id = f"{call_id}_{i}"
        seen.add(call_id)
        out.append(call if call_id == call.id else replace(call, id=call_id))
    return tuple(out)


def _rejected(why: str) -> Decision:
    return Decision(rejected=why)


def decide(state: RunState, command: Command) -> Decision:
    """What happens when ``command`` meets ``state``: events to append, effects to start."""
    b = _Builder(state, command.now)
    match command:
        case Start():
            if state.started:
                return _rejected(f"run {state.run_id!r} has already started")
            _start(b, command)
        case Admit():
            if state.status is not RunStatus.QUEUED:
                return _rejected(f"run {state.run_id!r} is {state.status.value}, not queued")
            b.emit(RunAdmitted(owner=command.owner))
            b.call_model()
        case ModelReplied():
            if state.status is not RunStatus.RUNNING or state.model_pending != command.step:
                return _rejected(f"no model call for step {command.step} is pending")
            b.emit(
                ModelResponded(
                    step=command.step,
                    text=command.text,
                    tool_calls=_assign_ids(command.step, command.tool_calls),
                    usage=command.usage,
                    model=command.model,
                    latency_ms=command.latency_ms,
                )
            )
            if not b.state.calls:
                b.emit(RunCompleted(output=command.text))
                b.settle()
            else:
                b.propose(b.state.calls, command.gated)
        case ModelCallFailed():
            if state.status is not RunStatus.RUNNING or state.model_pending != command.step:
                return _rejected(f"no model call for step {command.step} is pending")
            b.emit(ModelFailed(step=command.step, error=command.error, retryable=command.retryable))
            attempts = b.state.model_failures
            if command.retryable and attempts < MAX_MODEL_ATTEMPTS:
                b.ask_again(
                    command.step, attempts + 1, retry_delay(attempts, command.retry_after_s)
                )
            else:
                why = f"gave up after {attempts} attempts" if command.retryable else "not retryable"
                b.emit(
                    RunFailed(
                        kind=RunFailureKind.MODEL,
                        error=f"model call for step {command.step} failed ({why}): {command.error}",
                    )
                )
                b.settle()
        case ToolFinished():
            call = next((c for c in state.calls if c.call_id == command.call_id), None)
            if call is None or call.finished:
                return _rejected(f"no tool call {command.call_id!r} is waiting for a result")
            _tool_finished(b, state, command)
        case DecideApproval() | ExpireApproval():
            call = next((c for c in state.calls if c.call_id == command.call_id), None)
            if call is None or call.status != "awaiting_approval" or state.terminal:
                return _rejected(f"no call {command.call_id!r} is waiting for approval")
            _gate_decision(b, command)
        case ChildFinished():
            return _child_finished(b, state, command)
        case Cancel():
            if state.terminal or not state.started:
                return _rejected(f"run {state.run_id!r} is {state.status.value}; nothing to cancel")
            b.emit(RunCancelled(reason=command.reason))
            b.cancel_children("parent cancelled")
            b.settle()
        case Resume():
            if not state.started:
                return _rejected("the run has not started")
            if not state.resumable:
                return _rejected(
                    f"run {state.run_id!r} is {state.status.value} and cannot be resumed"
                    + (f" ({state.reason})" if state.reason else "")
                )
            extended = command.limits_after(state.limits)
            b.emit(RunResumed(owner=command.owner, extended_limits=extended))
            _recover(b, command.gated)
        case _:
            return _rejected(f"unknown command {type(command).__name__}")
    return b.decision()


def _start(b: _Builder, command: Start) -> None:
    """Record the run; ask the model, or (no free slot) queue it."""
    b.emit(
        RunStarted(
            agent=command.agent,
            input=command.input,
            limits=command.limits,
            tools_digest=command.tools_digest,
            parent_run_id=command.parent_run_id,
            metadata=command.metadata,
            instructions=command.instructions,
            tools=command.tools,
            parent_call_id=command.parent_call_id,
            depth=command.depth,
            price=command.price,
            tools_bytes=command.tools_bytes,
            reserves_calls=command.reserves_calls,
        )
    )
    b.durable = True
    if command.queued:
        b.emit(RunQueued())
        b.settle()
    else:
        b.call_model()


def _tool_finished(b: _Builder, state: RunState, command: ToolFinished) -> None:
    """Record a tool's outcome; move on when the step is done, park if only gates remain."""
    if command.ok:
        b.emit(
            ToolCompleted(
                call_id=command.call_id,
                result=command.result,
                duration_ms=command.duration_ms,
                original_chars=command.original_chars,
            )
        )
    else:
        b.emit(
            ToolFailed(
                call_id=command.call_id,
                error=command.result,
                kind=_kind(command.kind),
                original_chars=command.original_chars,
            )
        )
    if b.state.status is RunStatus.RUNNING and all_finished(b.state.calls):
        b.after_step()
    elif b.state.status is RunStatus.AWAITING_APPROVAL and state.status is RunStatus.RUNNING:
        b.settle()  # the last running call ended; the others wait for a person


def _child_finished(b: _Builder, state: RunState, command: ChildFinished) -> Decision:
    """A child ended: record what it spent (the rest of its allotment returns), give its
    answer to the call as the call's outcome, start a waiting sub-agent call in its slot."""
    link = next((c for c in state.children if c.run_id == command.run_id and c.running), None)
    if link is None or link.call_id != command.call_id or state.terminal:
        return _rejected(f"no child run {command.run_id!r} is running")
    b.emit(
        ChildEnded(
            call_id=command.call_id,
            run_id=command.run_id,
            status=command.status,
            steps=command.steps,
            usage=command.usage,
            reason="" if command.status == RunStatus.COMPLETED else command.reason,
        )
    )
    call = next((c for c in b.state.calls if c.call_id == command.call_id), None)
    if call is None or call.finished:
        return b.decision()  # the step moved on without it; its spend is recorded all the same
    if command.status == RunStatus.COMPLETED:
        b.emit(
            ToolCompleted(
                call_id=command.call_id,
                result=command.output,
                original_chars=command.original_chars,
            )
        )
    else:
        error = f"sub-agent run {command.run_id} ended {command.status}"
        b.emit(
            ToolFailed(
                call_id=command.call_id,
                kind="exception",
                error=f"{error}: {command.reason}" if command.reason else error,
            )
        )
    if b.state.status is RunStatus.RUNNING:
        b.spawn_children()
        if all_finished(b.state.calls):
            b.after_step()
    elif b.state.status is RunStatus.AWAITING_APPROVAL and state.status is RunStatus.RUNNING:
        b.settle()  # the last running call ended; the others wait for a person
    return b.decision()


def _gate_decision(b: _Builder, command: DecideApproval | ExpireApproval) -> None:
    """A waiting call was decided (run it, or tell the model it was denied) or expired."""
    if isinstance(command, ExpireApproval):
        b.emit(ApprovalExpired(call_id=command.call_id))
        if b.state.status is RunStatus.AWAITING_APPROVAL:
            b.settle()
        return
    b.emit(
        ApprovalDecided(
            call_id=command.call_id, approved=command.approved, by=command.by, note=command.note
        )
    )
    if command.approved:
        approved = next(c for c in b.state.calls if c.call_id == command.call_id)
        b.request_tools((approved,))
        return
    # The model hears the person's note (who decided is in approval.decided).
    b.emit(ToolFailed(call_id=command.call_id, kind="denied", error=command.note))
    if all_finished(b.state.calls):
        b.after_step()
    elif b.state.status is RunStatus.AWAITING_APPROVAL:
        b.settle()


def _kind(kind: str) -> ToolFailureKind:
    if kind in ("timeout", "invalid_args", "interrupted", "denied"):
        return kind  # type: ignore[return-value]
    return "exception"


def _recover(b: _Builder, tickets: tuple[ApprovalTicket, ...] = ()) -> None:
    """After ``run.resumed``: pick the run up exactly where its log says it stood."""
    again = {t.call_id for t in tickets}
    expired = tuple(c for c in b.state.calls if c.status == "expired" and c.call_id in again)
    if expired:
        b.propose(expired, tickets)  # ask again, with fresh tokens
        return
    s = b.state
    if s.status is RunStatus.AWAITING_APPROVAL:
        b.settle()
        return
    if s.model_pending:
        # A model call asked and not answered is asked again (model calls are repeatable).
        b.ask_again(s.model_pending)
        return
    proposed = tuple(c for c in s.calls if c.status == "proposed")
    rerun: list[ToolRun] = []
    args = {c.call_id: c.args for c in s.calls}
    for child in s.children:
        if child.running:  # follow it again (it exists: its start was durable first)
            b.effects.append(
                SpawnChild(
                    call_id=child.call_id,
                    run_id=child.run_id,
                    agent=child.agent,
                    input=child_input(args.get(child.call_id, '{"input": ""}')),
                    limits=child.allotted,
                    depth=s.depth + 1,
                )
            )
    for call in s.calls:
        if call.status != "requested":
            continue
        info = s.tool_info(call.tool)
        if info is not None and info.agent_limits is not None:
            continue  # a sub-agent call: its child is followed above, or started below
        if info is not None and info.idempotent:
            rerun.append(ToolRun(call_id=call.call_id, tool=call.tool, args=call.args))
        else:
            b.emit(
                ToolFailed(
                    call_id=call.call_id,
                    kind="interrupted",
                    error="the process running this tool stopped before it reported a result",
                )
            )
    if proposed:
        b.propose(proposed, tickets)
        if rerun:
            b.effects.append(RunTools(calls=tuple(rerun)))
        return
    b.spawn_children()
    if rerun:
        b.effects.append(RunTools(calls=tuple(rerun)))
        return
    if b.children_pending():
        return
    if b.state.status is RunStatus.AWAITING_APPROVAL:
        b.settle()  # what ran is accounted for; the rest waits for a person
        return
    b.call_model()
