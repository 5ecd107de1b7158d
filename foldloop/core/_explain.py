"""Why a run is where it is, and what to do next, computed from its fold and its last events.

Pure: the same log always explains the same way, so an explanation can be reproduced from
an exported log long after the run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from foldloop.core._replay import INPUT_TYPES
from foldloop.core._state import RunState, RunStatus
from foldloop.events._catalogue import (
    ModelResponded,
    RunLimitReached,
    ToolFailed,
)
from foldloop.events._recorded import Recorded

__all__ = ["Explanation", "explain"]


@dataclass(frozen=True)
class Explanation:
    """The answer to "why is this run here?"."""

    run_id: str
    status: RunStatus
    reason: str
    steps: int
    last_decision: str
    next_steps: tuple[str, ...] = field(default_factory=tuple)
    limit: str = ""

    def __str__(self) -> str:
        lines = [f"run {self.run_id} is {self.status.value} after {self.steps} steps"]
        if self.reason:
            lines.append(f"why: {self.reason}")
        if self.limit:
            lines.append(f"limit: {self.limit}")
        lines.append(f"last decision: {self.last_decision}")
        lines.extend(f"next: {step}" for step in self.next_steps)
        return "\n".join(lines)


def _describe(records: Sequence[Recorded]) -> str:
    """The last decision: the last input event and what was decided after it."""
    start = len(records) - 1
    while start > 0 and records[start].type not in INPUT_TYPES:
        start -= 1
    tail = records[start:]
    if not tail:
        return "nothing recorded yet"
    parts = []
    for rec in tail:
        event = rec.event
        if isinstance(event, ModelResponded):
            calls = ", ".join(c.name for c in event.tool_calls)
            parts.append(
                f"seq {rec.seq}: the model answered step {event.step}"
                + (f" asking for {calls}" if calls else " with its final text")
            )
        elif isinstance(event, ToolFailed):
            parts.append(f"seq {rec.seq}: tool call {event.call_id} failed ({event.kind})")
        else:
            parts.append(f"seq {rec.seq}: {rec.type}")
    return "; ".join(parts)


def explain(state: RunState, records: Sequence[Recorded], *, orphaned: bool = False) -> Explanation:
    """Explain ``state`` (the fold of ``records``); ``orphaned``: no live runtime drives it."""
    status = state.status
    limit = ""
    next_steps: list[str] = []
    last_limit = next(
        (r.event for r in reversed(records) if isinstance(r.event, RunLimitReached)), None
    )
    if status is RunStatus.RUNNING and orphaned:
        status = RunStatus.INTERRUPTED
    match status:
        case RunStatus.COMPLETED:
            next_steps.append("nothing: the run completed; its output is in run.completed")
        case RunStatus.LIMIT_REACHED if last_limit is not None:
            limit = f"{last_limit.limit} = {last_limit.value:g} of {last_limit.ceiling:g}"
            next_steps.append(
                f"raise the ceiling: rt.resume(run_id, extend=fl.Limits({last_limit.limit}=...))"
            )
        case RunStatus.NO_PROGRESS:
            next_steps.append("change the tools or instructions, then rt.resume(run_id)")
        case RunStatus.FAILED if state.resumable:
            next_steps.append("fix the model's availability, then rt.resume(run_id)")
        case RunStatus.FAILED:
            next_steps.append("start a new run: a failed run cannot continue")
        case RunStatus.CANCELLED:
            next_steps.append("start a new run: a cancelled run cannot continue")
        case RunStatus.INTERRUPTED:
            next_steps.append("rt.recover() in a runtime with this agent, or rt.resume(run_id)")
        case RunStatus.AWAITING_APPROVAL:
            waiting = [c.call_id for c in state.calls if c.status == "awaiting_approval"]
            next_steps.append(f"decide the pending approvals: {', '.join(waiting)}")
        case _:
            next_steps.append("wait: a runtime is driving it (run.wait())")
    reason = state.reason
    if status is RunStatus.INTERRUPTED:
        reason = "the runtime driving it stopped before the run finished"
    return Explanation(
        run_id=state.run_id,
        status=status,
        reason=reason,
        steps=state.steps,
        last_decision=_describe(records),
        next_steps=tuple(next_steps),
        limit=limit,
    )
