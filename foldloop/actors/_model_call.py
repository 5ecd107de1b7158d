"""One model call of a run: the request it makes of the model, sync or awaited, and the
model's answer as the command it becomes (checked: a reply, a usage and a size the log can
hold)."""

from __future__ import annotations

import asyncio
import inspect
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import msgspec

from foldloop._agent import Agent
from foldloop._log import get_logger
from foldloop.actors._event_loop import in_step_of
from foldloop.core._commands import Command, ModelCallFailed, ModelReplied
from foldloop.core._effects import CallModel
from foldloop.core._messages import MessageView, ToolSpec
from foldloop.errors import ModelCallError
from foldloop.events._codec import plain_str, storable_text
from foldloop.events._values import ToolCall, Usage
from foldloop.llm import AsyncComplete, Reply
from foldloop.llm._protocol import STOP_REASONS
from foldloop.store import MAX_EVENT_BYTES

__all__ = ["BACKOFF", "MAX_REPLY_BYTES", "PLACE", "ModelCall", "reply_bound"]

PLACE = "a place under max_model_calls"
BACKOFF = "its retry's backoff"
"""What a call not made was still waiting for (``ModelCall.out_of_time``)."""

log = get_logger(__name__)


MAX_COUNT = 2**53
"""Token counts past this are no provider's (and would not fit a stored integer)."""


def reply_bound(event_bytes: int) -> int:
    """The most a model reply's text and calls may take where an event may take
    ``event_bytes`` (its envelope, usage and model name take the rest)."""
    return event_bytes - min(64 * 1024, event_bytes // 4)


MAX_REPLY_BYTES = reply_bound(MAX_EVENT_BYTES)
"""A model reply's text and calls past this cannot fit one event in any store."""


def _storable_calls(calls: Sequence[ToolCall]) -> tuple[ToolCall, ...] | None:
    """The calls as the log can hold them: each an ``fl.ToolCall`` (a look-alike would be
    written as something no reader decodes), its texts plain ``str`` with each lone
    surrogate replaced, as a reply's text is (a provider's JSON may escape one into the
    arguments); None when all are so already, as nearly every reply's are (this runs on
    every reply)."""
    for call in calls:
        if type(call) is not ToolCall:
            raise TypeError(f"tool_calls holds a {type(call).__name__}, not an fl.ToolCall")
    if all(
        type(c.name) is type(c.args) is type(c.id) is str
        and c.args.isascii()
        and c.name.isascii()
        and c.id.isascii()
        for c in calls
    ):
        return None
    return tuple(
        msgspec.structs.replace(
            c,
            name=_text(c.name, "a tool call's name"),
            args=_text(c.args, "a tool call's args"),
            id=_text(c.id, "a tool call's id"),
        )
        for c in calls
    )


def _text(value: object, what: str) -> str:
    """``value`` as a plain ``str`` the log can hold: a subclass (numpy's ``str_``, say) is
    copied out of it, lone surrogates replaced; anything else is not text."""
    if not isinstance(value, str):
        raise TypeError(f"{what} is a {type(value).__name__}, not str")
    return storable_text(plain_str(value))


def _reply_bytes(text: str, calls: Sequence[ToolCall]) -> int:
    """About the bytes a reply takes in its event (exactly its text and calls')."""
    size = len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))
    for call in calls:
        size += len(call.name.encode()) + len(call.args.encode("utf-8", "surrogatepass"))
        size += len(call.id.encode())
    return size


def _implausible(usage: Usage) -> str:
    """What is wrong with a model's reported usage ("" if nothing)."""
    for name in ("input_tokens", "output_tokens"):
        value = getattr(usage, name)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < MAX_COUNT:
            return f"{name}={value!r}"
    cost = usage.cost_usd
    if isinstance(cost, bool) or not isinstance(cost, int | float) or not 0 <= cost < MAX_COUNT:
        return f"cost_usd={cost!r}"  # NaN fails the comparison too
    return ""


class ModelCall:
    """One model call of a run: what it asks, and its answer as the command it becomes."""

    __slots__ = (
        "agent",
        "asked_at",
        "clock",
        "deadline",
        "effect",
        "max_reply_bytes",
        "messages",
        "run_id",
        "specs",
    )

    def __init__(
        self,
        agent: Agent,
        clock: Callable[[], int],
        effect: CallModel,
        messages: MessageView,
        specs: Sequence[ToolSpec],
        *,
        run_id: str,
        max_reply_bytes: int = MAX_REPLY_BYTES,
    ) -> None:
        self.run_id = run_id
        self.max_reply_bytes = max_reply_bytes
        """Past this a reply could not be stored (``reply_bound`` of the store's events)."""
        self.agent = agent
        self.clock = clock
        self.effect = effect
        self.messages = messages
        self.specs = specs
        self.asked_at = time.monotonic()
        self.deadline = None if effect.within_s is None else self.asked_at + effect.within_s
        """When the run's ``max_seconds`` runs out (``time.monotonic()``, the event loop's
        clock), fixed as the call is asked for: a backoff and a wait for a place count."""

    def seconds_left(self) -> float:
        """Until the deadline (``math.inf`` without one)."""
        return math.inf if self.deadline is None else max(0.0, self.deadline - time.monotonic())

    def sync(self) -> Command:
        """Call ``complete`` (on the calling thread: a shard, or a pool's). What it raises
        fails the call, ``SystemExit`` too (in an actor it would stop every actor)."""
        start = time.perf_counter()
        try:
            reply = self.agent.llm.complete(
                self.messages, self.specs, max_tokens=self.effect.max_tokens
            )
        except Exception as exc:
            return self.failed(exc)
        except BaseException as exc:  # SystemExit, GeneratorExit, a test runner's outcome...
            why = f"model {self.agent.llm.model!r}: complete raised {type(exc).__name__}"
            return self.failed(ModelCallError(why, retryable=False))
        return self.checked(reply, start)

    async def awaited(
        self, ask: AsyncComplete, cancelled_here: Callable[[asyncio.Task[Any]], bool]
    ) -> Command:
        """Await ``acomplete`` (on the runtime's loop; a cancel cancels it). What else it
        raises fails the call, ``SystemExit`` and a ``CancelledError`` of its own too (one
        it raised, or a cancel of its own task: ``cancelled_here`` tells foldloop's)."""
        if self.seconds_left() <= 0:  # its place came after the run's time: not made
            return self.out_of_time(PLACE)
        start = time.perf_counter()
        task = asyncio.current_task()
        within = asyncio.timeout_at(self.deadline)  # the run's max_seconds (None: none)
        try:
            async with within:
                reply = await ask(self.messages, self.specs, max_tokens=self.effect.max_tokens)
        except asyncio.CancelledError:
            if task is None or cancelled_here(task):  # foldloop's cancel (its run's, a close)
                raise
            why = "raised CancelledError without being cancelled"
            return self.failed(ModelCallError(self._in_acomplete(why), retryable=False))
        except Exception as exc:  # cut, though a model may have made the cut its own error
            return self.out_of_time() if within.expired() else self.failed(exc)
        except BaseException as exc:  # out of the loop, it would stop every call on it
            if isinstance(exc, GeneratorExit) and not in_step_of(task):
                raise  # its coroutine is being closed, not run: nobody waits for a reply
            why = f"raised {type(exc).__name__}"
            return self.failed(ModelCallError(self._in_acomplete(why), retryable=False))
        return self.checked(reply, start)

    def out_of_time(self, waiting_for: str = "") -> Command:
        """The call cut where the run's ``max_seconds`` ran out, or not made (still
        ``waiting_for`` a place, or its backoff): the run stops there."""
        waited = time.monotonic() - self.asked_at
        what = f"was still waiting for {waiting_for}" if waiting_for else "had not answered"
        error = (
            f"model {self.agent.llm.model!r} {what} when the run's max_seconds ran out "
            f"({waited:.1f} s after the call was asked for)"
        )
        return ModelCallFailed(
            now=self.clock(), step=self.effect.step, error=error, retryable=True, out_of_time=True
        )

    def _in_acomplete(self, why: str) -> str:
        return f"acomplete of model {self.agent.llm.model!r} {why}"

    def checked(self, reply: object, start: float) -> Command:
        """The reply as its command; a model that returned something else fails the run's
        call, saying what it returned (a bug in the model's code, not worth a retry)."""
        if not isinstance(reply, Reply):
            said = f"model {self.agent.llm.model!r} returned {type(reply).__name__}, not fl.Reply"
            if inspect.iscoroutine(reply):  # an ``async def complete``
                reply.close()  # never awaited: closed here, not warned about at exit
                said += (
                    ": its complete is an async def; name it acomplete (foldloop awaits that) "
                    "or make complete a plain def"
                )
            return self.failed(ModelCallError(said, retryable=False))
        try:
            return self.replied(reply, start)
        except Exception as exc:  # a field of the wrong type (text=None, say): no command
            # would come back to the run at all
            error = ModelCallError(
                f"model {self.agent.llm.model!r} returned an unusable fl.Reply: "
                f"{type(exc).__name__}: {exc}",
                retryable=False,
            )
            return self.failed(error)

    def replied(self, reply: Reply, start: float) -> Command:
        """The reply as its command; raises for a Reply whose fields the log cannot hold
        (``checked`` says so)."""
        if reply.stop_reason not in STOP_REASONS:
            raise ValueError(
                f"stop_reason {reply.stop_reason!r} is not one of {sorted(STOP_REASONS)}"
            )
        text = _text(reply.text, "text")
        asked = tuple(reply.tool_calls)  # once: a generator is not emptied by a check
        storable = _storable_calls(asked)
        calls = asked if storable is None else storable
        usage = reply.usage or Usage()
        named = reply.model if isinstance(reply.model, str) else ""  # None from a dict's get
        model = _text(named, "model") or _text(self.agent.llm.model, "the model's name")
        size = _reply_bytes(text, calls)
        odd = _implausible(usage)
        bound = self.max_reply_bytes
        if size > bound or odd:  # it could not be recorded, or would corrupt the run
            why = (
                f"replied with {size:,} bytes, over the {bound:,} bytes a reply may take in the log"
                if size > bound
                else f"reported {odd}, which is not a usage to record"
            )
            error = ModelCallError(f"model {model!r} {why}", retryable=False)
            return self.failed(error)
        if not usage.cost_usd:
            usage = self._priced(model, usage)
        self._check_bound(model, usage)
        return ModelReplied(
            now=self.clock(),
            step=self.effect.step,
            text=text,
            tool_calls=calls,
            usage=usage,
            model=model,
            latency_ms=round((time.perf_counter() - start) * 1000, 3),
            stop_reason=plain_str(reply.stop_reason),
        )

    def _priced(self, model: str, usage: Usage) -> Usage:
        """``usage`` with its cost from the price table: by the model that answered, or (a
        dated name the table lacks, as providers answer) by the agent's own model."""
        pricing = self.agent.pricing
        name = model if model in pricing.prices else self.agent.llm.model
        return pricing.usage(name, usage.input_tokens, usage.output_tokens)

    def _check_bound(self, model: str, usage: Usage) -> None:
        """Say so when a model counted more than its call's budget reserved: a ceiling then
        holds only up to the difference."""
        effect = self.effect
        over_input = effect.prompt_bound and usage.input_tokens > effect.prompt_bound
        over_output = effect.max_tokens is not None and usage.output_tokens > effect.max_tokens
        over_usd = effect.reserved_usd and usage.cost_usd > effect.reserved_usd
        if over_input or over_output or over_usd:
            log.warning(
                "model_usage_over_reserved",
                run_id=self.run_id,
                agent=self.agent.name,
                step=effect.step,
                model=model,
                input_tokens=usage.input_tokens,
                prompt_bound=effect.prompt_bound,
                output_tokens=usage.output_tokens,
                max_tokens=effect.max_tokens,
                cost_usd=usage.cost_usd,
                reserved_usd=effect.reserved_usd,
            )

    def failed(self, exc: Exception) -> Command:
        if not isinstance(exc, ModelCallError):
            error = f"{type(exc).__name__}: {exc}"
            return ModelCallFailed(now=self.clock(), step=self.effect.step, error=error)
        return ModelCallFailed(
            now=self.clock(),
            step=self.effect.step,
            error=str(exc),
            retryable=exc.retryable,
            retry_after_s=_seconds(exc.retry_after_s),
        )


def _seconds(given: object) -> float:
    """A wait an adapter asked for, as seconds >= 0 (0 for anything that is not one)."""
    if isinstance(given, int | float) and not isinstance(given, bool) and 0 < given < math.inf:
        return float(given)
    return 0.0
