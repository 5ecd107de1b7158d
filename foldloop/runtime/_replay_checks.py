"""Replay checks: a run's log replayed through today's ``decide`` (``verify``), and a
whole tree's logs checked against each other (``verify_tree``)."""

from __future__ import annotations

from typing import NamedTuple

import msgspec

from foldloop.core._batch import fold
from foldloop.core._commands import Start
from foldloop.core._evolve import INITIAL
from foldloop.core._replay import INPUT_TYPES, replay
from foldloop.core._state import RunState, RunStatus
from foldloop.core._tree import ended_for_parent, escrowed, spent
from foldloop.errors import FoldloopError, NondeterminismError
from foldloop.events._catalogue import (
    ChildEnded,
    ChildSpawned,
    RunCancelled,
    RunCompleted,
    RunFailed,
    RunLimitReached,
    RunNoProgress,
    RunStarted,
)
from foldloop.events._recorded import Recorded
from foldloop.events._values import Usage
from foldloop.runtime._queries import Queries
from foldloop.runtime._registry import AgentRegistry
from foldloop.store import EventStore

__all__ = ["ReplayChecks"]

_RUN_ENDS = (RunCancelled, RunCompleted, RunFailed, RunLimitReached, RunNoProgress)


class ReplayChecks:
    """Replays of one runtime's store, with the agents it knows."""

    def __init__(self, store: EventStore, queries: Queries, agents: AgentRegistry) -> None:
        self._store = store
        self._queries = queries
        self._agents = agents

    def verify(self, run_id: str) -> RunState:
        """Replay the run's log through today's decide(); raise at the first difference."""
        return self._verified(run_id)[1]

    def _verified(self, run_id: str) -> tuple[list[Recorded], RunState]:
        records = list(self._queries.events(run_id))
        self._store.verify_chain(run_id)
        first = records[0].event
        if not isinstance(first, RunStarted):
            raise FoldloopError(f"run {run_id!r} does not begin with run.started")
        agent = self._agents.for_run(fold(records[:1]))

        def start(event: RunStarted, now: int) -> Start:
            command = agent.start(
                event.input,
                now=now,
                limits=event.limits,
                metadata=event.metadata,
                parent_run_id=event.parent_run_id,
                parent_call_id=event.parent_call_id,
                depth=event.depth,
            )
            # facts of the recording, not of today's code: the price table of the day, and
            # whether calls reserved their worst case then
            return msgspec.structs.replace(
                command,
                price=event.price,
                tools_bytes=event.tools_bytes,
                reserves_calls=event.reserves_calls,
            )

        return records, replay(records, start)

    def verify_tree(self, run_id: str) -> dict[str, RunState]:
        """``verify`` of the run and every child run below it (depth first, in the order
        they started), and of the links between them: each child's run.started names the
        parent, call, agent and allotment of the child.spawned that started it, and each
        child.ended records what the child's subtree spent by the child's own log."""
        states: dict[str, RunState] = {}
        todo = [run_id]
        while todo:
            records, state = self._verified(todo.pop())
            states[state.run_id] = state
            links = _links(records)
            below = []
            for child in state.children:
                link = links[child.run_id]
                if self._store.head(child.run_id):
                    self._check_link(state, link)
                    below.append(child.run_id)
                else:
                    _check_never_started(state, link)
            todo.extend(reversed(below))
        return states

    def _check_link(self, parent: RunState, link: _Link) -> None:
        """The child's log agrees with what its parent's log says of it."""
        spawned, ended = link.spawned, link.ended
        records = list(self._queries.events(spawned.run_id))
        first = records[0].event
        if not isinstance(first, RunStarted):
            raise NondeterminismError(spawned.run_id, 1, first, "run.started")
        linked = msgspec.structs.replace(
            first,
            agent=spawned.agent,
            limits=spawned.limits,
            parent_run_id=parent.run_id,
            parent_call_id=spawned.call_id,
            depth=parent.depth + 1,
        )
        if first != linked:
            raise NondeterminismError(spawned.run_id, 1, first, linked)
        if ended is None:
            return
        if ended.status == RunStatus.INTERRUPTED.value:  # told by a runtime that lost it
            held = escrowed(spawned.limits)  # at least its whole allotment was charged
            usage = ended.usage
            if (
                ended.steps >= held.steps
                and usage.total_tokens >= held.usage.total_tokens
                and usage.cost_usd >= held.usage.cost_usd
            ):
                return
            told = msgspec.structs.replace(ended, steps=held.steps, usage=held.usage)
            raise NondeterminismError(parent.run_id, link.ended_seq, ended, told)
        reports = _ends_for_parent(records)
        if (ended.status, ended.steps, ended.usage) in reports:
            return
        if not reports:
            now = fold(records).status.value
            why = f"no end in the log of run {spawned.run_id!r} (it is {now})"
            raise NondeterminismError(parent.run_id, link.ended_seq, ended, why)
        status, steps, usage = reports[-1]
        told = msgspec.structs.replace(ended, status=status, steps=steps, usage=usage)
        raise NondeterminismError(parent.run_id, link.ended_seq, ended, told)


def _ends_for_parent(records: list[Recorded]) -> list[tuple[str, int, Usage]]:
    """What the run could have told its parent: (status, steps, usage) after each decision
    of its log that left it ended for its parent, computed as ``child_finished`` does."""
    out: list[tuple[str, int, Usage]] = []
    state, folded, ends = INITIAL, 0, False
    for index, record in enumerate(records):
        ends |= isinstance(record.event, _RUN_ENDS)
        if not ends or (index + 1 < len(records) and records[index + 1].type not in INPUT_TYPES):
            continue  # not the end of a decision that ended the run
        ends = False
        state, folded = fold(records[folded : index + 1], state), index + 1
        if ended_for_parent(state):
            used = spent(state)
            out.append((state.status.value, used.steps, used.usage))
    return out


class _Link(NamedTuple):
    """What a parent's log says of one child run: its start and, once recorded, its end."""

    spawned: ChildSpawned
    ended: ChildEnded | None = None
    ended_seq: int = 0


def _links(records: list[Recorded]) -> dict[str, _Link]:
    """The parent's links by child run id."""
    out: dict[str, _Link] = {}
    for record in records:
        event = record.event
        if isinstance(event, ChildSpawned):
            out[event.run_id] = _Link(event)
        elif isinstance(event, ChildEnded) and event.run_id in out:
            out[event.run_id] = out[event.run_id]._replace(ended=event, ended_seq=record.seq)
    return out


def _check_never_started(parent: RunState, link: _Link) -> None:
    """A child the store holds no log of spent nothing: its end, if recorded, says so; one
    recorded as having spent is missing from this store (its tree came without it)."""
    ended = link.ended
    if ended is not None and (ended.steps or ended.usage != Usage()):
        raise FoldloopError(
            f"run {parent.run_id!r} records its child run {ended.run_id!r} as {ended.status} "
            f"after {ended.steps} step(s), and this store holds no log of that child",
            advice="verify the tree in the store it ran in, or bring it whole: import its "
            "tree export (rt.export(root, tree=True)), again if an import was cut short",
        )
