"""Effects: what must happen after a decision's events are appended, and the Decision itself."""

from __future__ import annotations

import msgspec

from foldloop.core._state import RunState
from foldloop.events._catalogue import KnownEvent
from foldloop.events._values import Limits

__all__ = [
    "AwaitChildren",
    "CallModel",
    "CancelChildren",
    "Decision",
    "Effect",
    "RequestApproval",
    "RunTools",
    "Settle",
    "SpawnChild",
    "ToolRun",
]


class CallModel(msgspec.Struct, frozen=True, kw_only=True):
    """Ask the model for ``step``; ``delay_s`` > 0 is a retry backoff."""

    step: int
    max_tokens: int | None = None
    attempt: int = 1
    delay_s: float = 0.0
    prompt_bound: int = 0
    """The most input tokens the call's budget reserved (0: no ceiling needed a bound)."""
    reserved_usd: float = 0.0
    """The dollars the call's budget reserved (0: no priced cost ceiling)."""
    within_s: float | None = None
    """Seconds the run's ``max_seconds`` leaves it from the decision (None: no such
    ceiling), backoff and a wait for a place included: an async call still under way or
    still waiting then is cut."""


class ToolRun(msgspec.Struct, frozen=True, kw_only=True):
    """One tool call to execute."""

    call_id: str
    tool: str
    args: str


class RunTools(msgspec.Struct, frozen=True, kw_only=True):
    """Execute these calls (concurrently); results come back as ToolFinished commands."""

    calls: tuple[ToolRun, ...]


class RequestApproval(msgspec.Struct, frozen=True, kw_only=True):
    """Tell the gate's ``notify`` that a call waits for a person (after the request is durable)."""

    call_id: str
    gate: str


class SpawnChild(msgspec.Struct, frozen=True, kw_only=True):
    """Start child run ``run_id`` of sub-agent ``agent`` on ``input`` (its ``child.spawned``
    is durable); when it exists already (a resume), only follow it. Its end comes back as a
    ChildFinished command."""

    call_id: str
    run_id: str
    agent: str
    input: str
    limits: Limits
    depth: int


class CancelChildren(msgspec.Struct, frozen=True, kw_only=True):
    """Cancel these child runs (and so their own children), saying ``reason``."""

    run_ids: tuple[str, ...]
    reason: str


class AwaitChildren(msgspec.Struct, frozen=True, kw_only=True):
    """Nothing moves the run but its child runs' ends (its events are durable): its actor
    may park until one comes."""


class Settle(msgspec.Struct, frozen=True, kw_only=True):
    """The run finished or parked: hand the result to the host, release the actor."""


Effect = (
    CallModel | RunTools | RequestApproval | SpawnChild | CancelChildren | AwaitChildren | Settle
)


class Decision(msgspec.Struct, frozen=True, kw_only=True):
    """Events to append (atomically, in order) and effects to start after they are stored.

    ``durable``: an effect leaves the process (a non-idempotent tool, a result handed to
    the host), so the events must be fsync'd before any effect starts. ``rejected`` says
    why a command was refused (no events then). ``state`` is the state after the events
    (decide computed it while deciding; callers need not apply the events again).
    """

    events: tuple[KnownEvent, ...] = ()
    effects: tuple[Effect, ...] = ()
    durable: bool = False
    rejected: str = ""
    state: RunState | None = None

    @property
    def settles(self) -> bool:
        """The run finishes or parks with it: whoever commits it may release the lease in
        the same transaction."""
        return any(type(e) is Settle for e in self.effects)
