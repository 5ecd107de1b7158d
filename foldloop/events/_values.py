"""Plain value types that events carry: limits, token usage, the model's tool calls.

They are frozen msgspec Structs with only encodable fields, so an event that holds one
stays hashable and round-trips through the codec unchanged.

``Limits`` checks its values when it is built, by host code or by a decoder: msgspec runs
``__post_init__`` on decode too. A record written before a check existed must stay
readable, so decoders retry a refused record inside ``as_recorded()``, where values are
taken as the log holds them.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

import msgspec

from foldloop.errors import ConfigError

__all__ = [
    "DEFAULT_MAX_CHILDREN",
    "DEFAULT_MAX_DEPTH",
    "DEFAULT_MAX_STEPS",
    "DEFAULT_NO_PROGRESS",
    "LIMIT_RULES",
    "MAX_INT",
    "Limits",
    "ToolCall",
    "ToolInfo",
    "Usage",
    "as_recorded",
    "limit_amount",
]

_AS_RECORDED: ContextVar[bool] = ContextVar("foldloop_as_recorded", default=False)

MAX_INT = 2**63 - 1
"""The largest whole number the log can store (msgpack's signed 64-bit integers)."""


def limit_amount(limit: str, value: float) -> str:
    """A ceiling's value as a person reads it: whole counts with separators, dollars with $."""
    if limit == "max_cost_usd":
        return f"${value:,.6f}".rstrip("0").rstrip(".")
    if limit == "max_seconds":
        return f"{value:g} s"
    return f"{int(value):,}"


@contextmanager
def as_recorded() -> Iterator[None]:
    """Build values as a log recorded them: checks added since are skipped (this thread only).

    For decoders only: a run recorded by an older foldloop, with a limit today's checks
    refuse (``max_steps=0``), reads back as it was instead of being lost.
    """
    token = _AS_RECORDED.set(True)
    try:
        yield
    finally:
        _AS_RECORDED.reset(token)


DEFAULT_MAX_STEPS = 25
"""Model calls a run may make when its limits leave ``max_steps`` unset: a runaway loop ends."""

DEFAULT_NO_PROGRESS = 3
"""Identical (tool, args, result) repetitions in a row that stop a run as making no progress."""

DEFAULT_MAX_CHILDREN = 4
"""Sub-agent runs one run may have running at once when ``max_children`` is unset."""

DEFAULT_MAX_DEPTH = 3
"""How far below its root a tree may grow when the root's ``max_depth`` is unset."""

_UNSET = {
    "max_steps": f"the default ({DEFAULT_MAX_STEPS})",
    "max_tokens": "no ceiling",
    "max_seconds": "no ceiling",
    "max_cost_usd": "no ceiling",
    "no_progress": f"the default ({DEFAULT_NO_PROGRESS})",
    "max_children": f"the default ({DEFAULT_MAX_CHILDREN})",
    "max_depth": f"the default ({DEFAULT_MAX_DEPTH})",
}


Rule = tuple[str, Callable[[object], bool]]
"""What a value must be, in words, and the test of it."""


def _whole(least: int) -> Rule:
    def ok(value: object) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and least <= value <= MAX_INT

    return f"a whole number >= {least}", ok


def _positive(value: object) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return math.isfinite(value) and value > 0


LIMIT_RULES: dict[str, Rule] = {
    "max_steps": _whole(1),
    "max_tokens": _whole(1),
    "max_seconds": ("a finite number of seconds > 0", _positive),
    "max_cost_usd": ("a finite number of US dollars > 0", _positive),
    "no_progress": _whole(2),
    "max_children": _whole(1),
    "max_depth": _whole(0),
}
"""Each field of ``Limits``: what it must be (besides None), and the test of it."""


class Limits(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, gc=False):
    """Ceilings checked before every action of a run.

    ``None`` means "not set": ``max_steps`` then defaults to 25, ``no_progress`` to 3,
    ``max_children`` to 4 and ``max_depth`` to 3; the other ceilings are unlimited. A root
    run's steps, tokens, dollars and seconds bound its whole tree of sub-agent runs, and its
    ``max_depth`` how deep that tree may grow; ``max_children`` is how many sub-agent runs
    one run may have running at once. ``max_steps``, ``max_tokens`` and ``no_progress`` are
    whole numbers (``no_progress`` at least 2: the same call twice running), seconds and
    dollars finite and above 0; anything else raises ``ConfigError`` naming the field.
    ``Runtime.resume(extend=Limits(...))`` raises each ceiling that the extension sets.
    """

    max_steps: int | None = None
    max_tokens: int | None = None
    max_seconds: float | None = None
    max_cost_usd: float | None = None
    no_progress: int | None = None
    max_children: int | None = None
    max_depth: int | None = None

    def __post_init__(self) -> None:
        if _AS_RECORDED.get():
            return
        for name, (allowed, ok) in LIMIT_RULES.items():
            value = getattr(self, name)
            if value is not None and not ok(value):
                raise ConfigError(
                    f"fl.Limits({name}={value!r}): {name} must be {allowed}, or None for "
                    f"{_UNSET[name]}"
                )

    @property
    def steps_ceiling(self) -> int:
        """The effective step ceiling (25 when unset)."""
        return DEFAULT_MAX_STEPS if self.max_steps is None else self.max_steps

    @property
    def no_progress_window(self) -> int:
        """The effective no-progress window (3 when unset)."""
        return DEFAULT_NO_PROGRESS if self.no_progress is None else self.no_progress

    @property
    def children_ceiling(self) -> int:
        """Sub-agent runs this run may have running at once (4 when unset)."""
        return DEFAULT_MAX_CHILDREN if self.max_children is None else self.max_children

    @property
    def depth_ceiling(self) -> int:
        """How far below the root its tree may grow (3 when unset)."""
        return DEFAULT_MAX_DEPTH if self.max_depth is None else self.max_depth

    def extended(self, ext: Limits) -> Limits:
        """Raise each ceiling that ``ext`` sets; a ceiling is never lowered by an extension."""

        def pick(old: float | None, new: float | None, unset: float | None = None) -> float | None:
            """``unset``: what an unset ceiling stands for (its default), None: no ceiling."""
            if new is None:
                return old
            now = unset if old is None else old
            return new if now is None else max(now, new)

        steps = pick(self.max_steps, ext.max_steps, DEFAULT_MAX_STEPS)
        tokens = pick(self.max_tokens, ext.max_tokens)
        window = pick(self.no_progress, ext.no_progress, DEFAULT_NO_PROGRESS)
        children = pick(self.max_children, ext.max_children, DEFAULT_MAX_CHILDREN)
        depth = pick(self.max_depth, ext.max_depth, DEFAULT_MAX_DEPTH)
        with as_recorded():  # both were checked when built (or are a log's, kept as they are)
            return Limits(
                max_steps=None if steps is None else int(steps),
                max_tokens=None if tokens is None else int(tokens),
                max_seconds=pick(self.max_seconds, ext.max_seconds),
                max_cost_usd=pick(self.max_cost_usd, ext.max_cost_usd),
                no_progress=None if window is None else int(window),
                max_children=None if children is None else int(children),
                max_depth=None if depth is None else int(depth),
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


_CANONICAL_JSON = msgspec.json.Encoder(order="sorted")


def _args_text(name: object, args: object) -> str:
    if isinstance(args, str):
        return args
    if not isinstance(args, Mapping):
        raise ConfigError(
            f"fl.ToolCall({name!r}, args={args!r}): args must be a mapping of argument names to "
            "JSON values, or the model's argument text"
        )
    try:
        return _CANONICAL_JSON.encode(dict(args)).decode()
    except (TypeError, msgspec.EncodeError, UnicodeEncodeError) as exc:
        raise ConfigError(
            f"fl.ToolCall({name!r}, args=...): the arguments must be JSON values, their text "
            f"valid Unicode ({exc})"
        ) from exc


class _NameFirst(msgspec.StructMeta):
    """Builds a ToolCall as it is written, ``ToolCall(name, args, id)``, while its fields keep
    their recorded order (id, name, args): logged replies and prompt digests stay the same bytes."""

    def __call__(
        cls,  # noqa: N805 - a metaclass's method: its self is the class
        name: str,
        args: Mapping[str, Any] | str = "{}",
        id: str = "",
    ) -> Any:
        if not isinstance(name, str) or not isinstance(id, str):
            raise ConfigError(f"fl.ToolCall(name={name!r}, id={id!r}): name and id must be str")
        return super().__call__(id=id, name=name, args=_args_text(name, args))

    @property
    def __signature__(cls) -> inspect.Signature:  # noqa: N805 - as above
        call = inspect.signature(_NameFirst.__call__)
        params = list(call.parameters.values())[1:]
        return call.replace(parameters=params, return_annotation=inspect.Signature.empty)


class ToolCall(msgspec.Struct, metaclass=_NameFirst, frozen=True, kw_only=True, gc=False):
    """A tool call a model asked for: ``ToolCall("add", {"a": 2, "b": 3})``.

    The same value is recorded in ``model.responded`` and seen again in
    ``Message.tool_calls``. ``args`` is always text: a mapping is stored as canonical JSON
    (sorted keys, no spaces) when the call is built; text, such as a provider's raw
    arguments, is kept verbatim (JSON expected, not guaranteed), so malformed arguments
    reach validation and are fed back to the model. ``id`` is the provider's call id when
    it has one; a run gives the others one from the step and their index.
    """

    id: str
    name: str
    args: str

    if TYPE_CHECKING:

        def __init__(self, name: str, args: Mapping[str, Any] | str = "{}", id: str = "") -> None:
            """For type checkers; ``_NameFirst.__call__`` does it (a Struct has no __init__)."""

    def __repr__(self) -> str:
        return f"ToolCall(name={self.name!r}, args={self.args!r}, id={self.id!r})"

    def __reduce__(self) -> tuple[object, tuple[str, str, str]]:
        return ToolCall, (self.name, self.args, self.id)


class ToolInfo(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, gc=False):
    """What a run records about each tool it may call, so decisions need only the log."""

    name: str
    idempotent: bool
    schema_digest: str
    agent_limits: Limits | None = None
    """Set when the tool is a sub-agent (named after its agent): that agent's own limits,
    which its child runs get, capped by what the run has left."""
