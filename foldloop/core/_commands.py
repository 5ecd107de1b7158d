"""Commands: what arrives at a run. Never stored; each carries the clock reading ``now``.

Everything nondeterministic (a model reply, a tool result, the time) enters the core only
inside a command, and ``decide`` turns it into recorded events.
"""

from __future__ import annotations

import msgspec

from foldloop.events._values import Limits, ToolCall, ToolInfo, Usage

__all__ = [
    "Admit",
    "ApprovalTicket",
    "Cancel",
    "ChildFinished",
    "DecideApproval",
    "ExpireApproval",
    "Command",
    "ModelCallFailed",
    "ModelReplied",
    "Resume",
    "Start",
    "ToolFinished",
]


class Command(msgspec.Struct, frozen=True, kw_only=True):
    """Base of every command; ``now`` is unix ns read once at the edge."""

    now: int


class Start(Command, frozen=True):
    """Begin a run."""

    agent: str
    input: str
    instructions: str = ""
    limits: Limits = Limits()
    tools: tuple[ToolInfo, ...] = ()
    tools_digest: str = ""
    metadata: tuple[tuple[str, str], ...] = ()
    parent_run_id: str | None = None
    queued: bool = False
    """The runtime has no free slot (``max_active_runs``): record the run, queued."""
    parent_call_id: str = ""
    depth: int = 0
    price: tuple[float, float] | None = None
    tools_bytes: int = 0
    reserves_calls: bool = True


class ApprovalTicket(msgspec.Struct, frozen=True, kw_only=True):
    """A gate's verdict that a call needs a person, with its token's digest and deadline.

    Issued at the edge (the token is random): by ``index`` into a reply's tool calls, or by
    ``call_id`` when a resume asks again for an expired request.
    """

    index: int = -1
    call_id: str = ""
    gate: str
    token_digest: str
    expires_at: int
    summary: str = ""


class ModelReplied(Command, frozen=True):
    """The model answered step ``step``; ``gated`` holds the calls a gate holds back."""

    step: int
    text: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    usage: Usage = Usage()
    model: str = ""
    latency_ms: float = 0.0
    gated: tuple[ApprovalTicket, ...] = ()
    stop_reason: str = ""


class DecideApproval(Command, frozen=True):
    """A person approved or denied a call waiting at a gate."""

    call_id: str
    approved: bool
    by: str = ""
    note: str = ""


class ExpireApproval(Command, frozen=True):
    """A waiting call's approval passed its deadline undecided."""

    call_id: str


class ModelCallFailed(Command, frozen=True):
    """A model call for ``step`` raised."""

    step: int
    error: str
    retryable: bool = False
    retry_after_s: float = 0.0
    """How long the provider asked the run to wait before asking again (0: not said)."""
    out_of_time: bool = False
    """The call was cut where the run's ``max_seconds`` ran out."""


class ToolFinished(Command, frozen=True):
    """A tool call ended: ``ok`` with ``result``, or failed with ``kind`` (``result`` = error)."""

    call_id: str
    ok: bool
    result: str
    kind: str = ""
    duration_ms: float = 0.0
    original_chars: int | None = None
    """Set when ``result`` was cut: the length of the whole result."""


class Cancel(Command, frozen=True):
    """Host code cancels the run."""

    reason: str = ""


class ChildFinished(Command, frozen=True):
    """A child run ended (or can never start): ``output`` if it completed, else ``reason``;
    ``steps`` and ``usage``: what its subtree spent of its allotment."""

    call_id: str
    run_id: str
    status: str
    output: str = ""
    reason: str = ""
    steps: int = 0
    usage: Usage = Usage()
    original_chars: int | None = None
    """Set when ``output`` was cut (as a tool's result is): how long it was."""


class Admit(Command, frozen=True):
    """A queued run's turn came: runtime ``owner`` starts driving it."""

    owner: str


class Resume(Command, frozen=True):
    """A runtime takes the run over, optionally raising its ceilings."""

    owner: str
    extend: Limits | None = None
    gated: tuple[ApprovalTicket, ...] = ()
    recorded: Limits | None = None
    """The ceilings a resume in the log took (replay): kept as they are, whatever the rule
    of raising them (``Limits.extended``) says today."""

    def limits_after(self, limits: Limits) -> Limits | None:
        """The ceilings the run goes on with, from ``limits``: as recorded, else raised by
        ``extend`` (None: unchanged)."""
        if self.recorded is not None:
            return self.recorded
        return limits.extended(self.extend) if self.extend else None
