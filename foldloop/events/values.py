"""Plain value types that events carry: limits, token usage, the model's tool calls.

They are frozen msgspec Structs with only encodable fields, so an event that holds one
stays hashable and round-trips through the codec unchanged.
"""

from __future__ import annotations

import msgspec

__all__ = [
    "DEFAULT_MAX_STEPS",
    "DEFAULT_NO_PROGRESS",
    "Limits",
    "ModelToolCall",
    "ToolInfo",
    "Usage",
]

DEFAULT_MAX_STEPS = 25
"""Model calls a run may make when its limits leave ``max_steps`` unset: a runaway loop ends."""

DEFAULT_NO_PROGRESS = 3
"""Identical (tool, args, result) repetitions in a row that stop a run as making no progress."""


class Limits(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, gc=False):
    """Ceilings checked before every action of a run.

    ``None`` means "not set": ``max_steps`` then defaults to 25 and ``no_progress`` to 3,
    the other ceilings are unlimited. ``Runtime.resume(extend=Limits(...))`` raises each
    ceiling that the extension sets.
    """

    max_steps: int | None = None
    max_tokens: int | None = None
    max_seconds: float | None = None
    max_cost_usd: float | None = None
    no_progress: int | None = None

    @property
    def steps_ceiling(self) -> int:
        """The effective step ceiling (25 when unset)."""
        return DEFAULT_MAX_STEPS if self.max_steps is None else self.max_steps

    @property
    def no_progress_window(self) -> int:
        """The effective no-progress window (3 when unset)."""
        return DEFAULT_NO_PROGRESS if self.no_progress is None else self.no_progress

    def extended(self, ext: Limits) -> Limits:
        """Raise each ceiling that ``ext`` sets; a ceiling is never lowered by an extension."""

        def pick(old: float | None, new: float | None) -> float | None:
            if new is None:
                return old
            if old is None:
                return new
            return max(old, new)

        steps = pick(self.max_steps, ext.max_steps)
        tokens = pick(self.max_tokens, ext.max_tokens)
        window = pick(self.no_progress, ext.no_progress)
        return Limits(
            max_steps=None if steps is None else int(steps),
            max_tokens=None if tokens is None else int(tokens),
            max_seconds=pick(self.max_seconds, ext.max_seconds),
            max_cost_usd=pick(self.max_cost_usd, ext.max_cost_usd),
            no_progress=None if window is None else int(window),
        )


class Usage(msgspec.Struct, frozen=True, kw_only=True, array_like=True, gc=False):
    """Tokens and dollars one model call (or a whole run) consumed.

    Stored positionally (``[input_tokens, output_tokens, cost_usd]``), like the events:
    every model reply carries one, and its field names were a seventh of a step's bytes.
    The same rule holds: a new field goes at the end, with a default."""

    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            input_tokens=self.input_tokens + other.input_tokens,
            output_tokens=self.output_tokens + other.output_tokens,
            cost_usd=self.cost_usd + other.cost_usd,
        )

    @property
    def total_tokens(self) -> int:
        """Input plus output tokens."""
        return self.input_tokens + self.output_tokens


class ModelToolCall(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """One tool call as the model asked for it.

    ``args`` is the model's argument text verbatim (JSON expected, not guaranteed): a
    malformed argument string is a fact to record and feed back, not something to drop.
    """

    id: str
    name: str
    args: str


class ToolInfo(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """What a run records about each tool it may call, so decisions need only the log."""

    name: str
    idempotent: bool
    schema_digest: str
