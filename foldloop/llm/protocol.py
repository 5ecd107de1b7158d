"""The LLM protocol: a model is anything that turns messages and tool specs into a Reply."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import msgspec

from foldloop.core.messages import Message, ToolSpec
from foldloop.events.values import ModelToolCall, Usage

__all__ = ["LLM", "Reply", "ToolCall", "to_model_tool_calls"]

_JSON = msgspec.json.Encoder(order="sorted")


@dataclass(frozen=True)
class ToolCall:
    """A tool call in a model's reply: ``ToolCall("add", {"a": 2, "b": 3})``.

    ``args`` may be a mapping or the provider's raw JSON text (kept verbatim, so malformed
    arguments reach the validation step and are fed back to the model). ``id`` is the
    provider's call id when it has one.
    """

    name: str
    args: Mapping[str, Any] | str = field(default_factory=dict)
    id: str = ""


@dataclass(frozen=True)
class Reply:
    """What a model answered: text, tool calls, and the usage the provider reported."""

    text: str = ""
    tool_calls: Sequence[ToolCall] = ()
    usage: Usage | None = None
    model: str = ""


@runtime_checkable
class LLM(Protocol):
    """**Protocol:** a chat model. ``complete`` may raise ``ModelCallError(retryable=...)``."""

    @property
    def model(self) -> str:
        """The model's name (recorded in ``model.responded`` and used for pricing)."""
        ...

    def complete(
        self,
        messages: Sequence[Message],
        tools: Sequence[ToolSpec],
        *,
        max_tokens: int | None = None,
    ) -> Reply:
        """Answer the conversation; ``max_tokens`` is what the run's budget leaves."""
        ...


def _args_text(args: Mapping[str, Any] | str) -> str:
    if isinstance(args, str):
        return args
    return _JSON.encode(dict(args)).decode()


def to_model_tool_calls(calls: Sequence[ToolCall]) -> tuple[ModelToolCall, ...]:
    """The recorded form of a reply's tool calls (args as canonical JSON text)."""
    return tuple(ModelToolCall(id=c.id, name=c.name, args=_args_text(c.args)) for c in calls)
