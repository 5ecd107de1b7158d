"""fold(events): ``reduce(evolve, events, initial)``, computed in one pass.

Evolving event by event copies the 30-field RunState (and the history's outer tuple) once
per event, although only the last state is wanted. Here the fields the common events change
(a step's model call, reply, tool requests and outcomes) live in local accumulators, and one
RunState is built at the end. Every other event, and every common one whose effect is not
plain (a call at an approval gate, a parked run), is applied by ``apply`` itself on a state
built at that point, so ``evolve`` stays the one definition of what an event means; the
tests hold ``fold`` equal to ``reduce(evolve, ...)`` on generated logs.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable

from msgspec.structs import replace

from foldloop.core.evolve import AT_GATE, FINISHED, INITIAL, apply, call_signature, tool_message
from foldloop.core.messages import Message, push
from foldloop.core.state import CallState, RunState, RunStatus
from foldloop.events.catalogue import (
    ModelRequested,
    ModelResponded,
    ToolCompleted,
    ToolFailed,
    ToolRequested,
)
from foldloop.events.recorded import AnyEvent, Recorded

__all__ = ["fold", "fold_events"]


_ID, _TOOL, _ARGS, _STATUS, _RESULT, _KIND = range(6)


def _record(call: CallState) -> list[str]:
    return [call.call_id, call.tool, call.args, call.status, call.result, call.kind]


def _call_state(r: list[str]) -> CallState:
    return CallState(
        call_id=r[_ID],
        tool=r[_TOOL],
        args=r[_ARGS],
        status=r[_STATUS],  # type: ignore[arg-type]  # only ever a CallStatus
        result=r[_RESULT],
        kind=r[_KIND],
    )


class _Fold:
    """A RunState taken apart into the fields the common events touch.

    The step's calls are mutable records (id, tool, args, status, result, kind) while the
    fold runs: a call would otherwise be built, then copied for tool.requested and again
    for its outcome; CallStates are built once, when a step ends or a state is wanted.
    """

    __slots__ = (
        "base",
        "calls",
        "cost_usd",
        "input_tokens",
        "invalid",
        "last_at",
        "messages",
        "model_failures",
        "model_pending",
        "output_tokens",
        "repeat_count",
        "repeat_sig",
        "running",
        "seq",
        "steps",
    )

    def __init__(self, state: RunState) -> None:
        self.load(state)

    def load(self, state: RunState) -> None:
        self.base = state
        self.running = state.status is RunStatus.RUNNING
        self.seq = state.seq
        self.last_at = state.last_at
        self.steps = state.steps
        self.input_tokens = state.usage.input_tokens
        self.output_tokens = state.usage.output_tokens
        self.cost_usd = state.usage.cost_usd
        self.model_pending = state.model_pending
        self.model_failures = state.model_failures
        self.calls = [_record(c) for c in state.calls]
        self.invalid = state.invalid_args_in_step
        self.repeat_sig = state.repeat_sig
        self.repeat_count = state.repeat_count
        self.messages: list[Message] = []

    def state(self) -> RunState:
        base = self.base
        usage = base.usage
        if (self.input_tokens, self.output_tokens, self.cost_usd) != (
            usage.input_tokens,
            usage.output_tokens,
            usage.cost_usd,
        ):
            usage = replace(
                usage,
                input_tokens=self.input_tokens,
                output_tokens=self.output_tokens,
                cost_usd=self.cost_usd,
            )
        history = push(base.history, self.messages) if self.messages else base.history
        return replace(
            base,
            seq=self.seq,
            last_at=self.last_at,
            steps=self.steps,
            usage=usage,
            model_pending=self.model_pending,
            model_failures=self.model_failures,
            calls=tuple(_call_state(r) for r in self.calls),
            invalid_args_in_step=self.invalid,
            repeat_sig=self.repeat_sig,
            repeat_count=self.repeat_count,
            history=history,
        )

    # Each returns False, having changed nothing, when the event needs ``apply``.

    def model_requested(self, event: ModelRequested, at: int) -> bool:
        self.seq += 1
        self.last_at = at
        self.model_pending = event.step
        return True

    def model_responded(self, event: ModelResponded, at: int) -> bool:
        self.seq += 1
        self.last_at = at
        self.steps = max(self.steps, event.step)
        usage = event.usage
        self.input_tokens += usage.input_tokens
        self.output_tokens += usage.output_tokens
        self.cost_usd += usage.cost_usd
        self.model_pending = 0
        self.model_failures = 0
        self.calls = [[c.id, c.name, c.args, "proposed", "", ""] for c in event.tool_calls]
        self.invalid = 0
        self.messages.append(
            Message(role="assistant", content=event.text, tool_calls=event.tool_calls)
        )
        return True

    def tool_requested(self, event: ToolRequested, at: int) -> bool:
        call_id = event.call_id
        for r in self.calls:
            if r[_ID] == call_id and r[_STATUS] == "proposed":
                r[_STATUS] = "requested"
        self.seq += 1
        self.last_at = at
        return True

    def tool_finished(self, call_id: str, status: str, result: str, kind: str, at: int) -> bool:
        calls = self.calls
        found = None
        for r in calls:
            if r[_STATUS] in AT_GATE:
                return False  # a call at a gate (this one too): its status rules are evolve's
            if found is None and r[_ID] == call_id and r[_STATUS] not in FINISHED:
                found = r
        self.seq += 1
        self.last_at = at
        if found is None:
            return True  # a late or unknown outcome: recorded, nothing else changes
        found[_STATUS], found[_RESULT], found[_KIND] = status, result, kind
        if kind == "invalid_args":
            self.invalid += 1
        for r in calls:
            if r[_STATUS] not in FINISHED:
                return True
        sig, count = self.repeat_sig, self.repeat_count
        for r in calls:
            this = call_signature(r[_TOOL], r[_ARGS], r[_STATUS], r[_RESULT])
            sig, count = (sig, count + 1) if this == sig else (this, 1)
        self.repeat_sig, self.repeat_count = sig, count
        self.messages += [
            tool_message(r[_ID], r[_TOOL], r[_STATUS], r[_RESULT], r[_KIND]) for r in calls
        ]
        return True


def fold(events: Iterable[Recorded], initial: RunState = INITIAL) -> RunState:
    """The state of a run: ``reduce(evolve, events, initial)``."""
    records = iter(events)
    first = next(records, None)
    if first is None:
        return initial
    pairs = itertools.chain(((first.event, first.at),), ((r.event, r.at) for r in records))
    return fold_events(first.run_id, pairs, initial)


def fold_events(
    run_id: str, events: Iterable[tuple[AnyEvent, int]], initial: RunState = INITIAL
) -> RunState:
    """``fold`` of run ``run_id``'s records given as ``(event, at)`` pairs, such as
    ``zip(*store.read_events(run_id))``: no Recorded envelope to build or take apart."""
    state = initial
    acc: _Fold | None = None
    for event, at in events:
        if acc is None:
            if not state.run_id:
                state = replace(state, run_id=run_id)
            acc = _Fold(state)
        done = False
        if acc.running:
            if type(event) is ToolCompleted:
                done = acc.tool_finished(event.call_id, "completed", event.result, "", at)
            elif type(event) is ModelRequested:
                done = acc.model_requested(event, at)
            elif type(event) is ModelResponded:
                done = acc.model_responded(event, at)
            elif type(event) is ToolRequested:
                done = acc.tool_requested(event, at)
            elif type(event) is ToolFailed:
                done = acc.tool_finished(event.call_id, "failed", event.error, event.kind, at)
        if not done:
            state = apply(acc.state(), event, at)
            acc.load(state)
    return state if acc is None else acc.state()
