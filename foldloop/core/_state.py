"""RunState: everything a run's decisions depend on, and nothing else; immutable."""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

import msgspec

from foldloop.core._messages import History, Message, flatten
from foldloop.events._catalogue import RunFailureKind
from foldloop.events._values import Limits, ToolInfo, Usage

__all__ = [
    "CallSignature",
    "CallState",
    "CallStatus",
    "ChildLink",
    "RunState",
    "RunStatus",
    "STATE_VERSION",
]

STATE_VERSION = 10
"""Bumped whenever RunState's shape or what the fold puts in it changes, so older snapshots are
refolded, not misread."""


class RunStatus(StrEnum):
    """Where a run stands."""

    QUEUED = "queued"
    """Started past its runtime's ``max_active_runs``: it waits its turn (``run.queued``)."""
    RUNNING = "running"
    AWAITING_APPROVAL = "awaiting_approval"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    LIMIT_REACHED = "limit_reached"
    NO_PROGRESS = "no_progress"
    INTERRUPTED = "interrupted"


CallSignature = tuple[str, str, str, str]
"""(tool, args, status, result) of a finished call: two calls in a row with the same one
make no progress."""

CallStatus = Literal["proposed", "requested", "awaiting_approval", "expired", "completed", "failed"]


class CallState(msgspec.Struct, frozen=True, gc=False):
    """One tool call of the current step."""

    call_id: str
    tool: str
    args: str
    status: CallStatus = "proposed"
    result: str = ""
    kind: str = ""
    original_chars: int | None = None
    """Set when the result was cut: how long it was (``tool.completed``'s field)."""

    @property
    def finished(self) -> bool:
        """The call has an outcome (completed or failed)."""
        return self.status in ("completed", "failed")


class ChildLink(msgspec.Struct, frozen=True, gc=False):
    """A child run a sub-agent call started: its allotment, then what it spent."""

    call_id: str
    run_id: str
    agent: str
    allotted: Limits
    status: str = "running"
    """"running" until ``child.ended``, then the status it ended with."""
    steps: int = 0
    usage: Usage = Usage()

    @property
    def running(self) -> bool:
        """Not ended yet: its allotment is still escrowed."""
        return self.status == "running"


class RunState(msgspec.Struct, frozen=True, gc=False):
    """The fold of a run's events."""

    run_id: str = ""
    seq: int = 0
    started: bool = False
    agent: str = ""
    input: str = ""
    instructions: str = ""
    limits: Limits = Limits()
    tools: tuple[ToolInfo, ...] = ()
    tools_digest: str = ""
    status: RunStatus = RunStatus.RUNNING
    reason: str = ""
    output: str = ""
    steps: int = 0
    usage: Usage = Usage()
    model_pending: int = 0
    model_failures: int = 0
    calls: tuple[CallState, ...] = ()
    invalid_args_in_step: int = 0
    repeat_sig: CallSignature | None = None
    """The last finished call's ``call_signature`` (None before any)."""
    repeat_count: int = 0
    active_since: int = 0
    active_before_ns: int = 0
    last_at: int = 0
    unknown_events: int = 0
    history: History = History()
    failure: RunFailureKind | None = None
    """Why a failed run failed (``run.failed``'s kind); None unless the status is failed."""
    parent_run_id: str = ""
    """The run whose sub-agent call started this one ("" for a root)."""
    parent_call_id: str = ""
    depth: int = 0
    """How far below its root the run is (0: a root)."""
    children: tuple[ChildLink, ...] = ()
    """Every child run its sub-agent calls started, in the order they started."""
    price: tuple[float, float] | None = None
    """(input, output) dollars a million tokens its model call is reserved at (run.started)."""
    tools_bytes: int = 0
    """Bytes of the tool specs every model call shows (run.started)."""
    basis_tokens: int = 0
    """Input tokens the model counted in the last prompt it answered (0: none counted)."""
    basis_size: int = 0
    """How many messages that prompt held."""
    reserves_calls: bool = False
    """Its model calls reserve their worst case (run.started; False: recorded before that
    rule, its calls' max_tokens clamped to what is left)."""

    @property
    def messages(self) -> tuple[Message, ...]:
        """The conversation the model sees next, derived from the events."""
        return flatten(self.history)

    @property
    def history_digest(self) -> str:
        """The running digest of the history (computed when first asked for: see History)."""
        return self.history.digest

    @property
    def terminal(self) -> bool:
        """Completed or cancelled: nothing can continue this run."""
        return self.status in (RunStatus.COMPLETED, RunStatus.CANCELLED) or (
            self.status is RunStatus.FAILED and not self.resumable
        )

    @property
    def resumable(self) -> bool:
        """``Runtime.resume`` can continue this run (perhaps with extended limits)."""
        if self.status is RunStatus.FAILED:
            return self.failure is RunFailureKind.MODEL
        return self.status in (
            RunStatus.RUNNING,
            RunStatus.LIMIT_REACHED,
            RunStatus.NO_PROGRESS,
            RunStatus.AWAITING_APPROVAL,
            RunStatus.INTERRUPTED,
        )

    @property
    def settled(self) -> bool:
        """Nothing moves the run on by itself: it finished or is parked (a queued run is
        not settled: its runtime admits it when a slot frees)."""
        return self.status is not RunStatus.RUNNING and self.status is not RunStatus.QUEUED

    def tool_info(self, name: str) -> ToolInfo | None:
        """The recorded description of tool ``name``, if the run has it."""
        for info in self.tools:
            if info.name == name:
                return info
        return None

    def elapsed_ns(self, now: int) -> int:
        """Active time of the run at ``now`` (time parked or crashed does not count)."""
        return self.active_before_ns + max(0, now - self.active_since)
