"""Tool outcomes that come after their run ended.

A cancel stops a run at once, but a sync tool under way cannot be stopped: its effect
happens anyway, and its outcome arrives when the run has settled. The log records it after
the run's end (``decide`` records a late result and acts on none), so it says what happened
instead of leaving the call requested for ever. One thread, one outcome at a time: each
reads the run's head after the one before it landed.
"""

from __future__ import annotations

from foldloop._log import get_logger
from foldloop.actors._workers import Workers
from foldloop.core._batch import fold_events
from foldloop.core._commands import ToolFinished
from foldloop.core._decide import decide
from foldloop.errors import FoldloopError
from foldloop.store import EventStore, encode_all

__all__ = ["LATE_OUTCOMES_S", "LateOutcomes"]

log = get_logger(__name__)

LATE_OUTCOMES_S = 2.0
"""How long a close lets the late outcomes already handed over be written, at least."""


class LateOutcomes:
    """Records the tool outcomes of ended runs, off the thread that reports them."""

    def __init__(self, store: EventStore) -> None:
        self._store = store
        self._pool = Workers(1, "foldloop-late-outcomes", keep_idle_s=1.0)

    def record(self, run_id: str, finished: ToolFinished) -> None:
        """(Any thread.) Record ``finished`` if its run has ended (a run that may still move
        records its own outcomes, or resumes with the call unknown)."""
        self._pool.submit(lambda: self._record(run_id, finished))

    def _record(self, run_id: str, finished: ToolFinished) -> None:
        try:
            state = self._store.consume_events(run_id, lambda pairs: fold_events(run_id, pairs))
            if not state.terminal:
                return
            decision = decide(state, finished)
            if decision.rejected or not decision.events:
                return
            payloads = encode_all(decision.events, finished.now)
            self._store.append(run_id, payloads, expected_seq=state.seq).wait()
        except FoldloopError as exc:  # another outcome raced it, the store failed: say so
            log.warning(
                "late_tool_outcome_not_recorded",
                run_id=run_id,
                call_id=finished.call_id,
                error=str(exc),
            )
            return
        log.info("late_tool_outcome_recorded", run_id=run_id, call_id=finished.call_id)

    def close(self, timeout: float) -> None:
        """Let the outcomes already handed over be written (up to ``timeout`` s)."""
        self._pool.join(timeout)
        self._pool.shutdown()
