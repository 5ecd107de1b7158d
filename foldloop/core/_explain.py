"""Why a run is where it is, and what to do next, computed from its fold and its last events.

Pure: the same log always explains the same way, so an explanation can be reproduced from
an exported log long after the run.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from foldloop.core._replay import INPUT_TYPES
from foldloop.core._state import ChildLink, RunState, RunStatus
from foldloop.core._tree import spent
from foldloop.events._catalogue import (
    ModelResponded,
    RunLimitReached,
    ToolFailed,
)
from foldloop.events._recorded import Recorded
from foldloop.events._values import Limits, Usage, limit_amount

__all__ = [
    "ORPHAN_QUEUED",
    "DecidedApproval",
    "Explanation",
    "ended_child_step",
    "explain",
    "parked_reason",
]

ORPHAN_QUEUED = "queued, and no live runtime holds it (the one that queued it is gone)"
ORPHAN_RUNNING = "the runtime driving it stopped before the run finished"


@dataclass(frozen=True)
class DecidedApproval:
    """A decision on a call the run waits on, recorded (in the store's approvals table)
    but not yet carried into the run's log: whoever drives the run next carries it in."""

    call_id: str
    outcome: Literal["approved", "denied", "expired"]
    by: str
    at: int
    """When it was decided (unix ns)."""
    note: str = ""


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
    decided: tuple[DecidedApproval, ...] = ()
    """Decisions on calls the run waits on, made but not yet carried into its log."""
    orphaned: bool = False
    """Interrupted or queued, and no live runtime drives (or holds) it: ``recover()`` does."""
    budget: tuple[str, ...] = ()
    """Where a tree's budget went: the run's own spend, each child's allotment and spend,
    and what the run's ceilings have left (empty for a run without children)."""

    def __str__(self) -> str:
        steps = f"{self.steps} step" + ("" if self.steps == 1 else "s")
        lines = [f"run {self.run_id} is {self.status.value} after {steps}"]
        if self.reason:
            lines.append(f"why: {self.reason}")
        if self.limit:
            lines.append(f"limit: {self.limit}")
        lines.append(f"last decision: {self.last_decision}")
        lines.extend(f"budget: {line}" for line in self.budget)
        lines.extend(f"next: {step}" for step in self.next_steps)
        return "\n".join(lines)


_STOPPED = {"max_tokens": ", cut at its max_tokens", "refusal": ", a refusal"}
"""How a reply's stop_reason reads in an explanation."""


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
            stopped = _STOPPED.get(event.stop_reason, f" (stopped: {event.stop_reason})")
            parts.append(
                f"seq {rec.seq}: the model answered step {event.step}"
                + (f" asking for {calls}" if calls else " with its final text")
                + (stopped if event.stop_reason else "")
            )
        elif isinstance(event, ToolFailed):
            parts.append(f"seq {rec.seq}: tool call {event.call_id} failed ({event.kind})")
        else:
            parts.append(f"seq {rec.seq}: {rec.type}")
    return "; ".join(parts)


def _spend(steps: int, usage: Usage) -> str:
    text = f"{steps} step{'s' * (steps != 1)}, {usage.total_tokens:,} tokens"
    return text + (f", ${usage.cost_usd:.4f}" if usage.cost_usd else "")


def _ceilings(limits: Limits) -> str:
    steps = limits.steps_ceiling
    parts = [f"{steps} step{'s' * (steps != 1)}"]
    if limits.max_tokens is not None:
        parts.append(f"{limits.max_tokens:,} tokens")
    if limits.max_cost_usd is not None:
        parts.append(f"${limits.max_cost_usd:g}")
    if limits.max_seconds is not None:
        parts.append(f"{limits.max_seconds:g} s")
    return ", ".join(parts)


def _child_line(link: ChildLink, *, ended: bool) -> str:
    allotted = _ceilings(link.allotted)
    head = f"child {link.run_id} ({link.agent}, call {link.call_id}) allotted {allotted}"
    if link.running and ended:  # its end never reached this run's log (a cancel cascaded)
        return f"{head}: not ended as this run ended; its own log says how it ended (tree)"
    if link.running:
        return f"{head}: running, its allotment held back"
    return f"{head}: spent {_spend(link.steps, link.usage)}, ended {link.status}"


def budget_lines(state: RunState) -> tuple[str, ...]:
    """Where a run's tree budget went (empty when it has no children and no parent)."""
    if not state.children and not state.parent_run_id:
        return ()
    lines = []
    if state.parent_run_id:
        lines.append(
            f"a child of {state.parent_run_id} (call {state.parent_call_id}), its ceilings the "
            f"allotment it got: {_ceilings(state.limits)}"
        )
    lines.append(f"own model calls: {_spend(state.steps, state.usage)}")
    lines.extend(_child_line(link, ended=state.terminal) for link in state.children)
    used = spent(state)
    counted = _spend(used.steps, used.usage)
    lines.append(f"counted against its ceilings ({_ceilings(state.limits)}): {counted}")
    return tuple(lines)


def _iso(ns: int) -> str:
    return datetime.datetime.fromtimestamp(ns / 1e9, tz=datetime.UTC).isoformat(timespec="seconds")


def _decided_fact(decided: DecidedApproval, tool: str) -> str:
    if decided.outcome == "expired":
        return f"{decided.call_id} ({tool}) expired undecided at {_iso(decided.at)}"
    note = f" (note: {decided.note!r})" if decided.note else ""
    return (
        f"{decided.call_id} ({tool}) {decided.outcome} by {decided.by!r} at "
        f"{_iso(decided.at)}{note}"
    )


def _awaiting_decided(
    state: RunState, decided: Sequence[DecidedApproval]
) -> tuple[str, list[str], tuple[DecidedApproval, ...]]:
    """The reason, the next steps and the decisions that count, for a parked run some of
    whose waiting calls are decided outside its log (none count: ``("", [], ())``)."""
    waiting = {c.call_id: c for c in state.calls if c.status == "awaiting_approval"}
    counted = tuple(d for d in decided if d.call_id in waiting)
    if not counted:
        return "", [], ()
    ids = {d.call_id for d in counted}
    facts = "; ".join(_decided_fact(d, waiting[d.call_id].tool) for d in counted)
    still = [
        c
        for c in state.calls
        if c.call_id not in ids and c.status in ("awaiting_approval", "expired")
    ]
    carry = (
        f"a runtime with agent {state.agent!r} registered carries it in by itself (its "
        f"poller), or rt.resume({state.run_id!r}) / rt.recover() in one"
    )
    reason = f"decided, not yet carried into the run's log: {facts}"
    if still:
        reason += "; still undecided: " + ", ".join(f"{c.call_id} ({c.tool})" for c in still)
    next_steps = [f"nothing to decide for {', '.join(sorted(ids))}: {carry}"]
    pending = [c.call_id for c in still if c.status == "awaiting_approval"]
    if pending:
        next_steps.append(f"decide the pending approvals: {', '.join(pending)}")
    return reason, next_steps, counted


def parked_reason(state: RunState, decided: Sequence[DecidedApproval]) -> str:
    """``state.reason``, or for a parked run with decisions not yet in its log, what
    ``explain`` says of them (for run listings)."""
    return _awaiting_decided(state, decided)[0] or state.reason


def _resume_step(state: RunState, what: str, extend: str) -> str:
    """The next step of a run that ``resume`` continues (see ``ended_child_step``)."""
    return ended_child_step(state) or what + f"rt.resume(run_id{', ' + extend if extend else ''})"


_RESUMED = (RunStatus.LIMIT_REACHED, RunStatus.NO_PROGRESS, RunStatus.FAILED)


def ended_child_step(state: RunState) -> str | None:
    """The next step of a sub-agent's child that ended by itself where a root's next step
    is a resume (a ceiling, no progress, a model failure): none here, as its resume is
    refused: its parent has its outcome (a failed tool call). None for any other run."""
    if not state.parent_run_id or state.status not in _RESUMED or not state.resumable:
        return None
    return (
        f"nothing here: it is a sub-agent's child, and its parent {state.parent_run_id} "
        "has its outcome (a failed call); start a new run"
        + ("" if state.status is RunStatus.FAILED else " with higher ceilings at its root")
    )


def _limit_step(state: RunState, event: RunLimitReached) -> tuple[str, str]:
    """The ``limit`` line of a run a ceiling stopped, and its next step."""
    name, used = event.limit, event.value
    limit = f"{name} = {limit_amount(name, used)} of {limit_amount(name, event.ceiling)}"
    above = f" to at least {limit_amount(name, used + event.needed)}" if event.needed else ""
    extend = f"extend=fl.Limits({name}=...)"
    return limit, _resume_step(state, f"raise the ceiling{above}: ", extend)


def _approval_steps(state: RunState) -> list[str]:
    """What to do for a run parked at its gates: decide the pending requests, ask again for
    the expired ones."""
    waiting = [c.call_id for c in state.calls if c.status == "awaiting_approval"]
    expired = [c.call_id for c in state.calls if c.status == "expired"]
    steps = [f"decide the pending approvals: {', '.join(waiting)}"] if waiting else []
    if expired:
        steps.append(
            f"the approval requests of {', '.join(expired)} expired: "
            f"rt.resume({state.run_id!r}) asks again with new tokens"
        )
    return steps


def explain(
    state: RunState,
    records: Sequence[Recorded],
    *,
    orphaned: bool = False,
    decided: Sequence[DecidedApproval] = (),
) -> Explanation:
    """Explain ``state`` (the fold of ``records``); ``orphaned``: no live runtime drives it
    (or, queued, holds it); ``decided``: decisions recorded outside the log (the store's
    approvals table) and not yet carried into it; only those on calls the run still waits
    on count."""
    status = state.status
    limit = ""
    next_steps: list[str] = []
    last_limit = next(
        (r.event for r in reversed(records) if isinstance(r.event, RunLimitReached)), None
    )
    if status is RunStatus.RUNNING and orphaned:
        status = RunStatus.INTERRUPTED
    decided_reason, decided_steps, counted = (
        _awaiting_decided(state, decided) if status is RunStatus.AWAITING_APPROVAL else ("", [], ())
    )
    match status:
        case RunStatus.COMPLETED:
            next_steps.append("nothing: the run completed; its output is in run.completed")
        case RunStatus.LIMIT_REACHED if last_limit is not None:
            limit, step = _limit_step(state, last_limit)
            next_steps.append(step)
        case RunStatus.NO_PROGRESS:
            next_steps.append(
                _resume_step(
                    state,
                    "start a new run with other tools or instructions (a resume keeps the "
                    "recorded ones, and would repeat itself); or let it repeat longer: ",
                    "extend=fl.Limits(no_progress=N)",
                )
            )
        case RunStatus.FAILED if state.resumable:
            next_steps.append(_resume_step(state, "fix the model's availability, then ", ""))
        case RunStatus.FAILED:
            next_steps.append("start a new run: a failed run cannot continue")
        case RunStatus.CANCELLED:
            next_steps.append("start a new run: a cancelled run cannot continue")
        case RunStatus.INTERRUPTED:
            next_steps.append("rt.recover() in a runtime with this agent, or rt.resume(run_id)")
        case RunStatus.QUEUED if orphaned:
            next_steps.append(
                "rt.recover() in a runtime with this agent: it admits the queued runs in the "
                "order they were started"
            )
        case RunStatus.QUEUED:
            next_steps.append("wait: it starts when its runtime has a free slot (run.wait())")
        case RunStatus.AWAITING_APPROVAL if counted:
            next_steps.extend(decided_steps)
        case RunStatus.AWAITING_APPROVAL:
            next_steps.extend(_approval_steps(state))
        case _ if any(c.running for c in state.children):
            running = [c.run_id for c in state.children if c.running]
            next_steps.append(f"wait: it waits for its child runs {', '.join(running)}")
        case _:
            next_steps.append("wait: a runtime is driving it (run.wait())")
    reason = state.reason
    if status is RunStatus.INTERRUPTED:
        reason = ORPHAN_RUNNING
    elif status is RunStatus.QUEUED and orphaned:
        reason = ORPHAN_QUEUED
    elif counted:
        reason = decided_reason
    return Explanation(
        run_id=state.run_id,
        status=status,
        reason=reason,
        steps=state.steps,
        last_decision=_describe(records),
        next_steps=tuple(next_steps),
        limit=limit,
        decided=counted,
        orphaned=orphaned and status in (RunStatus.INTERRUPTED, RunStatus.QUEUED),
        budget=budget_lines(state),
    )
