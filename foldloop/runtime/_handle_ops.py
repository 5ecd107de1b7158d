"""What the handles a runtime gives out ask of it: its open check, a run's state, its
wait, its cancel (``results.RunOps``)."""

from __future__ import annotations

from foldloop.actors._system import Settlement
from foldloop.core._state import RunState
from foldloop.runtime._cancels import Cancels
from foldloop.runtime._lifecycle import Lifecycle
from foldloop.runtime._queries import Queries
from foldloop.runtime._results import RunResult
from foldloop.runtime._waiting import Waiter

__all__ = ["HandleOps"]


class HandleOps:
    """What the handles a runtime gives out ask of it (``results.RunOps``)."""

    def __init__(
        self, lifecycle: Lifecycle, queries: Queries, waiter: Waiter, cancels: Cancels
    ) -> None:
        self._lifecycle = lifecycle
        self._queries = queries
        self._waiter = waiter
        self._cancels = cancels

    def check_open(self) -> None:
        self._lifecycle.check()

    @property
    def call_key(self) -> object:
        return self._queries.store

    def state(self, run_id: str) -> RunState:
        return self._queries.state(run_id)

    def ending(self, run_id: str) -> Settlement | None:
        return self._waiter.ending(run_id)

    def closed_under(self, run_ids: list[str]) -> None:
        self._waiter.closed_under(run_ids)

    def wait(
        self,
        run_id: str,
        timeout: float | None,
        *,
        through_approvals: bool,
        ending: Settlement | None,
    ) -> RunResult:
        return self._waiter.wait(
            run_id, timeout, through_approvals=through_approvals, ending=ending
        )

    def cancel(self, run_id: str, reason: str) -> None:
        self._cancels.cancel(run_id, reason)
