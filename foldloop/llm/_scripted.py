"""ScriptedLLM: a deterministic model for tests, demos and benchmarks; no network, no key.

With a list, the k-th model call of a run gets the k-th reply, where k is counted from the
run's own history (the assistant messages already in it). It keeps no state of its own, so
a run resumed in another process after a crash gets exactly the reply it would have got.
With a function, the reply is ``fn(messages, tools)`` (pydantic-ai's FunctionModel idea).
``latency_s`` makes every call wait that long first: ``complete`` sleeps its thread,
``acomplete`` awaits ``asyncio.sleep`` (so a fleet's waits share one event loop) and then
runs the same reply logic on the loop, so ``fn`` must then be quick. With no latency a
runtime calls ``complete`` on its model pool instead (``awaitable`` is False): ``fn`` may
block there.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable, Sequence

from foldloop.core._messages import Message, ToolSpec
from foldloop.errors import ConfigError, ModelCallError
from foldloop.events._values import Usage
from foldloop.llm._protocol import Reply

__all__ = ["MAX_LATENCY_S", "ScriptFn", "ScriptedLLM", "estimate_tokens"]

MAX_LATENCY_S = 3600.0
"""A scripted model's longest wait: more is a mistake (a real model call times out sooner)."""

ScriptFn = Callable[[Sequence[Message], Sequence[ToolSpec]], Reply]


def estimate_tokens(text: str) -> int:
    """A rough, deterministic token count (4 characters a token) for scripted replies.

    Scripted prompts are counted as 16 tokens a message, so that estimating usage stays
    O(1) however long the run's history grows.
    """
    return (len(text) + 3) // 4


class ScriptedLLM:
    """A model whose replies are written down in advance."""

    def __init__(
        self,
        replies: Sequence[Reply] | ScriptFn,
        *,
        model: str = "scripted",
        latency_s: float = 0.0,
    ) -> None:
        if not callable(replies):
            replies = tuple(replies)
            for i, reply in enumerate(replies):
                if not isinstance(reply, Reply):
                    raise ConfigError(
                        f"ScriptedLLM reply {i} is a {type(reply).__name__}; write fl.Reply(...)"
                    )
        if (
            isinstance(latency_s, bool)
            or not isinstance(latency_s, int | float)
            or not 0 <= latency_s <= MAX_LATENCY_S  # NaN fails both comparisons
        ):
            raise ConfigError(
                f"ScriptedLLM latency_s is {latency_s!r}; give a number of seconds from 0 to "
                f"{MAX_LATENCY_S:g}"
            )
        self._replies = replies
        self._model = model
        self.latency_s = latency_s

    @property
    def model(self) -> str:
        """The name recorded in ``model.responded``."""
        return self._model

    @property
    def instant(self) -> bool:
        """A list replayed with no latency answers at once: the run calls it inline (no
        hand-off); a function with no latency runs on the model pool; with a latency the run
        awaits ``acomplete``."""
        return not callable(self._replies) and not self.latency_s

    @property
    def awaitable(self) -> bool:
        """Awaited on the runtime's loop (``acomplete``) only with a latency to wait: a
        function with none is called through ``complete`` on the model pool, as it may block
        (a test's gate)."""
        return bool(self.latency_s)

    def complete(
        self,
        messages: Sequence[Message],
        tools: Sequence[ToolSpec],
        *,
        max_tokens: int | None = None,
    ) -> Reply:
        """Return the scripted reply for this point of the conversation."""
        if self.latency_s > 0:
            time.sleep(self.latency_s)
        return self._reply(messages, tools, max_tokens)

    async def acomplete(
        self,
        messages: Sequence[Message],
        tools: Sequence[ToolSpec],
        *,
        max_tokens: int | None = None,
    ) -> Reply:
        """``complete`` without blocking: the latency is awaited on the running loop, then a
        function is called there (keep it quick)."""
        if self.latency_s > 0:
            await asyncio.sleep(self.latency_s)
        return self._reply(messages, tools, max_tokens)

    def _reply(
        self, messages: Sequence[Message], tools: Sequence[ToolSpec], max_tokens: int | None
    ) -> Reply:
        """The reply for this point of the conversation, shared by both forms; an estimated
        usage counts no more output than ``max_tokens``, as a real model stops there."""
        if callable(self._replies):
            reply = self._replies(messages, tools)
            if not isinstance(reply, Reply):
                raise ModelCallError(
                    f"the ScriptedLLM's function returned {type(reply).__name__}, not fl.Reply"
                )
        else:
            k = getattr(messages, "assistant_turns", None)
            if k is None:
                k = sum(1 for m in messages if m.role == "assistant")
            if k >= len(self._replies):
                raise ModelCallError(
                    f"ScriptedLLM has {len(self._replies)} replies and this is model call "
                    f"{k + 1}; add replies, or end the script with a reply that has no tool calls"
                )
            reply = self._replies[k]
        if reply.usage is None:
            prompt = 16 * len(messages)  # O(1): a long run's prompt is not re-walked per call
            completion = estimate_tokens(reply.text) + 8 * len(reply.tool_calls)
            if max_tokens is not None:
                completion = min(completion, max_tokens)
            reply = dataclasses.replace(
                reply, usage=Usage(input_tokens=prompt, output_tokens=completion)
            )
        return reply
