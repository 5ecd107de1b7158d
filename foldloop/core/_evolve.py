"""evolve(state, recorded) -> state: the one definition of what each event does to a run.

Each event's rule is one function below (``RULES``), written against a ``Draft``: a run's
state while events are folded into it (RunState's fields, mutable, and the messages not
yet added to the history). ``apply`` folds one event into a draft of the state it is
given; ``fold`` (``core.batch``) and ``decide`` fold many into one draft. The RunState is
built when asked for, so a long fold does not copy the state and its history once per
event.

Total and pure: every event, even one that arrives late (a tool result after a cancel)
or one from a newer writer (``UnknownEvent``), yields a state; nothing here raises for
a valid event, reads a clock or logs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import msgspec

from foldloop.core._messages import History, Message, push
from foldloop.core._state import (
    CallSignature,
    CallState,
    CallStatus,
    ChildLink,
    RunState,
    RunStatus,
)
from foldloop.events._catalogue import (
    ApprovalDecided,
    ApprovalExpired,
    ApprovalRequested,
    ChildEnded,
    ChildSpawned,
    ModelFailed,
    ModelRequested,
    ModelResponded,
    RunAdmitted,
    RunCancelled,
    RunCompleted,
    RunFailed,
    RunFailureKind,
    RunLimitReached,
    RunNoProgress,
    RunQueued,
    RunResumed,
    RunStarted,
    ToolCompleted,
    ToolFailed,
    ToolRequested,
)
from foldloop.events._recorded import AnyEvent, Recorded, UnknownEvent
from foldloop.events._values import Limits, ToolInfo, Usage, limit_amount

__all__ = [
    "AT_GATE",
    "FINISHED",
    "INITIAL",
    "QUEUED_REASON",
    "Draft",
    "all_finished",
    "apply",
    "cut_note",
    "evolve",
    "tool_message",
]

INITIAL = RunState()

FINISHED = frozenset({"completed", "failed"})
"""Statuses of a call with an outcome (``CallState.finished`` without a property call: the
fold and decide ask it of every call of every step)."""

AT_GATE = frozenset({"awaiting_approval", "expired"})
"""Call statuses that wait on a person."""

_BUSY = frozenset({"proposed", "requested"})


def all_finished(calls: Iterable[CallState]) -> bool:
    """Every call has an outcome."""
    for call in calls:  # noqa: SIM110 - a loop: all() over a generator costs a frame a call
        if call.status not in FINISHED:
            return False
    return True


def cut_note(kept: int, original: int) -> str:
    """What the model reads after a result that was cut to its first ``kept`` characters."""
    return (
        f"\n[cut: the tool returned {original:,} characters; only the first {kept:,} are "
        f"shown, {original - kept:,} were left out]"
    )


class _Call(msgspec.Struct, gc=False):
    """A CallState while events are folded into it (the same fields, mutable)."""

    call_id: str
    tool: str
    args: str
    status: CallStatus = "proposed"
    result: str = ""
    kind: str = ""
    original_chars: int | None = None

    def state(self) -> CallState:
        """The CallState this draft stands for."""
        return CallState(  # positionally, as RunState in Draft.state
            self.call_id,
            self.tool,
            self.args,
            self.status,
            self.result,
            self.kind,
            self.original_chars,
        )


def _thaw(call: CallState) -> _Call:
    return _Call(
        call.call_id, call.tool, call.args, call.status, call.result, call.kind, call.original_chars
    )


def tool_message(call: CallState | _Call) -> Message:
    """What the model is told about one finished call."""
    if call.status == "completed":
        content = call.result
    elif call.kind == "interrupted":
        content = (
            "error (interrupted): the process running this tool stopped before it reported; "
            "whether the tool took effect is unknown. Check before trying again."
        )
    elif call.kind == "denied":
        content = f"denied by a person: {call.result}" if call.result else "denied by a person"
    else:
        content = f"error ({call.kind}): {call.result}"
    if call.original_chars is not None:
        content += cut_note(len(call.result), call.original_chars)
    return Message(role="tool", content=content, tool_call_id=call.call_id, name=call.tool)


class Draft:
    """A run's state while events are folded into it: RunState's fields, mutable.

    Beside them: ``unfinished``, how many of the step's calls have no outcome yet;
    ``gated``, whether any of them has been at an approval gate (an outcome re-checks the
    run's status only then); ``messages``, the messages the events added, pushed onto the
    history once, by ``state()``. Usage is kept as its three sums.
    """

    __slots__ = (
        "active_before_ns",
        "active_since",
        "agent",
        "basis_size",
        "basis_tokens",
        "calls",
        "children",
        "cost_usd",
        "depth",
        "failure",
        "gated",
        "history",
        "input",
        "input_tokens",
        "instructions",
        "invalid_args_in_step",
        "last_at",
        "limits",
        "messages",
        "model_failures",
        "model_pending",
        "output",
        "output_tokens",
        "parent_call_id",
        "parent_run_id",
        "price",
        "reason",
        "repeat_count",
        "repeat_sig",
        "reserves_calls",
        "run_id",
        "seq",
        "started",
        "status",
        "steps",
        "tools",
        "tools_bytes",
        "tools_digest",
        "unfinished",
        "unknown_events",
        "usage",
    )

    def __init__(self, state: RunState) -> None:
        self.run_id: str = state.run_id
        self.seq: int = state.seq
        self.started: bool = state.started
        self.agent: str = state.agent
        self.input: str = state.input
        self.instructions: str = state.instructions
        self.limits: Limits = state.limits
        self.tools: tuple[ToolInfo, ...] = state.tools
        self.tools_digest: str = state.tools_digest
        self.status: RunStatus = state.status
        self.reason: str = state.reason
        self.output: str = state.output
        self.steps: int = state.steps
        self.usage: Usage = state.usage
        usage = state.usage
        self.input_tokens: int = usage.input_tokens
        self.output_tokens: int = usage.output_tokens
        self.cost_usd: float = usage.cost_usd
        self.model_pending: int = state.model_pending
        self.model_failures: int = state.model_failures
        self.calls: list[_Call] = list(map(_thaw, state.calls))
        self.unfinished: int = 0
        self.gated: bool = False
        for call in state.calls:
            self.unfinished += call.status not in FINISHED
            self.gated |= call.status in AT_GATE
        self.invalid_args_in_step: int = state.invalid_args_in_step
        self.repeat_sig: CallSignature | None = state.repeat_sig
        self.repeat_count: int = state.repeat_count
        self.active_since: int = state.active_since
        self.active_before_ns: int = state.active_before_ns
        self.last_at: int = state.last_at
        self.unknown_events: int = state.unknown_events
        self.failure: RunFailureKind | None = state.failure
        self.history: History = state.history
        self.parent_run_id: str = state.parent_run_id
        self.parent_call_id: str = state.parent_call_id
        self.depth: int = state.depth
        self.children: tuple[ChildLink, ...] = state.children
        self.price: tuple[float, float] | None = state.price
        self.tools_bytes: int = state.tools_bytes
        self.basis_tokens: int = state.basis_tokens
        self.basis_size: int = state.basis_size
        self.reserves_calls: bool = state.reserves_calls
        self.messages: list[Message] = []

    def take(self, events: Iterable[tuple[AnyEvent, int]]) -> int:
        """Fold ``(event, at)`` pairs in, in order; returns how many there were."""
        rules = RULES
        n = 0
        for event, at in events:
            rules[type(event)](self, event, at)
            self.last_at = at  # after the rule: a resume reads the time of the event before
            n += 1
        self.seq += n
        return n

    def state(self) -> RunState:
        """The RunState the draft stands for."""
        usage = self.usage
        if (
            self.input_tokens != usage.input_tokens
            or self.output_tokens != usage.output_tokens
            or self.cost_usd != usage.cost_usd
        ):
            self.usage = usage = Usage(
                input_tokens=self.input_tokens,
                output_tokens=self.output_tokens,
                cost_usd=self.cost_usd,
            )
        if self.messages:  # pushed once, so a digest asked of this state stays with it
            self.history = push(self.history, self.messages)
            self.messages = []
        # Positionally, in RunState's field order: msgspec matches each keyword against
        # the field names, which costs five times what building the state does.
        return RunState(
            self.run_id,
            self.seq,
            self.started,
            self.agent,
            self.input,
            self.instructions,
            self.limits,
            self.tools,
            self.tools_digest,
            self.status,
            self.reason,
            self.output,
            self.steps,
            usage,
            self.model_pending,
            self.model_failures,
            tuple([call.state() for call in self.calls]),
            self.invalid_args_in_step,
            self.repeat_sig,
            self.repeat_count,
            self.active_since,
            self.active_before_ns,
            self.last_at,
            self.unknown_events,
            self.history,
            self.failure,
            self.parent_run_id,
            self.parent_call_id,
            self.depth,
            self.children,
            self.price,
            self.tools_bytes,
            self.basis_tokens,
            self.basis_size,
            self.reserves_calls,
        )


# -- the rules: one function an event ---------------------------------------------------


def _run_started(d: Draft, event: RunStarted, at: int) -> None:
    if event.instructions:
        d.messages.append(Message(role="system", content=event.instructions))
    d.messages.append(Message(role="user", content=event.input))
    d.started = True
    d.agent = event.agent
    d.input = event.input
    d.instructions = event.instructions
    d.limits = event.limits
    d.tools = event.tools
    d.tools_digest = event.tools_digest
    d.status = RunStatus.RUNNING
    d.active_since = at
    d.parent_run_id = event.parent_run_id or ""
    d.parent_call_id = event.parent_call_id
    d.depth = event.depth
    d.price = event.price
    d.tools_bytes = event.tools_bytes
    d.reserves_calls = event.reserves_calls


def _model_requested(d: Draft, event: ModelRequested, at: int) -> None:
    d.model_pending = event.step


def _model_responded(d: Draft, event: ModelResponded, at: int) -> None:
    d.steps = max(d.steps, event.step)
    usage = event.usage
    d.input_tokens += usage.input_tokens
    d.output_tokens += usage.output_tokens
    d.cost_usd += usage.cost_usd
    d.model_pending = d.model_failures = d.invalid_args_in_step = 0
    asked = event.tool_calls
    d.calls = [_Call(c.id, c.name, c.args) for c in asked]
    d.unfinished = len(asked)
    d.gated = False
    d.basis_tokens = usage.input_tokens  # the prompt it answered: all messages so far
    d.basis_size = d.history.size + len(d.messages)
    if event.stop_reason and not asked:
        return  # a final reply the model did not finish is no turn: a resume asks again
    d.messages.append(Message(role="assistant", content=event.text, tool_calls=asked))


def _model_failed(d: Draft, event: ModelFailed, at: int) -> None:
    d.model_failures += 1


def _tool_requested(d: Draft, event: ToolRequested, at: int) -> None:
    call_id = event.call_id
    for call in d.calls:
        if call.call_id == call_id and call.status == "proposed":
            call.status = "requested"


def _tool_finished(d: Draft, event: ToolCompleted | ToolFailed, at: int) -> None:
    """A call's outcome; when it was the step's last, the step's calls are counted for
    no-progress and told to the model, in the order it asked for them."""
    call_id = event.call_id
    for call in d.calls:
        if call.call_id == call_id and call.status not in FINISHED:
            break
    else:
        return  # a late or unknown outcome: recorded, nothing else changes
    if isinstance(event, ToolCompleted):
        call.status, call.result = "completed", event.result
    else:
        call.status, call.result, call.kind = "failed", event.error, event.kind
        if event.kind == "invalid_args":
            d.invalid_args_in_step += 1
    call.original_chars = event.original_chars
    d.unfinished -= 1
    if not d.unfinished:  # the step's last outcome
        sig, count = d.repeat_sig, d.repeat_count
        for call in d.calls:
            # No progress: the same tool, args and outcome as the call before.
            this = (call.tool, call.args, call.status, call.result)
            sig, count = (sig, count + 1) if this == sig else (this, 1)
            d.messages.append(tool_message(call))
        d.repeat_sig, d.repeat_count = sig, count
    if d.gated or d.status is not RunStatus.RUNNING:
        _gate_status(d)


def _approval_requested(d: Draft, event: ApprovalRequested, at: int) -> None:
    _set_calls(d, event.call_id, "awaiting_approval", ("proposed", "expired"))
    _gate_status(d)


def _approval_decided(d: Draft, event: ApprovalDecided, at: int) -> None:
    # Approved: the call goes back to proposed, and tool.requested follows at once;
    # denied: it stays waiting until the tool.failed(kind="denied") that follows.
    if event.approved:
        _set_calls(d, event.call_id, "proposed", ("awaiting_approval",))
    _gate_status(d)


def _approval_expired(d: Draft, event: ApprovalExpired, at: int) -> None:
    _set_calls(d, event.call_id, "expired", ("awaiting_approval",))
    _gate_status(d)


def _limit_reached(d: Draft, event: RunLimitReached, at: int) -> None:
    name = event.limit
    ceiling, value = limit_amount(name, event.ceiling), limit_amount(name, event.value)
    reason = f"{name} ceiling {ceiling} reached (value {value})"
    if event.needed:
        reason = (
            f"{name} ceiling {ceiling} leaves no room for the next model call: {value} "
            f"spent, and the call needs at least {limit_amount(name, event.needed)} (its prompt "
            "and one reply token)"
        )
    _park(d, at, RunStatus.LIMIT_REACHED, reason)


def _no_progress(d: Draft, event: RunNoProgress, at: int) -> None:
    reason = f"no progress: {event.detail}"
    _park(d, at, RunStatus.NO_PROGRESS, reason)


def _completed(d: Draft, event: RunCompleted, at: int) -> None:
    _park(d, at, RunStatus.COMPLETED, "")
    d.output = event.output


_FAILURE_KINDS = {kind.value: kind for kind in RunFailureKind}


def _failed(d: Draft, event: RunFailed, at: int) -> None:
    _park(d, at, RunStatus.FAILED, f"{event.kind}: {event.error}")
    d.failure = _FAILURE_KINDS.get(event.kind, RunFailureKind.ERROR)


def _cancelled(d: Draft, event: RunCancelled, at: int) -> None:
    why = f"cancelled by the host: {event.reason}" if event.reason else "cancelled by the host"
    _park(d, at, RunStatus.CANCELLED, why)


def _resumed(d: Draft, event: RunResumed, at: int) -> None:
    if event.extended_limits is not None:
        d.limits = event.extended_limits
    if d.status is RunStatus.RUNNING:
        # It crashed while running: it was active up to its last recorded event.
        d.active_before_ns += max(0, d.last_at - d.active_since)
    d.status = RunStatus.RUNNING
    d.reason = ""
    d.failure = None
    d.repeat_count = d.model_failures = 0
    d.active_since = at
    _gate_status(d)


QUEUED_REASON = "waiting for a free slot in its runtime (max_active_runs)"


def _queued(d: Draft, event: RunQueued, at: int) -> None:
    if d.status is RunStatus.RUNNING:  # decide queues only a run it has just started
        _park(d, at, RunStatus.QUEUED, QUEUED_REASON)


def _admitted(d: Draft, event: RunAdmitted, at: int) -> None:
    if d.status is RunStatus.QUEUED:  # its time queued is not active time
        d.status = RunStatus.RUNNING
        d.reason = ""
        d.active_since = at


def _child_spawned(d: Draft, event: ChildSpawned, at: int) -> None:
    link = ChildLink(event.call_id, event.run_id, event.agent, event.limits)
    d.children = (*d.children, link)


def _child_ended(d: Draft, event: ChildEnded, at: int) -> None:
    d.children = tuple(
        msgspec.structs.replace(c, status=event.status, steps=event.steps, usage=event.usage)
        if c.run_id == event.run_id and c.running
        else c
        for c in d.children
    )


def _unknown(d: Draft, event: UnknownEvent, at: int) -> None:
    d.unknown_events += 1


RULES: dict[type, Callable[[Draft, Any, int], None]] = {
    RunStarted: _run_started,
    ModelRequested: _model_requested,
    ModelResponded: _model_responded,
    ModelFailed: _model_failed,
    ToolRequested: _tool_requested,
    ToolCompleted: _tool_finished,
    ToolFailed: _tool_finished,
    ApprovalRequested: _approval_requested,
    ApprovalDecided: _approval_decided,
    ApprovalExpired: _approval_expired,
    RunLimitReached: _limit_reached,
    RunNoProgress: _no_progress,
    RunCompleted: _completed,
    RunFailed: _failed,
    RunCancelled: _cancelled,
    RunResumed: _resumed,
    RunQueued: _queued,
    RunAdmitted: _admitted,
    ChildSpawned: _child_spawned,
    ChildEnded: _child_ended,
    UnknownEvent: _unknown,
}
"""Each event type's rule (``Draft.take`` looks each event's up by its exact type)."""


# -- what several rules share -------------------------------------------------------------


def _set_calls(d: Draft, call_id: str, status: CallStatus, only_from: tuple[str, ...]) -> None:
    """Every call ``call_id`` in one of the statuses ``only_from`` moves to ``status``."""
    for call in d.calls:
        if call.call_id == call_id and call.status in only_from:
            call.status = status
    if status in AT_GATE:
        d.gated = True


def _gate_status(d: Draft) -> None:
    """A run waits for approval when calls wait at a gate and nothing else is in flight."""
    status = d.status
    if status is RunStatus.RUNNING:
        for call in d.calls:
            if call.status in AT_GATE:
                break
        else:
            return  # the common case, decided without building lists
    elif status is not RunStatus.AWAITING_APPROVAL:
        return
    waiting = [c for c in d.calls if c.status in AT_GATE]
    busy = any(c.status in _BUSY for c in d.calls) or d.model_pending
    if waiting and not busy:
        expired = [c.call_id for c in waiting if c.status == "expired"]
        if expired:
            why = f"the approval of {', '.join(expired)} expired undecided"
        else:
            names = ", ".join(f"{c.call_id} ({c.tool})" for c in waiting)
            why = f"waiting for a person to approve or deny {names}"
        d.status, d.reason = RunStatus.AWAITING_APPROVAL, why
    elif status is RunStatus.AWAITING_APPROVAL:
        d.status, d.reason = RunStatus.RUNNING, ""


def _park(d: Draft, at: int, status: RunStatus, reason: str) -> None:
    """The run stops being driven: its active time so far is banked."""
    d.active_before_ns += max(0, at - d.active_since)
    d.active_since = at
    d.status = status
    d.reason = reason
    d.model_pending = 0
    d.failure = None


# -- the entry points -------------------------------------------------------------------


def apply(state: RunState, event: AnyEvent, at: int) -> RunState:
    """The state after ``event`` happened at ``at`` (unix ns). Increments ``seq``."""
    draft = Draft(state)
    draft.take(((event, at),))
    return draft.state()


def evolve(state: RunState, recorded: Recorded) -> RunState:
    """Fold one recorded event into the state."""
    draft = Draft(state)
    if not draft.run_id:
        draft.run_id = recorded.run_id
    draft.take(((recorded.event, recorded.at),))
    return draft.state()
