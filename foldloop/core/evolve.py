"""evolve(state, recorded) -> state: the one definition of what each event does to a run.

Total and pure: every event, even one that arrives late (a tool result after a cancel)
or one from a newer writer (``UnknownEvent``), yields a state; nothing here raises for
a valid event, reads a clock or logs.
"""

from __future__ import annotations

from collections.abc import Iterable

from msgspec.structs import replace

from foldloop.core.messages import Message, push
from foldloop.core.state import CallSignature, CallState, RunState, RunStatus
from foldloop.events.catalogue import (
    ApprovalDecided,
    ApprovalExpired,
    ApprovalRequested,
    ModelFailed,
    ModelRequested,
    ModelResponded,
    RunCancelled,
    RunCompleted,
    RunFailed,
    RunLimitReached,
    RunNoProgress,
    RunResumed,
    RunStarted,
    ToolCompleted,
    ToolFailed,
    ToolRequested,
)
from foldloop.events.recorded import AnyEvent, Recorded, UnknownEvent

__all__ = [
    "AT_GATE",
    "FINISHED",
    "INITIAL",
    "all_finished",
    "apply",
    "call_signature",
    "evolve",
    "tool_message",
]

INITIAL = RunState()

FINISHED = frozenset({"completed", "failed"})
"""Statuses of a call with an outcome (``CallState.finished`` without a property call: the
fold and decide ask it of every call of every step)."""


def all_finished(calls: Iterable[CallState]) -> bool:
    """Every call has an outcome."""
    for call in calls:  # noqa: SIM110 - a loop: all() over a generator costs a frame a call
        if call.status not in FINISHED:
            return False
    return True


def tool_message(call_id: str, tool: str, status: str, result: str, kind: str) -> Message:
    """What the model is told about one finished call (its fields, not a CallState: the
    fold keeps a step's calls as plain records and builds no CallState to ask this)."""
    if status == "completed":
        content = result
    elif kind == "interrupted":
        content = (
            "error (interrupted): the process running this tool stopped before it reported; "
            "whether the tool took effect is unknown. Check before trying again."
        )
    elif kind == "denied":
        content = f"denied by a person: {result}" if result else "denied by a person"
    else:
        content = f"error ({kind}): {result}"
    return Message(role="tool", content=content, tool_call_id=call_id, name=tool)


def call_signature(tool: str, args: str, status: str, result: str) -> CallSignature:
    """What makes two consecutive calls "the same" for no-progress detection: the tool,
    its args and its outcome. The fields themselves, not a hash of them: the fold takes one
    a call, a tuple costs a fifth of hashing a joined string (34 vs 177 ns), and two calls never
    collide."""
    return (tool, args, status, result)


def _finish_call(  # noqa: PLR0917 - one event's fields, applied in one copy
    state: RunState, seq: int, at: int, call_id: str, status: str, result: str, kind: str
) -> RunState:
    """A call's outcome; when it was the step's last, its messages join the history. All
    in one ``replace`` (the fold's hottest path)."""
    calls = list(state.calls)
    for i, call in enumerate(calls):
        if call.call_id == call_id and call.status not in FINISHED:
            calls[i] = replace(call, status=status, result=result, kind=kind)
            break
    else:
        return replace(state, seq=seq, last_at=at)
    new_calls = tuple(calls)
    invalid = state.invalid_args_in_step + (1 if kind == "invalid_args" else 0)
    if not all_finished(new_calls):
        return _gate_status(
            replace(state, seq=seq, last_at=at, calls=new_calls, invalid_args_in_step=invalid)
        )
    sig, count = state.repeat_sig, state.repeat_count
    for call in new_calls:
        this = call_signature(call.tool, call.args, call.status, call.result)
        sig, count = (sig, count + 1) if this == sig else (this, 1)
    messages = [tool_message(c.call_id, c.tool, c.status, c.result, c.kind) for c in new_calls]
    return _gate_status(
        replace(
            state,
            seq=seq,
            last_at=at,
            calls=new_calls,
            invalid_args_in_step=invalid,
            history=push(state.history, messages),
            repeat_sig=sig,
            repeat_count=count,
        )
    )


def _set_call(
    state: RunState, call_id: str, status: str, only_from: tuple[str, ...]
) -> tuple[CallState, ...]:
    return tuple(
        replace(c, status=status) if c.call_id == call_id and c.status in only_from else c
        for c in state.calls
    )


AT_GATE = frozenset({"awaiting_approval", "expired"})
"""Call statuses that wait on a person."""


def _gate_status(state: RunState) -> RunState:
    """A run waits for approval when calls wait at a gate and nothing else is in flight."""
    status = state.status
    if status is RunStatus.RUNNING:
        for call in state.calls:
            if call.status in AT_GATE:
                break
        else:
            return state  # the common case, decided without building lists
    elif status is not RunStatus.AWAITING_APPROVAL:
        return state
    waiting = [c for c in state.calls if c.status in AT_GATE]
    busy = any(c.status in ("proposed", "requested") for c in state.calls) or state.model_pending
    if waiting and not busy:
        expired = [c.call_id for c in waiting if c.status == "expired"]
        if expired:
            why = (
                f"the approval of {', '.join(expired)} expired undecided; "
                "rt.resume(run_id) asks again with a fresh token"
            )
        else:
            names = ", ".join(f"{c.call_id} ({c.tool})" for c in waiting)
            why = f"waiting for a person to approve or deny {names}; see rt.pending_approvals()"
        return replace(state, status=RunStatus.AWAITING_APPROVAL, reason=why)
    if state.status is RunStatus.AWAITING_APPROVAL:
        return replace(state, status=RunStatus.RUNNING, reason="")
    return state


def _park(state: RunState, seq: int, at: int, status: RunStatus, reason: str) -> RunState:
    return replace(
        state,
        seq=seq,
        last_at=at,
        status=status,
        reason=reason,
        model_pending=0,
        active_before_ns=state.elapsed_ns(at),
        active_since=at,
    )


def apply(state: RunState, event: AnyEvent, at: int) -> RunState:
    """The state after ``event`` happened at ``at`` (unix ns). Increments ``seq``."""
    prev_at = state.last_at
    seq = state.seq + 1  # set in the same replace() as each event's own changes: one copy
    match event:
        case RunStarted():
            intro = (
                [Message(role="system", content=event.instructions)] if event.instructions else []
            )
            intro.append(Message(role="user", content=event.input))
            return replace(
                state,
                seq=seq,
                last_at=at,
                started=True,
                agent=event.agent,
                input=event.input,
                instructions=event.instructions,
                limits=event.limits,
                tools=event.tools,
                tools_digest=event.tools_digest,
                status=RunStatus.RUNNING,
                active_since=at,
                history=push(state.history, intro),
            )
        case ModelRequested():
            return replace(state, seq=seq, last_at=at, model_pending=event.step)
        case ModelResponded():
            calls = tuple(
                CallState(call_id=c.id, tool=c.name, args=c.args) for c in event.tool_calls
            )
            reply = Message(role="assistant", content=event.text, tool_calls=event.tool_calls)
            return replace(
                state,
                seq=seq,
                last_at=at,
                steps=max(state.steps, event.step),
                usage=state.usage + event.usage,
                model_pending=0,
                model_failures=0,
                calls=calls,
                invalid_args_in_step=0,
                history=push(state.history, (reply,)),
            )
        case ModelFailed():
            return replace(state, seq=seq, last_at=at, model_failures=state.model_failures + 1)
        case ToolRequested():
            calls = tuple(
                replace(c, status="requested")
                if c.call_id == event.call_id and c.status == "proposed"
                else c
                for c in state.calls
            )
            return replace(state, seq=seq, last_at=at, calls=calls)
        case ToolCompleted():
            return _finish_call(state, seq, at, event.call_id, "completed", event.result, "")
        case ToolFailed():
            return _finish_call(state, seq, at, event.call_id, "failed", event.error, event.kind)
        case ApprovalRequested():
            calls = _set_call(state, event.call_id, "awaiting_approval", ("proposed", "expired"))
            return _gate_status(replace(state, seq=seq, last_at=at, calls=calls))
        case ApprovalDecided():
            # Approved: the call goes back to proposed, and tool.requested follows at once;
            # denied: it stays waiting until the tool.failed(kind="denied") that follows.
            if event.approved:
                calls = _set_call(state, event.call_id, "proposed", ("awaiting_approval",))
            else:
                calls = state.calls
            return _gate_status(replace(state, seq=seq, last_at=at, calls=calls))
        case ApprovalExpired():
            calls = _set_call(state, event.call_id, "expired", ("awaiting_approval",))
            return _gate_status(replace(state, seq=seq, last_at=at, calls=calls))
        case RunLimitReached():
            reason = (
                f"{event.limit} ceiling {event.ceiling:g} reached (value {event.value:g}); "
                f"continue with rt.resume(run_id, extend=fl.Limits({event.limit}=...))"
            )
            return _park(state, seq, at, RunStatus.LIMIT_REACHED, reason)
        case RunNoProgress():
            reason = (
                f"no progress: {event.detail}; change the tools or instructions, or "
                "continue with rt.resume(run_id)"
            )
            return _park(state, seq, at, RunStatus.NO_PROGRESS, reason)
        case RunCompleted():
            state = _park(state, seq, at, RunStatus.COMPLETED, "")
            return replace(state, output=event.output)
        case RunFailed():
            return _park(state, seq, at, RunStatus.FAILED, f"{event.kind}: {event.error}")
        case RunCancelled():
            why = (
                f"cancelled by the host: {event.reason}"
                if event.reason
                else "cancelled by the host"
            )
            return _park(state, seq, at, RunStatus.CANCELLED, why)
        case RunResumed():
            limits = event.extended_limits if event.extended_limits is not None else state.limits
            before = state.active_before_ns
            if state.status is RunStatus.RUNNING:
                # It crashed while running: it was active up to its last recorded event.
                before += max(0, prev_at - state.active_since)
            resumed = replace(
                state,
                seq=seq,
                last_at=at,
                limits=limits,
                status=RunStatus.RUNNING,
                reason="",
                repeat_count=0,
                model_failures=0,
                active_before_ns=before,
                active_since=at,
            )
            return _gate_status(resumed)
        case UnknownEvent():
            return replace(state, seq=seq, last_at=at, unknown_events=state.unknown_events + 1)


def evolve(state: RunState, recorded: Recorded) -> RunState:
    """Fold one recorded event into the state."""
    if not state.run_id:
        state = replace(state, run_id=recorded.run_id)
    return apply(state, recorded.event, recorded.at)
