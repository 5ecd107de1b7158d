"""Commands: what arrives at a run. Never stored; each carries the clock reading ``now``.

Everything nondeterministic (a model reply, a tool result, the time) enters the core only
inside a command, and ``decide`` turns it into recorded events.
"""

from __future__ import annotations

import msgspec

from foldloop.events.values import Limits, ModelToolCall, ToolInfo, Usage

__all__ = [
    "Cancel",
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


class ModelReplied(Command, frozen=True):
    """The model answered step ``step``."""

    step: int
    text: str = ""
    tool_calls: tuple[ModelToolCall, ...] = ()
    usage: Usage = Usage()
    model: str = ""
    latency_ms: float = 0.0


class ModelCallFailed(Command, frozen=True):
    """A model call for ``step`` raised."""

    step: int
    error: str
    retryable: bool = False


class ToolFinished(Command, frozen=True):
    """A tool call ended: ``ok`` with ``result``, or failed with ``kind`` (``result`` = error)."""

    call_id: str
    ok: bool
    result: str
    kind: str = ""
    duration_ms: float = 0.0


class Cancel(Command, frozen=True):
    """Host code cancels the run."""

    reason: str = ""


class Resume(Command, frozen=True):
    """A runtime takes the run over, optionally raising its ceilings."""

    owner: str
    extend: Limits | None = None
