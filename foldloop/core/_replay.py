"""The replay check: feed each recorded input back to today's decide and compare.

A log is a sequence of decisions. Each begins with an input event (a model reply, a tool
result, a start, a cancel, a resume) and continues with the events decide emitted for it.
Replaying rebuilds the command from the input event (with ``now`` = its recorded ``at``),
asks today's ``decide`` and demands exactly the recorded events; the first difference
raises ``NondeterminismError`` naming the run, the seq, the recorded and the new event.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from msgspec.structs import replace

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
from foldloop.core._decide import decide
from foldloop.core._evolve import INITIAL, evolve
from foldloop.core._state import RunState
from foldloop.errors import NondeterminismError
from foldloop.events._catalogue import (
    ApprovalDecided,
    ApprovalExpired,
    ApprovalRequested,
    ChildEnded,
    ModelFailed,
    ModelResponded,
    RunAdmitted,
    RunCancelled,
    RunQueued,
    RunResumed,
    RunStarted,
    ToolCompleted,
    ToolFailed,
)
from foldloop.events._recorded import Recorded, UnknownEvent

__all__ = ["INPUT_TYPES", "StartFactory", "command_for", "replay"]

StartFactory = Callable[[RunStarted, int], Start]
"""Builds the Start command today's code would issue for a recorded ``run.started``."""


def _recorded_start(event: RunStarted, now: int) -> Start:
    return Start(
        now=now,
        agent=event.agent,
        input=event.input,
        instructions=event.instructions,
        limits=event.limits,
        tools=event.tools,
        tools_digest=event.tools_digest,
        metadata=event.metadata,
        parent_run_id=event.parent_run_id,
        parent_call_id=event.parent_call_id,
        depth=event.depth,
        price=event.price,
        tools_bytes=event.tools_bytes,
        reserves_calls=event.reserves_calls,
    )


#: The events that begin a decision (a command's own record); every other event is decided.
INPUT_TYPES = frozenset(
    {
        "run.started",
        "model.responded",
        "model.failed",
        "tool.completed",
        "tool.failed",
        "approval.decided",
        "approval.expired",
        "run.cancelled",
        "run.resumed",
        "run.admitted",
        "child.ended",
    }
)


def _tickets(
    following: Sequence[Recorded], by_index: tuple[str, ...]
) -> tuple[ApprovalTicket, ...]:
    """The gate tickets a decision was made with, read back from its approval.requested events."""
    out: list[ApprovalTicket] = []
    for rec in following:
        event = rec.event
        if not isinstance(event, ApprovalRequested):
            if rec.type in INPUT_TYPES:
                break
            continue
        known = event.call_id in by_index
        out.append(
            ApprovalTicket(
                index=by_index.index(event.call_id) if known else -1,
                call_id="" if known else event.call_id,
                gate=event.gate,
                token_digest=event.token_digest,
                expires_at=event.expires_at,
                summary=event.summary,
            )
        )
    return tuple(out)


def command_for(
    recorded: Recorded,
    start: StartFactory = _recorded_start,
    following: Sequence[Recorded] = (),
) -> Command | None:
    """The command that produced ``recorded`` as its first event, or None for a decided event.

    ``following`` are the records after it (the gate tickets of a reply or a resume are
    read back from the approval.requested events its decision recorded; whether a start
    found no free slot, from the run.queued after it).
    """
    event, now = recorded.event, recorded.at
    match event:
        case RunStarted():
            queued = bool(following) and isinstance(following[0].event, RunQueued)
            return replace(start(event, now), queued=True) if queued else start(event, now)
        case RunAdmitted():
            return Admit(now=now, owner=event.owner)
        case ModelResponded():
            return ModelReplied(
                now=now,
                step=event.step,
                text=event.text,
                tool_calls=event.tool_calls,
                usage=event.usage,
                model=event.model,
                latency_ms=event.latency_ms,
                gated=_tickets(following, tuple(c.id for c in event.tool_calls)),
                stop_reason=event.stop_reason,
            )
        case ModelFailed():
            return ModelCallFailed(
                now=now,
                step=event.step,
                error=event.error,
                retryable=event.retryable,
                out_of_time=event.out_of_time,
            )
        case ToolCompleted():
            return ToolFinished(
                now=now,
                call_id=event.call_id,
                ok=True,
                result=event.result,
                duration_ms=event.duration_ms,
                original_chars=event.original_chars,
            )
        case ToolFailed():
            return ToolFinished(
                now=now,
                call_id=event.call_id,
                ok=False,
                result=event.error,
                kind=event.kind,
                original_chars=event.original_chars,
            )
        case RunCancelled():
            return Cancel(now=now, reason=event.reason)
        case RunResumed():
            return Resume(
                now=now,
                owner=event.owner,
                recorded=event.extended_limits,
                gated=_tickets(following, ()),
            )
        case ApprovalDecided():
            return DecideApproval(
                now=now,
                call_id=event.call_id,
                approved=event.approved,
                by=event.by,
                note=event.note,
            )
        case ApprovalExpired():
            return ExpireApproval(now=now, call_id=event.call_id)
        case ChildEnded():
            answer = following[0].event if following else None
            output, original = "", None
            if isinstance(answer, ToolCompleted) and answer.call_id == event.call_id:
                output, original = answer.result, answer.original_chars
            return ChildFinished(
                now=now,
                call_id=event.call_id,
                run_id=event.run_id,
                status=event.status,
                output=output,
                original_chars=original,
                reason=event.reason,
                steps=event.steps,
                usage=event.usage,
            )
        case _:
            return None


def replay(records: Sequence[Recorded], start: StartFactory = _recorded_start) -> RunState:
    """Re-decide a run's whole log with today's code; return the final state if it agrees."""
    state = INITIAL
    i = 0
    while i < len(records):
        rec = records[i]
        if isinstance(rec.event, UnknownEvent):
            state = evolve(state, rec)
            i += 1
            continue
        command = command_for(rec, start, records[i + 1 :])
        if command is None:
            raise NondeterminismError(
                rec.run_id, rec.seq, rec.event, "no decision produces it here"
            )
        decision = decide(state, command)
        if decision.rejected:
            raise NondeterminismError(
                rec.run_id, rec.seq, rec.event, f"rejected: {decision.rejected}"
            )
        for offset, new in enumerate(decision.events):
            if i + offset >= len(records):
                last = records[-1]
                raise NondeterminismError(last.run_id, last.seq + 1, "end of log", new)
            old = records[i + offset]
            if old.event != new:
                raise NondeterminismError(old.run_id, old.seq, old.event, new)
            state = evolve(state, old)
        i += len(decision.events)
    return state
