"""decide(state, command) -> Decision: every rule of the agent loop, as a pure function.

The decider pattern: a command meets the current state and yields the events that record
what happened plus the effects to start once they are stored. Each command is checked
here and handled by the loop's rules (``_loop_rules.DecisionBuilder``), which build the
decision event by event.
"""

from __future__ import annotations

from msgspec.structs import replace

from foldloop.core._ceilings import ceiling_that_cut, time_limit
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
    Decision,
    RunTools,
    SpawnChild,
    ToolRun,
)
from foldloop.core._evolve import all_finished
from foldloop.core._loop_rules import MAX_INVALID_ARGS, DecisionBuilder
from foldloop.core._retries import MAX_MODEL_ATTEMPTS, retry_delay
from foldloop.core._state import RunState, RunStatus
from foldloop.core._tree import (
    child_input,
)
from foldloop.events._catalogue import (
    ApprovalDecided,
    ApprovalExpired,
    ChildEnded,
    ModelFailed,
    ModelResponded,
    RunAdmitted,
    RunCancelled,
    RunCompleted,
    RunFailed,
    RunFailureKind,
    RunQueued,
    RunResumed,
    RunStarted,
    ToolCompleted,
    ToolFailed,
    ToolFailureKind,
)
from foldloop.events._values import ToolCall

__all__ = ["MAX_INVALID_ARGS", "decide"]


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
    b = DecisionBuilder(state, command.now)
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
                    stop_reason=command.stop_reason,
                )
            )
            if not b.state.calls:
                _final_reply(b, state, command)
            else:
                b.propose(b.state.calls, command.gated)
        case ModelCallFailed():
            if state.status is not RunStatus.RUNNING or state.model_pending != command.step:
                return _rejected(f"no model call for step {command.step} is pending")
            _model_failed(b, command)
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


def _final_reply(b: DecisionBuilder, before: RunState, command: ModelReplied) -> None:
    """A reply without tool calls ends the run: completed when the model ended its turn.
    One it did not finish is no result (nor a turn of the conversation: a resume asks
    again from before it): cut at the cap the run's own ceilings set, the run stops at that
    ceiling (resume it with more); cut at the model's own cap, or refused, the model failed
    (resumable: once its cap is raised; a refusal may not come again)."""
    match command.stop_reason:
        case "":
            b.emit(RunCompleted(output=command.text))
        case "max_tokens" if (
            cut := ceiling_that_cut(before, b.state, command.usage.output_tokens)
        ) is not None:
            b.emit(cut)
        case "max_tokens":
            b.emit(
                RunFailed(
                    kind=RunFailureKind.MODEL,
                    error=(
                        f"the model's reply to step {command.step} was cut at its own "
                        "max_tokens before it finished; raise the model's max_tokens (the "
                        "adapter's max_tokens=) and resume the run"
                    ),
                )
            )
        case "refusal":
            quoted = command.text[:200] + ("..." if len(command.text) > 200 else "")
            said = f": {quoted!r}" if command.text else ""
            b.emit(
                RunFailed(
                    kind=RunFailureKind.MODEL,
                    error=f"the model refused to answer step {command.step}{said}",
                )
            )
        case other:  # a reason a newer version records
            b.emit(
                RunFailed(
                    kind=RunFailureKind.MODEL,
                    error=f"the model stopped before it finished step {command.step} ({other})",
                )
            )
    b.settle()


def _start(b: DecisionBuilder, command: Start) -> None:
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


def _model_failed(b: DecisionBuilder, command: ModelCallFailed) -> None:
    """Record a failed model call; ask again, stop at the time ceiling that cut it, or fail."""
    b.emit(
        ModelFailed(
            step=command.step,
            error=command.error,
            retryable=command.retryable,
            out_of_time=command.out_of_time,
        )
    )
    attempts = b.state.model_failures
    if command.out_of_time and (limit := time_limit(b.state, b.now)) is not None:
        # cut where the runtime's monotonic clock said the ceiling ran out: the run stops
        # there even if its own clock (injected, or stepped back) says less has passed
        b.emit(limit)
        b.settle()
    elif command.retryable and attempts < MAX_MODEL_ATTEMPTS:
        b.ask_again(command.step, attempts + 1, retry_delay(attempts, command.retry_after_s))
    else:
        why = f"gave up after {attempts} attempts" if command.retryable else "not retryable"
        b.emit(
            RunFailed(
                kind=RunFailureKind.MODEL,
                error=f"model call for step {command.step} failed ({why}): {command.error}",
            )
        )
        b.settle()


def _tool_finished(b: DecisionBuilder, state: RunState, command: ToolFinished) -> None:
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


def _child_finished(b: DecisionBuilder, state: RunState, command: ChildFinished) -> Decision:
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


def _gate_decision(b: DecisionBuilder, command: DecideApproval | ExpireApproval) -> None:
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


def _recover(b: DecisionBuilder, tickets: tuple[ApprovalTicket, ...] = ()) -> None:
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
