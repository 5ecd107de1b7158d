"""Run trees: a child's id, what a child's end tells its parent, and one budget for the
tree: what a run has used of its ceilings, children included, and the allotment a new
child run gets.

A root's steps, tokens, dollars and seconds bound its whole tree. Starting a child
escrows an allotment from its parent (``child.spawned`` records it): the child's own
limits, capped by an even share of what the parent has left. A child cannot spend past
its allotment (its own ceilings are that allotment), and what it does not spend returns
to the parent when it ends (``child.ended`` records what it spent). Each run reserves a
model call's worst case before making it (``_ceilings``), so, by induction down the
tree, what all its runs spend stays within the root's ceilings.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import msgspec

from foldloop.core._commands import ChildFinished
from foldloop.core._effects import SpawnChild
from foldloop.core._state import CallState, RunState, RunStatus
from foldloop.events._catalogue import ToolFailureKind
from foldloop.events._values import Limits, ToolInfo, Usage, as_recorded

__all__ = [
    "Bound",
    "child_input",
    "child_refused",
    "unstarted_children",
    "waits_only_for_children",
    "Budget",
    "allotment",
    "child_finished",
    "child_run_id",
    "ended_for_parent",
    "escrowed",
    "interrupted_charge",
    "spent",
    "unstartable",
]

_NS = 1_000_000_000


class Budget:
    """What counts against a run's ceilings: its own model calls, what its ended children's
    subtrees spent, and the whole allotments of the children still running."""

    __slots__ = ("steps", "usage")

    def __init__(self, steps: int, usage: Usage) -> None:
        self.steps = steps
        self.usage = usage


def spent(state: RunState) -> Budget:
    """``state``'s spend as its ceilings see it (a child with children still running when it
    ends is charged their whole allotments)."""
    steps, usage = state.steps, state.usage
    for child in state.children:
        if child.running:
            held = escrowed(child.allotted)
            steps += held.steps
            usage = usage + held.usage
        else:
            steps += child.steps
            usage = usage + child.usage
    return Budget(steps, usage)


def escrowed(allotted: Limits) -> Budget:
    """What a child run with the allotment ``allotted`` is charged while it may still spend:
    all of it."""
    usage = Usage(output_tokens=allotted.max_tokens or 0, cost_usd=allotted.max_cost_usd or 0.0)
    return Budget(allotted.steps_ceiling, usage)


def interrupted_charge(state: RunState) -> Budget:
    """What a child run its runtime could not go on with is charged (it may be recovered and
    spend on): its whole allotment where the allotment caps, what it spent where not."""
    used, held = spent(state), escrowed(state.limits)
    tokens = used.usage.total_tokens
    if state.limits.max_tokens is not None:
        tokens = max(tokens, held.usage.total_tokens)
    cost = used.usage.cost_usd
    if state.limits.max_cost_usd is not None:
        cost = max(cost, held.usage.cost_usd)
    input_tokens = used.usage.input_tokens
    usage = Usage(input_tokens=input_tokens, output_tokens=tokens - input_tokens, cost_usd=cost)
    return Budget(max(used.steps, held.steps), usage)


def allotment(state: RunState, own: Limits, now: int, waiting: int) -> Limits | str:
    """The limits of a new child of ``state`` whose agent's limits are ``own``: each of
    steps, tokens and dollars capped by an even share of what ``state`` has left, shared
    with the ``waiting`` sub-agent calls not started yet (this one included) and the run
    itself; seconds by what it has left. Or why nothing is left to give."""
    limits = state.limits
    used = spent(state)
    shares = waiting + 1
    steps_left = limits.steps_ceiling - used.steps
    if steps_left < 1:
        ceiling = limits.steps_ceiling
        return f"no steps left to give it: the tree has used {used.steps} of max_steps={ceiling}"
    steps = min(own.steps_ceiling, max(1, steps_left // shares))
    tokens = own.max_tokens
    if limits.max_tokens is not None:
        left = limits.max_tokens - used.usage.total_tokens
        if left < 1:
            return f"no tokens left to give it (max_tokens={limits.max_tokens})"
        tokens = min(tokens or left, max(1, left // shares))
    cost = own.max_cost_usd
    if limits.max_cost_usd is not None:
        left_usd = limits.max_cost_usd - used.usage.cost_usd
        if left_usd <= 0:
            return f"no dollars left to give it (max_cost_usd={limits.max_cost_usd:g})"
        cost = min(cost or left_usd, left_usd / shares)
    seconds = own.max_seconds
    if limits.max_seconds is not None:
        left_s = limits.max_seconds - state.elapsed_ns(now) / _NS
        if left_s <= 0:
            return f"no time left to give it (max_seconds={limits.max_seconds:g})"
        seconds = min(seconds or left_s, left_s)
    with as_recorded():  # each value is one a Limits accepts; built as the log will hold it
        return Limits(
            max_steps=steps,
            max_tokens=tokens,
            max_seconds=seconds,
            max_cost_usd=cost,
            no_progress=own.no_progress,
            max_children=own.max_children,
            max_depth=limits.max_depth,  # the root's governs the whole tree
        )


def child_run_id(parent: str, step: int, call_id: str, agent: str) -> str:
    """The id of the child run that call ``call_id`` of step ``step`` of run ``parent``
    starts: derived, so a crash between the child's start and the parent's record of it
    never makes two (the step too: a model may reuse a call id in a later step)."""
    key = f"{parent}\0{step}\0{call_id}"
    digest = hashlib.blake2b(key.encode(), digest_size=12).hexdigest()
    short = f"{parent}.{digest[:8]}"
    return short if len(short) <= 128 else f"{agent[:100]}-{digest}"


_WAITS = frozenset({RunStatus.RUNNING, RunStatus.QUEUED, RunStatus.AWAITING_APPROVAL})


def ended_for_parent(state: RunState) -> bool:
    """The child run has its answer for its parent: it stopped other than to wait (a child
    parked at an approval, queued, or interrupted by a crash and to be recovered, has not)."""
    return (
        state.started and state.status not in _WAITS and state.status is not RunStatus.INTERRUPTED
    )


Bound = Callable[[str], tuple[str, int | None]]
"""Cuts an answer to what a parent's log takes: (kept, original length if cut)."""


def child_finished(
    state: RunState, now: int, bound: Bound, *, interrupted: str = ""
) -> ChildFinished:
    """The command that tells a child run's parent how it ended and what its subtree spent
    (``interrupted``: why the runtime driving it could not go on, so it may be recovered and
    spend on: charged its whole allotment); its output cut by ``bound``, as a tool's result
    is."""
    used = interrupted_charge(state) if interrupted else spent(state)
    output, original = bound("" if interrupted else state.output)
    return ChildFinished(
        now=now,
        call_id=state.parent_call_id,
        run_id=state.run_id,
        status=RunStatus.INTERRUPTED.value if interrupted else state.status.value,
        output=output,
        original_chars=original,
        reason=interrupted or state.reason,
        steps=used.steps,
        usage=used.usage,
    )


def unstartable(now: int, effect: SpawnChild, why: str) -> ChildFinished:
    """The parent's answer when its child run could not be started: failed, spending nothing."""
    return ChildFinished(
        now=now,
        call_id=effect.call_id,
        run_id=effect.run_id,
        status=RunStatus.FAILED.value,
        reason=f"the child run could not be started: {why}",
    )


_MOVES_ALONE = frozenset({"proposed", "requested"})
_AT_GATE = frozenset({"awaiting_approval", "expired"})


def waits_only_for_children(state: RunState) -> bool:
    """Only its child runs' ends can move the run on: no model call or tool call of its own
    is under way, and no call waits at a gate (a decision reaches an active run)."""
    if state.status is not RunStatus.RUNNING or state.model_pending:
        return False
    if not any(c.running for c in state.children):
        return False
    children = {c.call_id for c in state.children if c.running}
    for call in state.calls:
        if call.status in _AT_GATE:
            return False
        if call.status in _MOVES_ALONE and call.call_id not in children:
            info = state.tool_info(call.tool)
            if info is None or info.agent_limits is None:
                return False  # a plain tool call runs (a sub-agent call waits for a slot)
    return True


class _ChildArgs(msgspec.Struct, forbid_unknown_fields=True):
    input: str


_CHILD_ARGS = msgspec.json.Decoder(_ChildArgs)


def child_refused(state: RunState, info: ToolInfo, args: str) -> tuple[ToolFailureKind, str] | None:
    """Why a call of sub-agent ``info`` cannot start a child run (None if it can): its
    arguments (the model's to fix), or the tree's depth (no fault of the model's)."""
    try:
        _CHILD_ARGS.decode(args)
    except msgspec.DecodeError as exc:
        return "invalid_args", f'sub-agent {info.name!r} takes {{"input": "<text>"}}: {exc}'
    depth = state.depth + 1
    if depth > state.limits.depth_ceiling:
        below = f"{depth} level{'s' * (depth != 1)} below the root"
        return "exception", (
            f"sub-agent {info.name!r} would run {below}, past the tree's "
            f"max_depth={state.limits.depth_ceiling}; do this part without it"
        )
    return None


def child_input(args: str) -> str:
    return _CHILD_ARGS.decode(args).input


def unstarted_children(state: RunState) -> list[tuple[CallState, ToolInfo]]:
    """The step's sub-agent calls requested and not yet started, in the model's order (a
    call whose child ended has its outcome already: only running links are this step's)."""
    started = {c.call_id for c in state.children if c.running}
    out = []
    for call in state.calls:
        if call.status != "requested" or call.call_id in started:
            continue
        info = state.tool_info(call.tool)
        if info is not None and info.agent_limits is not None:
            out.append((call, info))
    return out
