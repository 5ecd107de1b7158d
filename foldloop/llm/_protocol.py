"""The LLM protocol: a model is anything that turns messages and tool specs into a Reply."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, cast, get_args, runtime_checkable

from foldloop.core._messages import Message, ToolSpec
from foldloop.events._values import ToolCall, Usage

__all__ = ["LLM", "STOP_REASONS", "AsyncComplete", "Reply", "StopReason", "ToolCall", "async_form"]


StopReason = Literal["", "max_tokens", "refusal"]
STOP_REASONS: frozenset[str] = frozenset(get_args(StopReason))


@dataclass(frozen=True)
class Reply:
    """What a model answered: text, tool calls, and the usage the provider reported."""

    text: str = ""
    tool_calls: Sequence[ToolCall] = ()
    usage: Usage | None = None
    model: str = ""
    stop_reason: StopReason = ""
    """Why the model stopped short of ending its turn: "" when it ended it (or said
    nothing), ``"max_tokens"`` when the reply was cut at the call's token cap,
    ``"refusal"`` when the provider refused or filtered it. A final reply that is not ""
    does not complete the run."""


@runtime_checkable
class LLM(Protocol):
    """**Protocol:** a chat model. ``complete`` may raise ``ModelCallError(retryable=...)``.

    A model may also define the asynchronous form, with the same arguments, reply and
    errors::

        async def acomplete(self, messages, tools, *, max_tokens=None) -> Reply: ...

    It is optional (``complete`` alone keeps a model valid) and found by
    [`async_form()`][foldloop.llm.async_form]. When a model has it, the runtime awaits it
    on its own event loop, so thousands of calls wait on one thread; otherwise ``complete``
    runs on a thread pool. ``acomplete`` must not block the loop (no ``time.sleep``, no
    sync HTTP). A cancelled run cancels the task awaiting ``acomplete``: the call gets
    ``asyncio.CancelledError`` at its ``await`` and must let it propagate (clean up in
    ``finally``, never swallow it or turn it into ``ModelCallError``).
    """

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


class AsyncComplete(Protocol):
    """**Protocol:** a model's bound ``acomplete``, as [`async_form()`][foldloop.llm.async_form]
    returns it."""

    def __call__(
        self,
        messages: Sequence[Message],
        tools: Sequence[ToolSpec],
        *,
        max_tokens: int | None = None,
    ) -> Awaitable[Reply]:
        """Answer the conversation, as ``LLM.complete`` does, without blocking the loop."""
        ...


def async_form(llm: LLM) -> AsyncComplete | None:
    """The model's bound ``acomplete`` when it is an ``async def``, else None (use ``complete``).

    An ``acomplete`` that is not a coroutine function (a plain ``def``) is not the async
    form and is ignored, so calling the result always returns a coroutine to await. A model
    whose ``awaitable`` attribute is False asks to be called through ``complete`` (on a
    thread) although it has ``acomplete``: what it runs may block.
    """
    method = getattr(llm, "acomplete", None)
    if method is None or not inspect.iscoroutinefunction(method):
        return None
    if not getattr(llm, "awaitable", True):
        return None
    return cast(AsyncComplete, method)
