"""Work on run trees that must not run on a shard (it waits for commits): parked runs
taken up again, and what a tree split over runtimes cannot carry by itself. Its bounded pool
also runs the child starts and cancel cascades of ``Commands``; ``close`` finishes it."""

from __future__ import annotations

import time
from collections.abc import Callable

from foldloop._log import get_logger
from foldloop.actors._system import HANDOVER_WAIT, ActorSystem
from foldloop.actors._workers import Workers
from foldloop.core._decide import decide
from foldloop.core._state import RunState
from foldloop.core._tree import child_finished, ended_for_parent
from foldloop.errors import ConfigError, FoldloopError, RunNotFound
from foldloop.events._values import Limits
from foldloop.runtime._driving import drive
from foldloop.runtime._queries import Queries
from foldloop.runtime._registry import AgentRegistry
from foldloop.runtime._rules import evolve_all
from foldloop.runtime._writes import RunWrites
from foldloop.tools._decorator import bound_text

__all__ = ["CHILD_WORKERS", "TREE_CLOSE_WAIT", "TreeWork"]

log = get_logger("foldloop.runtime")

CHILD_WORKERS = 8
"""Threads that start child runs and carry cancels down trees, however many trees grow."""
TREE_CLOSE_WAIT = 10.0
"""Seconds ``close`` waits for queued tree work (a cancel's cascade) and for the cancels it
told runs here to be handled, in all, before it stops."""


class TreeWork:
    """One runtime's tree work, on a pool of ``CHILD_WORKERS`` threads."""

    def __init__(
        self,
        *,
        system: ActorSystem,
        queries: Queries,
        agents: AgentRegistry,
        writes: RunWrites,
        clock: Callable[[], int],
        cancel_child: Callable[[str, str], None],
    ) -> None:
        self._system = system
        self._queries = queries
        self._agents = agents
        self._writes = writes
        self._clock = clock
        self._cancel_child = cancel_child
        self._pool = Workers(CHILD_WORKERS, "foldloop-children")

    def check_child_resume(self, state: RunState, extend: Limits | None) -> None:
        """A sub-agent's child spends its parent's budget: it resumes only within its
        allotment, and only while its parent still waits for it (else what it spent
        again would be charged to no one)."""
        run_id, parent_id = state.run_id, state.parent_run_id
        if extend is not None:
            raise ConfigError(
                f"run {run_id!r} is a sub-agent's child: its ceilings are the allotment its "
                f"parent {parent_id!r} gave it, and cannot be extended",
                advice="raise the root's limits (resume the root with extend=...) instead",
            )
        parent = self._queries.state(parent_id)
        link = next((c for c in parent.children if c.run_id == run_id and c.running), None)
        if link is None or parent.terminal:
            raise ConfigError(
                f"run {run_id!r} is a sub-agent's child its parent {parent_id!r} no longer "
                f"waits for (the parent is {parent.status.value}"
                + ("" if parent.terminal else ", and has its outcome already")
                + ")",
                advice="start a new run, or resume the parent's tree from its root",
            )

    def cancel_reason(self, state: RunState) -> str | None:
        """Why ``recover()`` cancels ``state`` instead of resuming it (None: it does not).
        A child that ended for its parent (limit reached, no progress, failed) can run
        nothing more (its resume is refused): it stays as it ended."""
        if state.terminal or ended_for_parent(state):
            return None
        return self._ended_ancestor(state)

    def _ended_ancestor(self, state: RunState) -> str | None:
        """For a run of a tree whose parent, or an ancestor above it, has ended: the reason
        to cancel it ("parent cancelled" when it was a cancel whose cascade was cut short);
        None otherwise. (A run host code spawned with a ``parent_run_id`` is no sub-agent's:
        its parent's end does not end it.)"""
        parent = state.parent_run_id if state.parent_call_id else ""
        while parent:
            try:
                above = self._queries.state(parent)
            except FoldloopError:
                return None  # an unreadable parent: leave the child to be resumed
            if above.terminal:
                ended = above.status.value
                return "parent cancelled" if ended == "cancelled" else f"parent {ended}"
            parent = above.parent_run_id if above.parent_call_id else ""
        return None

    def submit(self, job: Callable[[], object]) -> None:
        """Run ``job`` on the tree pool."""
        self._pool.submit(job)

    def close(self) -> None:
        """Finish the work queued and the cancels it told runs here (up to
        ``TREE_CLOSE_WAIT`` s in all), then stop. A told cancel may wait in its run's mailbox
        behind a commit: it is handled only once that lands, and its run's own cascade
        (``CancelChildren``) comes back here as more work."""
        deadline = time.monotonic() + TREE_CLOSE_WAIT
        while True:
            if not (
                self._pool.join(deadline - time.monotonic())
                and self._system.wait_cancelled(deadline - time.monotonic())
            ):
                log.warning("tree_work_cut_at_close", advice="recover() finishes it")
                break
            if self._pool.join(0):  # the cancels handled queued no more work
                break
        self._pool.shutdown()

    def follow_children(self) -> None:
        """Carry what a tree split over runtimes cannot carry by itself (the poller calls
        it): the ends of children driven elsewhere to their parents driven here (a child
        tells only a parent active in its own runtime), and the cancel of a parent driven
        elsewhere to its children driven here (its cascade finds them locked)."""
        for parent, child in self._system.children_elsewhere():
            try:
                state = self._queries.state(child)
            except RunNotFound:
                continue  # its start is under way here
            if ended_for_parent(state):
                self._system.tell(parent, child_finished(state, self._clock(), bound_text))
        for child, parent in self._system.children_of_elsewhere():
            if self._queries.state(parent).terminal:
                self._cancel_child(child, "parent cancelled")

    def take_up_parked(self, run_id: str) -> None:
        """Commands came for a run parked here for its children: drive it again with them,
        off the calling thread (on the tree pool, which ``close`` finishes)."""
        self._pool.submit(lambda: self._take_up_parked(run_id))

    def _take_up_parked(self, run_id: str) -> None:
        """Take the run (its lease is this runtime's) and decide its commands in order until
        one moves it; drive it then (the rest reach its actor); else it parks again."""
        try:
            epoch = self._system.take(run_id, wait=HANDOVER_WAIT)
        except FoldloopError as exc:
            log.warning("parked_run_not_taken_up", run_id=run_id, error=str(exc))
            self._system.take_up_failed(run_id)  # recover() resumes it
            return
        state: RunState | None = None
        try:
            state = self._queries.state(run_id)
            agent = self._agents.for_run(state)
            while (command := self._system.next_for_take_up(run_id, state)) is not None:
                decision = decide(state, command)
                if decision.rejected:
                    continue  # a stale answer
                settles = decision.settles
                self._writes.append_decisions(state, [(decision, command)], epoch, release=settles)
                state = evolve_all(state, decision, command.now)
                drive(self._system, agent, state, epoch, decision, released=settles)
                return
        except BaseException as exc:
            self._system.take_up_failed(run_id)
            self._system.give_back(run_id, epoch)
            if isinstance(exc, FoldloopError):
                log.warning("parked_run_not_taken_up", run_id=run_id, error=str(exc))
                return
            raise
        self._system.unclaim(run_id)  # parked again, its lease kept
