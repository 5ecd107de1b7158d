"""Which ceiling stops a run before its next action, and what its next model call may take.

A run's ceilings count its children (``spent``: what ended ones spent, the whole allotment of
running ones), so they bound its tree. Tokens and dollars are known only once a call
answers, so those ceilings hold exactly only if each call's worst case fits in what is left
before it is made: its prompt's bound plus its ``max_tokens``. The prompt's bound is the
model's own count of the last prompt it answered plus what joined the conversation since,
at one token a byte (a byte-level BPE tokenizer, as OpenAI's, Anthropic's and Llama's are,
never gives more tokens than bytes) and a frame a message; before the model has counted a
prompt, every byte of it (messages and tool specs). Dollars follow from tokens at the price
recorded when the run started.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator

import msgspec

from foldloop.core._messages import CHUNK, History, Message
from foldloop.core._state import RunState
from foldloop.core._tree import Budget, spent
from foldloop.events._catalogue import RunLimitReached

__all__ = [
    "PER_CALL",
    "PER_MESSAGE",
    "CallRoom",
    "before_tools",
    "call_room",
    "message_bytes",
    "next_call",
    "prompt_bound",
]

PER_MESSAGE = 16
"""Tokens a chat format may add around a message (role, separators)."""
PER_CALL = 64
"""Tokens a chat format may add to a whole prompt (its frame, the reply's priming)."""

_JSON = msgspec.json.Encoder()
_NS = 1_000_000_000


def message_bytes(message: Message) -> int:
    """Bytes of ``message`` as JSON: at least its text's UTF-8 bytes and its calls' args."""
    return len(_JSON.encode(message))


def _messages_from(history: History, first: int) -> Iterator[Message]:
    start = first // CHUNK
    rest = itertools.chain.from_iterable(history.chunks[start:])
    return itertools.islice(rest, first - start * CHUNK, None)


def prompt_bound(state: RunState) -> int:
    """The most tokens the model can count in the prompt of ``state``'s next call."""
    if state.basis_tokens > 0:
        first, bound = state.basis_size, state.basis_tokens
    else:
        first, bound = 0, state.tools_bytes + PER_CALL
    for message in _messages_from(state.history, first):
        bound += message_bytes(message) + PER_MESSAGE
    return bound


class CallRoom(msgspec.Struct, frozen=True):
    """What the next model call may take: its ``max_tokens`` (None: no ceiling asks for
    one), the bound of its prompt (0 when no ceiling needs it), or the ceiling that
    forbids it."""

    max_tokens: int | None = None
    prompt_bound: int = 0
    limit: RunLimitReached | None = None


def call_room(state: RunState, used: Budget) -> CallRoom:
    """Room for ``state``'s next call under its token and dollar ceilings, given what counts
    against them (``used``): the call's worst case must fit in what is left."""
    limits = state.limits
    dollars, price = limits.max_cost_usd, state.price
    priced = dollars is not None and price is not None
    if limits.max_tokens is None and not priced:
        return CallRoom()
    prompt = prompt_bound(state)
    room: int | None = None
    if limits.max_tokens is not None:
        tokens = used.usage.total_tokens
        room = limits.max_tokens - tokens - prompt
        if room < 1:
            limit = RunLimitReached(
                limit="max_tokens", value=tokens, ceiling=limits.max_tokens, needed=prompt + 1
            )
            return CallRoom(prompt_bound=prompt, limit=limit)
    if dollars is not None and price is not None:
        per_input, per_output = price
        cost = used.usage.cost_usd
        left = (dollars - cost) * 1e6 - prompt * per_input  # micro-dollars
        # one token's worth held back: float sums of many calls' costs must not round over
        affordable = math.floor(left / per_output) - 1 if per_output > 0 else None
        if left < 0 or (affordable is not None and affordable < 1):
            needed = (prompt * per_input + per_output * 2) / 1e6
            limit = RunLimitReached(
                limit="max_cost_usd",
                value=round(cost, 6),
                ceiling=dollars,
                needed=round(needed, 6),
            )
            return CallRoom(prompt_bound=prompt, limit=limit)
        if affordable is not None:
            room = affordable if room is None else min(room, affordable)
    return CallRoom(max_tokens=room, prompt_bound=prompt)


def before_tools(state: RunState, now: int) -> RunLimitReached | None:
    """The dollar or seconds ceiling that stops ``state`` before its next action, if any
    (what was spent, not reserved: tool calls cost no tokens)."""
    limits = state.limits
    cost = spent(state).usage.cost_usd
    if limits.max_cost_usd is not None and cost >= limits.max_cost_usd:
        return RunLimitReached(
            limit="max_cost_usd", value=round(cost, 6), ceiling=limits.max_cost_usd
        )
    if limits.max_seconds is not None:
        elapsed = state.elapsed_ns(now) / _NS
        if elapsed >= limits.max_seconds:
            return RunLimitReached(
                limit="max_seconds", value=round(elapsed, 3), ceiling=limits.max_seconds
            )
    return None


def next_call(state: RunState, now: int) -> CallRoom:
    """Room for ``state``'s next model call, or the ceiling that forbids it: steps, then the
    call's reserve in tokens and dollars, then dollars spent and seconds."""
    used = spent(state)
    ceiling = state.limits.steps_ceiling
    if used.steps >= ceiling:
        return CallRoom(limit=RunLimitReached(limit="max_steps", value=used.steps, ceiling=ceiling))
    room = call_room(state, used)
    if room.limit is None and (later := before_tools(state, now)) is not None:
        return CallRoom(limit=later)
    return room
