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
from collections.abc import Iterable, Iterator

import msgspec

from foldloop.core._messages import CHUNK, History, Message, ToolSpec
from foldloop.core._state import RunState
from foldloop.core._tree import Budget, spent
from foldloop.events._catalogue import RunLimitReached

__all__ = [
    "HELD_BACK",
    "PER_CALL",
    "PER_MESSAGE",
    "TOOLS_FRAME",
    "CallRoom",
    "before_tools",
    "call_room",
    "ceiling_that_cut",
    "json_bytes",
    "next_call",
    "prompt_bound",
    "seconds_left",
    "specs_bytes",
    "time_limit",
]

PER_MESSAGE = 16
"""Tokens a chat format may add around a message (role, separators)."""
PER_CALL = 64
"""Tokens a chat format may add to a whole prompt (its frame, the reply's priming)."""
TOOLS_FRAME = 1_024
"""Tokens a provider may add to a prompt that offers tools (Anthropic's hidden tool-use
instructions are 159-530)."""
HELD_BACK = 1
"""Output tokens' worth of dollars a call leaves unreserved: float sums must not round over."""

_JSON = msgspec.json.Encoder()
_NS = 1_000_000_000


def json_bytes(value: object) -> int:
    """Bytes of ``value`` as JSON: at least the UTF-8 bytes of every text in it."""
    return len(_JSON.encode(value))


def specs_bytes(specs: Iterable[ToolSpec]) -> int:
    """Bytes of the tool specs a model call shows (recorded in ``run.started``)."""
    return sum(map(json_bytes, specs))


def _messages_from(history: History, first: int) -> Iterator[Message]:
    start = first // CHUNK
    rest = itertools.chain.from_iterable(history.chunks[start:])
    return itertools.islice(rest, first - start * CHUNK, None)


def prompt_bound(state: RunState) -> int:
    """The most tokens the model can count in the prompt of ``state``'s next call."""
    if state.basis_tokens > 0:
        first, bound = state.basis_size, state.basis_tokens
    else:
        first, bound = 0, PER_CALL + state.tools_bytes + (TOOLS_FRAME if state.tools else 0)
    for message in _messages_from(state.history, first):
        bound += json_bytes(message) + PER_MESSAGE
    return bound


class CallRoom(msgspec.Struct, frozen=True):
    """What the next model call may take: its ``max_tokens`` (None: no ceiling asks for
    one), the bound of its prompt and the dollars reserved (0 when no ceiling needs them),
    or the ceiling that forbids it."""

    max_tokens: int | None = None
    prompt_bound: int = 0
    reserved_usd: float = 0.0
    limit: RunLimitReached | None = None


def call_room(state: RunState, used: Budget) -> CallRoom:
    """Room for ``state``'s next call under its token and dollar ceilings, given what counts
    against them (``used``): the call's worst case must fit in what is left."""
    limits = state.limits
    if not state.reserves_calls:
        return _clamped(state, used)
    dollars, price = limits.max_cost_usd, state.price
    if limits.max_tokens is None and (dollars is None or price is None):
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
    if dollars is None or price is None:
        return CallRoom(max_tokens=room, prompt_bound=prompt)
    per_input, per_output = price
    cost = used.usage.cost_usd
    left = (dollars - cost) * 1e6 - prompt * per_input  # micro-dollars
    if per_output > 0:
        affordable = math.floor(left / per_output) - HELD_BACK
        room = affordable if room is None else min(room, affordable)
    if left < 0 or (room is not None and room < 1):
        least = prompt * per_input + (1 + HELD_BACK) * per_output  # micro-dollars
        # rounded up, with margin: spent + needed, as shown, must be a ceiling that fits
        needed = (math.ceil(least) + 2) / 1e6
        limit = RunLimitReached(
            limit="max_cost_usd", value=round(cost, 6), ceiling=dollars, needed=needed
        )
        return CallRoom(prompt_bound=prompt, limit=limit)
    out = 0 if room is None else room
    reserved = (prompt * per_input + out * per_output) / 1e6
    return CallRoom(max_tokens=room, prompt_bound=prompt, reserved_usd=reserved)


def ceiling_that_cut(
    before: RunState, after: RunState, output_tokens: int
) -> RunLimitReached | None:
    """The ceiling that cut a reply of ``output_tokens`` to ``before``'s pending call, when
    the run's own ceilings set the call's cap and the reply used all of it; None when they
    did not (the model's own cap cut it). The cap is recomputed by the rule the call was
    made by: nothing it depends on changes while a call is pending."""
    cap = call_room(before, spent(before)).max_tokens
    if cap is None or output_tokens < cap:
        return None
    limits, used = before.limits, spent(after).usage
    if limits.max_tokens is not None and (
        limits.max_cost_usd is None or _token_room(before) == cap
    ):
        return RunLimitReached(
            limit="max_tokens", value=used.total_tokens, ceiling=limits.max_tokens
        )
    assert limits.max_cost_usd is not None  # a cap was set: by tokens or by dollars
    return RunLimitReached(
        limit="max_cost_usd", value=round(used.cost_usd, 6), ceiling=limits.max_cost_usd
    )


def _token_room(state: RunState) -> int | None:
    """The cap the token ceiling alone sets on the pending call."""
    alone = msgspec.structs.replace(
        state, limits=msgspec.structs.replace(state.limits, max_cost_usd=None)
    )
    return call_room(alone, spent(alone)).max_tokens


def _clamped(state: RunState, used: Budget) -> CallRoom:
    """The rule of runs recorded before calls reserved their worst case: max_tokens is what
    is left of the token ceiling, and the call is made while anything is."""
    ceiling = state.limits.max_tokens
    if ceiling is None:
        return CallRoom()
    tokens = used.usage.total_tokens
    if tokens >= ceiling:
        return CallRoom(limit=RunLimitReached(limit="max_tokens", value=tokens, ceiling=ceiling))
    return CallRoom(max_tokens=max(1, ceiling - tokens))


def before_tools(state: RunState, now: int, used: Budget | None = None) -> RunLimitReached | None:
    """The dollar or seconds ceiling that stops ``state`` before its next action, if any
    (what was spent, not reserved: tool calls cost no tokens); ``used``: its ``spent``, if
    the caller has it."""
    limits = state.limits
    cost = (spent(state) if used is None else used).usage.cost_usd
    if limits.max_cost_usd is not None and cost >= limits.max_cost_usd:
        return RunLimitReached(
            limit="max_cost_usd", value=round(cost, 6), ceiling=limits.max_cost_usd
        )
    if limits.max_seconds is not None and state.elapsed_ns(now) / _NS >= limits.max_seconds:
        return time_limit(state, now)
    return None


def time_limit(state: RunState, now: int) -> RunLimitReached | None:
    """The ``max_seconds`` limit the run stops at, as of ``now`` (None: it has none)."""
    ceiling = state.limits.max_seconds
    if ceiling is None:
        return None
    elapsed = state.elapsed_ns(now) / _NS
    return RunLimitReached(limit="max_seconds", value=round(elapsed, 3), ceiling=ceiling)


def seconds_left(state: RunState, now: int) -> float | None:
    """What the run's ``max_seconds`` leaves it from ``now`` (None: no such ceiling)."""
    ceiling = state.limits.max_seconds
    if ceiling is None:
        return None
    return max(0.0, ceiling - state.elapsed_ns(now) / _NS)


def next_call(state: RunState, now: int) -> CallRoom:
    """Room for ``state``'s next model call, or the ceiling that forbids it: steps, then the
    call's reserve in tokens and dollars, then dollars spent and seconds."""
    used = spent(state)
    ceiling = state.limits.steps_ceiling
    if used.steps >= ceiling:
        return CallRoom(limit=RunLimitReached(limit="max_steps", value=used.steps, ceiling=ceiling))
    room = call_room(state, used)
    if room.limit is None and (later := before_tools(state, now, used)) is not None:
        return CallRoom(limit=later)
    return room
