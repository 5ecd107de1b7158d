"""The v1 event catalogue (DESIGN.md section 2): facts in the past tense.

Tags are fixed; fields may grow, always with defaults (msgspec's schema-evolution rule),
so logs written by older versions keep decoding.

Events are stored positionally (``array_like``): the tag, then each field in declaration
order (every field written: msgspec omits no default in this form). That halves a step's
bytes against field names, and
puts one rule on every change to this file: a new field goes at the end of its class,
with a default. Moving, renaming or removing a field is a new ``schema_version`` (the old
order goes into ``named.PAST_FIELDS`` and an upcaster carries old records forward);
``tests/test_codec.py`` pins today's order so that a field slipped in mid-class fails
there, not in someone's log. JSON views (export, ``foldloop show``) name every field
(``named.to_named``).
"""

from __future__ import annotations

from enum import StrEnum
from typing import ClassVar, Literal

import msgspec

from foldloop.events._values import Limits, ToolCall, ToolInfo, Usage

__all__ = [
    "ApprovalDecided",
    "ChildEnded",
    "ChildSpawned",
    "ApprovalExpired",
    "ApprovalRequested",
    "Event",
    "KnownEvent",
    "ModelFailed",
    "ModelRequested",
    "ModelResponded",
    "RunAdmitted",
    "RunCancelled",
    "RunCompleted",
    "RunFailed",
    "RunFailureKind",
    "RunLimitReached",
    "RunNoProgress",
    "RunQueued",
    "RunResumed",
    "RunStarted",
    "ToolCompleted",
    "ToolFailed",
    "ToolFailureKind",
    "ToolRequested",
    "may_resume",
]

ToolFailureKind = Literal["exception", "timeout", "invalid_args", "interrupted", "denied"]


class RunFailureKind(StrEnum):
    """Why a run failed (``run.failed``'s ``kind``); only a model failure can be resumed."""

    MODEL = "model"
    """The model call failed past its retries: resumable once the cause is fixed."""
    INVALID_ARGS = "invalid_args"
    """The model sent invalid tool arguments too often in one step."""
    ERROR = "error"
    """Anything else (and any kind this version does not know)."""


class Event(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", array_like=True, gc=False):
    """Base of every event: frozen, keyword-only, tagged with a dotted name in ``type``."""

    schema_version: ClassVar[int] = 1

    @property
    def type(self) -> str:
        """The event's tag, e.g. ``"run.started"``."""
        return type(self).__struct_config__.tag  # type: ignore[return-value]


class RunStarted(Event, tag="run.started", frozen=True):
    """A run began; everything its decisions need later is recorded here."""

    agent: str
    input: str
    limits: Limits = Limits()
    tools_digest: str = ""
    parent_run_id: str | None = None
    metadata: tuple[tuple[str, str], ...] = ()
    instructions: str = ""
    tools: tuple[ToolInfo, ...] = ()
    parent_call_id: str = ""
    """The parent's call that started this run (a sub-agent run; "" for a root)."""
    depth: int = 0
    """How far below its root the run is (0: a root)."""
    price: tuple[float, float] | None = None
    """(input, output) US dollars a million tokens of the agent's model, from its price
    table; what a cost ceiling reserves each model call at (None: no price known)."""
    tools_bytes: int = 0
    """Bytes of the tool specs every model call shows (part of each prompt's bound)."""
    reserves_calls: bool = False
    """Each model call reserves its worst case against the ceilings (runs recorded before
    that rule clamp a call's max_tokens to what is left, and replay as they were)."""


class ModelRequested(Event, tag="model.requested", frozen=True):
    """The run asked the model for step ``step``; ``max_tokens`` is clamped to what is left."""

    step: int
    prompt_digest: str
    max_tokens: int | None = None


class ModelResponded(Event, tag="model.responded", frozen=True):
    """The model answered step ``step``."""

    step: int
    text: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    usage: Usage = Usage()
    model: str = ""
    latency_ms: float = 0.0
    stop_reason: str = ""
    """Why the model stopped short of ending its turn (``Reply.stop_reason``): "" if it
    ended it, ``"max_tokens"`` (cut at the call's token cap) or ``"refusal"``."""


class ModelFailed(Event, tag="model.failed", frozen=True):
    """A model call for ``step`` failed; ``retryable`` says whether asking again may help."""

    step: int
    error: str
    retryable: bool = False
    out_of_time: bool = False
    """The call was cut where the run's ``max_seconds`` ran out (the run then stops there)."""


class ToolRequested(Event, tag="tool.requested", frozen=True):
    """The run decided to call ``tool``; for non-idempotent tools this is the durable intent."""

    call_id: str
    tool: str
    args: str
    step: int


class ToolCompleted(Event, tag="tool.completed", frozen=True):
    """A tool call returned ``result`` (JSON text, or the string the tool returned).

    ``original_chars`` is set when the result was cut to the tool's ``max_result_chars``:
    ``result`` holds the first characters, and the model is told how many were left out."""

    call_id: str
    result: str
    duration_ms: float = 0.0
    original_chars: int | None = None


class ToolFailed(Event, tag="tool.failed", frozen=True):
    """A tool call ended without a result; ``kind`` says how. ``original_chars``: as in
    ``tool.completed``, for an error cut to the tool's ``max_result_chars``."""

    call_id: str
    error: str
    kind: ToolFailureKind = "exception"
    original_chars: int | None = None


class ApprovalRequested(Event, tag="approval.requested", frozen=True):
    """A gated call waits for a person; only the token's digest is stored."""

    call_id: str
    gate: str
    token_digest: str
    expires_at: int
    summary: str = ""


class ApprovalDecided(Event, tag="approval.decided", frozen=True):
    """A person approved or denied a gated call."""

    call_id: str
    approved: bool
    by: str = ""
    note: str = ""


class ApprovalExpired(Event, tag="approval.expired", frozen=True):
    """A pending approval passed its TTL undecided."""

    call_id: str


class RunLimitReached(Event, tag="run.limit_reached", frozen=True):
    """A ceiling stopped the run before its next action."""

    limit: str
    value: float
    ceiling: float
    needed: float = 0.0
    """The least the next model call needed: its prompt's bound and one reply token (0: the
    value itself met the ceiling)."""


class RunNoProgress(Event, tag="run.no_progress", frozen=True):
    """The same tool, args and result repeated ``window`` times running."""

    window: int
    detail: str


class RunCompleted(Event, tag="run.completed", frozen=True):
    """The model answered without tool calls: ``output`` is the run's result."""

    output: str


class RunFailed(Event, tag="run.failed", frozen=True):
    """The run cannot go on; ``kind`` classifies why (a ``RunFailureKind``, kept a ``str``
    so that a kind from a newer writer still decodes)."""

    error: str
    kind: str = "error"


class RunCancelled(Event, tag="run.cancelled", frozen=True):
    """Host code cancelled the run."""

    reason: str = ""


def may_resume(event: object) -> bool:
    """Whether a run that ended with ``event`` can go on (``Runtime.resume``): after a
    limit, no progress or a model failure; every other end is final."""
    if isinstance(event, RunFailed):
        return event.kind == RunFailureKind.MODEL
    return isinstance(event, RunLimitReached | RunNoProgress)


class RunResumed(Event, tag="run.resumed", frozen=True):
    """A runtime took the run over (after a crash, a limit or a park)."""

    owner: str
    extended_limits: Limits | None = None


class RunQueued(Event, tag="run.queued", frozen=True):
    """The run was started past its runtime's ``max_active_runs``: it waits its turn
    (recorded with ``run.started``, in the same append)."""


class RunAdmitted(Event, tag="run.admitted", frozen=True):
    """A queued run got its turn: runtime ``owner`` drives it from here."""

    owner: str


class ChildSpawned(Event, tag="child.spawned", frozen=True):
    """Sub-agent call ``call_id`` started child run ``run_id`` of ``agent``, with ``limits``
    as its allotment: escrowed from this run's budget until the child ends."""

    call_id: str
    run_id: str
    agent: str
    limits: Limits = Limits()


class ChildEnded(Event, tag="child.ended", frozen=True):
    """Child run ``run_id`` ended ``status`` having spent ``steps`` and ``usage`` (its whole
    subtree's); what is left of its allotment returns to this run."""

    call_id: str
    run_id: str
    status: str
    steps: int = 0
    usage: Usage = Usage()
    reason: str = ""
    """Why it ended so, when it did not complete (its own ``reason``)."""


KnownEvent = (
    RunStarted
    | ModelRequested
    | ModelResponded
    | ModelFailed
    | ToolRequested
    | ToolCompleted
    | ToolFailed
    | ApprovalRequested
    | ApprovalDecided
    | ApprovalExpired
    | RunLimitReached
    | RunNoProgress
    | RunCompleted
    | RunFailed
    | RunCancelled
    | RunResumed
    | RunQueued
    | RunAdmitted
    | ChildSpawned
    | ChildEnded
)
"""Every event type this version of foldloop knows."""
