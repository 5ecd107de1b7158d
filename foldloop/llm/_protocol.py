"""The LLM protocol: a model is anything that turns messages and tool specs into a Reply."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from foldloop.core._messages import Message, ToolSpec
from foldloop.events._values import ToolCall, Usage

__all__ = ["LLM", "Reply", "ToolCall"]


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
