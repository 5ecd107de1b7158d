"""What host code holds for a run: its handle, its result, its summary row."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from foldloop.actors._system import Settlement
from foldloop.core._state import RunState, RunStatus
from foldloop.errors import StoreCorrupted
from foldloop.events._values import Usage
from foldloop.runtime._lifecycle import OpenOnly

__all__ = [
    "Damaged",
    "RunHandle",
    "RunOps",
    "RunResult",
    "RunSummary",
    "RunTree",
    "is_final",
    "result_of",
]


@dataclass(frozen=True)
class RunResult:
    """Where a run stands when ``wait`` returns. Every status but completed has a reason."""

    run_id: str
    status: RunStatus
    output: str
    reason: str
    resumable: bool
    usage: Usage
    steps: int

    @property
    def ok(self) -> bool:
        """True when the run completed."""
        return self.status is RunStatus.COMPLETED


@dataclass(frozen=True)
class RunSummary:
    """One line of ``Runtime.runs()``."""

    run_id: str
    agent: str
    status: RunStatus
    steps: int
    reason: str
    seq: int
    updated_at: int
    damaged: bool = False
    """The run's log is damaged (``reason`` says where; ``foldloop doctor`` lists it all)."""
    parent_run_id: str | None = None
    """The run whose sub-agent call started this one (None for a root)."""


@dataclass(frozen=True)
class RunTree:
    """A run and the child runs its sub-agent calls started, recursively (``Runtime.tree``).

    ``steps`` and ``usage`` are the run's own; ``spent_steps`` and ``spent`` add those of
    its whole subtree (what counts against the root's limits). Each run shows the status
    ``Runtime.runs`` gives it (one nothing drives: interrupted). A child whose start was
    recorded by its parent but never written (a crash between the two) shows as running with
    nothing spent, interrupted as its parent when nothing drives that (``recover()`` starts
    them), or cancelled once its parent has ended."""

    run_id: str
    agent: str
    status: RunStatus
    children: tuple[RunTree, ...] = ()
    reason: str = ""
    steps: int = 0
    usage: Usage = field(default_factory=Usage)
    call_id: str = ""
    """The parent's call that started it ("" for the root)."""

    @property
    def spent_steps(self) -> int:
        """Model calls made by the run and every run below it."""
        return self.steps + sum(c.spent_steps for c in self.children)

    @property
    def spent(self) -> Usage:
        """Tokens and dollars of the run and every run below it."""
        total = self.usage
        for child in self.children:
            total = total + child.spent
        return total

    def walk(self) -> list[RunTree]:
        """This node and every node below it, depth first in the order they started."""
        out = [self]
        for child in self.children:
            out.extend(child.walk())
        return out


@dataclass(frozen=True)
class Damaged:
    """A run whose log cannot be read whole, and what is wrong with it."""

    run_id: str
    error: StoreCorrupted

    @classmethod
    def unreadable(cls, run_id: str) -> Damaged:
        """A run the store lists but holds no readable event of (its id itself damaged)."""
        problem = f"run {run_id!r} is listed by the store's index, but no event of it reads"
        return cls(run_id, StoreCorrupted(problem))

    def summary(self) -> RunSummary:
        """Its row in ``Runtime.runs()``: listed as failed, saying why."""
        return RunSummary(
            run_id=self.run_id,
            agent="",
            status=RunStatus.FAILED,
            steps=0,
            reason=f"damaged: {self.error}",
            seq=0,
            updated_at=0,
            damaged=True,
        )


def result_of(state: RunState, *, interrupted: str = "") -> RunResult:
    """The result a wait returns; ``interrupted``: why nothing drives the run (a queued
    run stays queued, as its log says: nothing holds it, and recover() admits it)."""
    status, reason = state.status, state.reason
    if interrupted:
        reason = interrupted
        if status is not RunStatus.QUEUED:
            status = RunStatus.INTERRUPTED
    elif status is RunStatus.RUNNING:
        reason = "still running"
    return RunResult(
        run_id=state.run_id,
        status=status,
        output=state.output,
        reason=reason,
        # a queued run is admitted (by recover() once its runtime is gone), never resumed
        resumable=status is RunStatus.INTERRUPTED or (state.resumable and not state.terminal),
        usage=state.usage,
        steps=state.steps,
    )


def is_final(result: RunResult) -> bool:
    """Nothing can change how the run stands any more (no resume, no decision)."""
    return result.status in (RunStatus.COMPLETED, RunStatus.CANCELLED) or (
        result.status is RunStatus.FAILED and not result.resumable
    )


class RunOps(Protocol):
    """What a RunHandle asks of the runtime that gave it out."""

    def check_open(self) -> None: ...

    @property
    def call_key(self) -> object:
        """What names the runtime a call goes into (``own_threads.calling``)."""
        ...

    def state(self, run_id: str) -> RunState: ...

    def ending(self, run_id: str) -> Settlement | None:
        """The runtime's record of how a run it drives ends (None if it drives none): a
        handle keeps it, so its ``wait`` needs no read of the log once the run ended."""
        ...

    def wait(
        self,
        run_id: str,
        timeout: float | None,
        *,
        through_approvals: bool,
        ending: Settlement | None,
    ) -> RunResult: ...

    def cancel(self, run_id: str, reason: str) -> None: ...


class RunHandle(OpenOnly):
    """A run spawned or resumed through a runtime."""

    def __init__(self, ops: RunOps, run_id: str) -> None:
        self._ops = ops
        self.id = run_id
        self._ending = ops.ending(run_id)
        self._ended: RunResult | None = None
        """Its result once it ended for good (its Settlement, and the state in it, let go)."""

    def __repr__(self) -> str:
        return f"RunHandle({self.id!r})"

    def _check_open(self) -> None:
        self._ops.check_open()

    @property
    def _call_key(self) -> object:
        return self._ops.call_key

    def wait(self, timeout: float | None = None, *, through_approvals: bool = False) -> RunResult:
        """Block until the run stops moving, and return where it stands.

        By default it returns when the run ends (completed, failed, cancelled, limit_reached,
        no_progress), is interrupted (nothing drives it: a run its runtime left behind is
        taken up here, as ``recover()`` would, when this runtime has its agent; a queued one
        with every run that runtime left queued, so that they keep their spawn order), or
        parks waiting for a person (awaiting_approval); a decision already taken but not yet
        carried into the run is waited for. With ``through_approvals=True`` it waits on
        through every park (calls approved or denied here or in any process, the run parking
        again, a resume by another process) and returns only when the run ends or is
        interrupted. After ``timeout`` seconds it returns the run as it stands then (running
        or awaiting_approval, with a reason saying so).
        """
        if self._ended is not None:
            return self._ended
        result = self._ops.wait(
            self.id, timeout, through_approvals=through_approvals, ending=self._ending
        )
        if is_final(result):
            self._ended, self._ending = result, None
        return result

    def _heard_ended(self, result: RunResult) -> None:
        """(Any thread; not public: only a pool tells it.) The runtime that drove the run says
        it ended as ``result`` (after its end was durable): a wait returns that without
        reading the log. Not checked for an open runtime: it may come as the pool closes."""
        if result.run_id == self.id and is_final(result):
            self._ended = result

    def cancel(self, reason: str = "") -> None:
        """Cancel the run; returns once its end is in the log (see README, "Cancel")."""
        self._ops.cancel(self.id, reason)

    @property
    def state(self) -> RunState:
        """The run's current state (the fold of its log)."""
        return self._ops.state(self.id)
