"""AnthropicChat: Claude through the official SDK's messages API (``foldloop[anthropic]``).

Tool calls travel as ``tool_use`` blocks and results as ``tool_result`` blocks in a user
turn (consecutive results merged into one turn, as the API requires). Errors map like
OpenAIChat's: what the SDK's own retries would ask again (408, 409, 429, 5xx and 529
overloaded, or the server's ``x-should-retry``), timeouts and lost connections are
retryable and retried by the run; refused requests are not.

``complete`` uses the SDK's ``Anthropic`` client, ``acomplete`` its ``AsyncAnthropic`` client
(one per event loop, made on first use, its connection pool shared by every call on that
loop); both build the request and read the reply with the same functions.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from foldloop.core._messages import Message, ToolSpec
from foldloop.errors import ConfigError, ModelCallError
from foldloop.events._values import Usage
from foldloop.llm import _sdk as sdk
from foldloop.llm._protocol import Reply, StopReason, ToolCall

if TYPE_CHECKING:
    from anthropic.types import Message as AnthropicMessage

__all__ = ["AnthropicChat"]

DEFAULT_MAX_TOKENS = 4096

_STOPS: dict[str, StopReason] = {
    "max_tokens": "max_tokens",
    "model_context_window_exceeded": "max_tokens",
    "refusal": "refusal",
}
"""A message's stop_reason as a Reply's (the others end the turn)."""


def _input(args: str) -> dict[str, Any]:
    try:
        value = json.loads(args or "{}")
    except json.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def _conversation(messages: Sequence[Message]) -> tuple[str, list[dict[str, Any]]]:
    """(system text, messages API turns) for a foldloop history."""
    system = "\n\n".join(m.content for m in messages if m.role == "system")
    turns: list[dict[str, Any]] = []
    for m in messages:
        if m.role == "system":
            continue
        if m.role == "tool":
            block = {
                "type": "tool_result",
                "tool_use_id": m.tool_call_id or "",
                "content": m.content,
            }
            if turns and turns[-1]["role"] == "user" and isinstance(turns[-1]["content"], list):
                turns[-1]["content"].append(block)
            else:
                turns.append({"role": "user", "content": [block]})
        elif m.role == "assistant":
            blocks: list[dict[str, Any]] = []
            if m.content:
                blocks.append({"type": "text", "text": m.content})
            blocks.extend(
                {"type": "tool_use", "id": c.id, "name": c.name, "input": _input(c.args)}
                for c in m.tool_calls
            )
            turns.append({"role": "assistant", "content": blocks or m.content})
        else:
            turns.append({"role": "user", "content": m.content})
    return system, turns


class AnthropicChat:
    """A Claude model behind the Anthropic messages API."""

    instant = False

    def __init__(
        self,
        model: str,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        timeout: float = 60.0,
        max_tokens: int = DEFAULT_MAX_TOKENS,
    ) -> None:
        sdk.check_settings(
            "AnthropicChat", model=model, base_url=base_url, timeout=timeout, max_tokens=max_tokens
        )
        try:
            import anthropic  # noqa: PLC0415 - an optional extra, imported when used
        except ImportError:
            raise ConfigError(
                "AnthropicChat needs the anthropic SDK: pip install 'foldloop[anthropic]'"
            ) from None
        key = sdk.api_key(api_key, "ANTHROPIC_API_KEY", base_url, "AnthropicChat")
        options: dict[str, Any] = {
            "api_key": key,
            "base_url": base_url,
            "timeout": timeout,
            "max_retries": 0,  # the run retries, and records every failure
        }
        self._anthropic = anthropic
        self._model = model
        self._max_tokens = max_tokens
        self._client = anthropic.Anthropic(**options)
        self._async_clients = sdk.LoopClients(
            lambda: anthropic.AsyncAnthropic(**sdk.async_options(anthropic, options))
        )

    @property
    def model(self) -> str:
        """The model name sent with every request."""
        return self._model

    def complete(
        self,
        messages: Sequence[Message],
        tools: Sequence[ToolSpec],
        *,
        max_tokens: int | None = None,
    ) -> Reply:
        """One messages-API call; provider usage flows into the run's ``model.responded``."""
        with sdk.sdk_errors(self._anthropic, self._model):
            response = self._client.messages.create(**self._request(messages, tools, max_tokens))
        return self._reply(response)

    async def acomplete(
        self,
        messages: Sequence[Message],
        tools: Sequence[ToolSpec],
        *,
        max_tokens: int | None = None,
    ) -> Reply:
        """``complete`` on the running event loop; a cancel closes the request's connection."""
        client = self._async_clients.get()
        with sdk.sdk_errors(self._anthropic, self._model):
            response = await client.messages.create(**self._request(messages, tools, max_tokens))
        return self._reply(response)

    async def aclose(self) -> None:
        """Close the running event loop's async client and its pooled connections."""
        await self._async_clients.aclose()

    def _request(
        self, messages: Sequence[Message], tools: Sequence[ToolSpec], max_tokens: int | None
    ) -> dict[str, Any]:
        """The messages-API request, one definition for both forms."""
        system, turns = _conversation(messages)
        request: dict[str, Any] = {
            "model": self._model,
            "messages": turns,
            "max_tokens": min(self._max_tokens, max_tokens or self._max_tokens),
        }
        if system:
            request["system"] = system
        if tools:
            request["tools"] = [
                {"name": t.name, "description": t.description, "input_schema": t.parameters}
                for t in tools
            ]
        return request

    def _reply(self, response: AnthropicMessage) -> Reply:
        """The SDK's response as a Reply, one definition for both forms (the SDK builds it
        without checking it: a body that is JSON but no message fails here, retryable)."""
        try:
            return self._read(response)
        except (AttributeError, TypeError, KeyError, ValueError, ArithmeticError) as exc:
            raise ModelCallError(
                f"{self._model}: the response is not a Messages-API message "
                f"({type(exc).__name__}: {exc}): {str(response)[:200]!r}",
                retryable=True,
            ) from None

    def _read(self, response: AnthropicMessage) -> Reply:
        """Read leniently, as OpenAIChat does: a call without a name goes back to the model
        as an invalid call, missing token counts are 0."""
        text = "".join(b.text or "" for b in response.content if b.type == "text")
        calls = [
            ToolCall(name=b.name or "", args=json.dumps(b.input, sort_keys=True), id=b.id or "")
            for b in response.content
            if b.type == "tool_use"
        ]
        usage = response.usage
        return Reply(
            text=text,
            stop_reason=_STOPS.get(response.stop_reason or "", ""),
            tool_calls=calls,
            usage=Usage(
                input_tokens=int(usage.input_tokens or 0) if usage else 0,
                output_tokens=int(usage.output_tokens or 0) if usage else 0,
            ),
            model=response.model or self._model,
        )
