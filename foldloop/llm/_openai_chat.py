"""OpenAIChat: any OpenAI-compatible chat completions server, through the official SDK.

Install with ``pip install 'foldloop[openai]'``. The SDK's own retries are switched off:
what they would ask again (a 408, 409, 429 or 5xx, or what the server's ``x-should-retry``
says), a timeout or a connection failure is raised as a retryable ModelCallError, so the
run records ``model.failed(retryable=True)`` and retries with its own backoff; a refused
request (400, 401, 404...) is not retried. Tool-call
arguments are passed on verbatim, malformed or not: validation feeds errors back.

``complete`` uses the SDK's ``OpenAI`` client, ``acomplete`` its ``AsyncOpenAI`` client (one
per event loop, made on first use, its connection pool shared by every call on that loop);
both build the request and read the reply with the same functions. The request goes through
the client's ``post`` as JSON bytes encoded by msgspec and the reply is decoded with msgspec
into the few fields a Reply needs: the SDK's typed request transform and response models cost
about twice the rest of a call's CPU, which a fleet of runs pays on every step (auth,
connection pool, timeouts and error classes are still the SDK's).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec

from foldloop.core._messages import Message, ToolSpec
from foldloop.errors import ConfigError, ModelCallError
from foldloop.events._values import Usage
from foldloop.llm import _sdk as sdk
from foldloop.llm._protocol import Reply, StopReason, ToolCall

__all__ = ["OpenAIChat"]

_PATH = "/chat/completions"
DEFAULT_MAX_TOKENS = 16_384
"""The most a reply is asked to write when a run's ceiling asks for a cap: OpenAI refuses a
max_tokens past the model's output limit (16,384 for gpt-4o and gpt-4o-mini)."""


class _Function(msgspec.Struct):
    name: str = ""
    arguments: str | dict[str, Any] | None = None  # some servers send an object


class _Call(msgspec.Struct):
    id: str | None = None
    function: _Function | None = None  # custom tool calls have none


class _Message(msgspec.Struct):
    content: str | None = None
    tool_calls: list[_Call] | None = None
    refusal: str | None = None


class _Choice(msgspec.Struct):
    message: _Message
    finish_reason: str | None = None


_STOPS: dict[str | None, StopReason] = {"length": "max_tokens", "content_filter": "refusal"}
"""A choice's finish_reason as a Reply's stop_reason (the others end the turn)."""


class _Usage(msgspec.Struct):
    prompt_tokens: float | None = 0  # some servers send 3.0, or null
    completion_tokens: float | None = 0


class _Completion(msgspec.Struct):
    """The fields of a chat completion a Reply is made of (others are ignored)."""

    choices: list[_Choice] = []
    usage: _Usage | None = None
    model: str | None = None
    error: _Error | None = None  # a 200 that carries an error instead


class _Error(msgspec.Struct):
    message: str = ""


_decode = msgspec.json.Decoder(_Completion, strict=False).decode  # "12" is read as 12


def _message(m: Message) -> dict[str, Any]:
    if m.role == "assistant" and m.tool_calls:
        return {
            "role": "assistant",
            "content": m.content or None,
            "tool_calls": [
                {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.args}}
                for c in m.tool_calls
            ],
        }
    if m.role == "tool":
        return {"role": "tool", "tool_call_id": m.tool_call_id or "", "content": m.content}
    return {"role": m.role, "content": m.content}


def _tool(spec: ToolSpec) -> dict[str, Any]:
    return {
        "type": "function",
        "function": {
            "name": spec.name,
            "description": spec.description,
            "parameters": spec.parameters,
        },
    }


class OpenAIChat:
    """A chat model behind the OpenAI API, or any server that speaks it (``base_url``)."""

    instant = False

    def __init__(
        self,
        model: str,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: float = 60.0,
        max_tokens: int = DEFAULT_MAX_TOKENS,
    ) -> None:
        sdk.check_settings(
            "OpenAIChat", model=model, base_url=base_url, timeout=timeout, max_tokens=max_tokens
        )
        try:
            import openai  # noqa: PLC0415 - an optional extra, imported when used
        except ImportError:
            raise ConfigError(
                "OpenAIChat needs the openai SDK: pip install 'foldloop[openai]'"
            ) from None
        key = sdk.api_key(api_key, "OPENAI_API_KEY", base_url, "OpenAIChat")
        options: dict[str, Any] = {
            "api_key": key,
            "base_url": base_url,
            "timeout": timeout,
            "max_retries": 0,  # the run retries, and records every failure
        }
        self._openai = openai
        self._model = model
        self._max_tokens = max_tokens
        self._client = openai.OpenAI(**options)
        self._async_clients = sdk.LoopClients(
            lambda: openai.AsyncOpenAI(**sdk.async_options(openai, options))
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
        """One chat completion; provider usage flows into the run's ``model.responded``."""
        body = self._request(messages, tools, max_tokens)
        with sdk.sdk_errors(self._openai, self._model):
            response = self._client.post(_PATH, content=body, cast_to=str)
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
        body = self._request(messages, tools, max_tokens)
        with sdk.sdk_errors(self._openai, self._model):
            response = await client.post(_PATH, content=body, cast_to=str)
        return self._reply(response)

    async def aclose(self) -> None:
        """Close the running event loop's async client and its pooled connections."""
        await self._async_clients.aclose()

    def _request(
        self, messages: Sequence[Message], tools: Sequence[ToolSpec], max_tokens: int | None
    ) -> bytes:
        """The chat-completions request's JSON body, one definition for both forms."""
        request: dict[str, Any] = {
            "model": self._model,
            "messages": [_message(m) for m in messages],
        }
        if tools:
            request["tools"] = [_tool(t) for t in tools]
        if max_tokens is not None:  # a run's ceiling asks for a cap
            request["max_tokens"] = min(max_tokens, self._max_tokens)
        try:
            return msgspec.json.encode(request)
        except RecursionError:  # a tool schema nested deeper than the encoder recurses
            raise ModelCallError(
                f"{self._model}: the request's tool schemas nest too deep to encode",
                retryable=False,
            ) from None

    def _reply(self, body: str) -> Reply:
        """The response body as a Reply, one definition for both forms."""
        try:
            response = _decode(body)
        except RecursionError:  # nested deeper than the decoder recurses
            raise ModelCallError(
                f"{self._model}: the response is JSON nested too deep to read: {body[:200]!r}",
                retryable=True,
            ) from None
        except msgspec.DecodeError as exc:
            raise ModelCallError(
                f"{self._model}: the response is not a chat completion ({exc}): {body[:200]!r}",
                retryable=True,
            ) from None
        if not response.choices:
            said = (
                f": {response.error.message}" if response.error and response.error.message else ""
            )
            raise ModelCallError(
                f"{self._model}: the response has no choices{said}", retryable=True
            )
        message = response.choices[0].message
        calls = [
            ToolCall(name=fn.name, args=_arguments(fn.arguments), id=c.id or "")
            for c in (message.tool_calls or [])
            if (fn := c.function) is not None
        ]
        usage = response.usage
        choice = response.choices[0]
        return Reply(
            text=message.content or message.refusal or "",
            stop_reason="refusal" if message.refusal else _STOPS.get(choice.finish_reason, ""),
            tool_calls=calls,
            usage=Usage(
                input_tokens=int(usage.prompt_tokens or 0) if usage else 0,
                output_tokens=int(usage.completion_tokens or 0) if usage else 0,
            ),
            model=response.model or self._model,
        )


def _arguments(arguments: str | dict[str, Any] | None) -> str:
    """A call's arguments as the JSON text the run records (an object is encoded)."""
    if isinstance(arguments, dict):
        return msgspec.json.encode(arguments).decode()
    return arguments or ""
