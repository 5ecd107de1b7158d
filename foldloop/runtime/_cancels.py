"""Cancels: of a run driven here (told to its actor), of one nobody drives here (taken,
and cancelled with the decisions that never reached it), of one driven elsewhere (asked of
its runtime), and the cascade down a tree, on the tree pool."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable

from msgspec.structs import replace

from foldloop._log import get_logger
from foldloop.actors._own_threads import calls_into, on_own_thread
from foldloop.actors._system import HANDOVER_WAIT, ActorSystem
from foldloop.actors._workers import Workers
from foldloop.core._commands import Cancel, Command
from foldloop.core._decide import decide
from foldloop.core._effects import Decision
from foldloop.core._state import RunState
from foldloop.errors import ConfigError, FoldloopError, RunLocked, RunNotFound
from foldloop.runtime._admission import Admission
from foldloop.runtime._approval_desk import ApprovalDesk
from foldloop.runtime._lifecycle import CLOSED, REOPEN
from foldloop.runtime._queries import Queries
from foldloop.runtime._writes import RunWrites
from foldloop.store import EventStore, RemoteCancel

__all__ = ["Cancels"]

log = get_logger("foldloop.runtime")

CANCEL_WAIT_S = 30.0
"""The longest a cancel waits for the run's end to be in the log (a swamped runtime): past
it, it returns with the cancel on its way to the run, and says so in the log."""


class Cancels:
    """Cancel runs for the runtime that owns ``system``."""

    def __init__(
        self,
        *,
        store: EventStore,
        system: ActorSystem,
        writes: RunWrites,
        queries: Queries,
        desk: ApprovalDesk,
        clock: Callable[[], int],
        admission: Admission,
        cascade: Callable[[Callable[[], None]], None],
        closing: Callable[[], bool],
    ) -> None:
        self._store = store
        self._system = system
        self._writes = writes
        self._queries = queries
        self._desk = desk
        self._clock = clock
        self._admission = admission
        self._cascade = cascade
        """Runs a child's cancel off the calling thread (the tree pool, which close waits for)."""
        self._closing = closing
        """True once the runtime's close began (a hand-over that meets it is refused as closed)."""
        self._late_cancels = Workers(1, "foldloop-cancel")

    def close(self) -> None:
        """Carry no more lost cancels."""
        self._late_cancels.shutdown()

    def carry_lost_cancel(self, run_id: str, command: Cancel) -> None:
        """A cancel reached a run as it stopped being active here (it parked, or a late
        one found it gone): cancel it again, off the shard that reported it."""
        self._late_cancels.submit(functools.partial(self._carried, run_id, command.reason))

    def _carried(self, run_id: str, reason: str) -> None:
        """(The late cancels' thread.) A cancel carried here, not made by the caller."""
        try:
            self.cancel(run_id, reason)
        except FoldloopError as exc:
            log.warning("cancel_not_carried", run_id=run_id, error=str(exc))

    def cancel_children(self, run_ids: tuple[str, ...], reason: str) -> None:
        """Cancel child runs (each cascades to its own), off the calling shard."""
        for run_id in run_ids:
            self._cascade(functools.partial(self.cancel_child, run_id, reason))

    def cancel_child(self, run_id: str, reason: str) -> None:
        """Cancel a child run of a cancelled parent (off the parent's thread), logging what
        keeps it from being cancelled."""
        try:
            self.cancel(run_id, reason)
        except RunNotFound:  # a crash cut its start short (one still landing sees its parent ended)
            log.debug("child_never_started", run_id=run_id)
        except FoldloopError as exc:
            log.warning("child_not_cancelled", run_id=run_id, error=str(exc))

    def cancel(self, run_id: str, reason: str) -> None:
        """Cancel the run: through its actor if one drives it here, else by taking it; and
        every child run below it that still runs. Returns once the run's end is in the log
        (its ``run.cancelled``, or the end it reached first), but on a runtime's own thread
        (a tool's, a callback's), which must not wait for the runtime's own work."""
        if calls_into(self._store) > 1:  # a signal handler's, over a call it interrupted
            self._late_cancels.submit(functools.partial(self._carried, run_id, reason))
            return
        command = Cancel(now=self._clock(), reason=reason)
        deadline = time.monotonic() + CANCEL_WAIT_S
        while True:
            if self._system.tell(run_id, command):
                if on_own_thread() or self._recorded(run_id, deadline):
                    break
                continue  # it parked before the cancel reached it: take it now
            if self._queries.state(run_id).terminal:
                break
            try:
                epoch = self._system.take(run_id, wait=HANDOVER_WAIT)
            except RunLocked:
                if self._system.active(run_id) and not self._system.closed:
                    continue  # another thread here handed it to an actor meanwhile: tell it
                if isinstance(self._store, RemoteCancel) and self._store.ask_cancel(run_id, reason):
                    # the runtime driving it elsewhere took it (and cascades it)
                    if on_own_thread() or self._recorded(run_id, deadline):
                        break
                    continue  # it parked there before the cancel reached it: take it here
                if self._closing() or self._system.closed:  # a hand-over met the close
                    raise ConfigError(CLOSED, advice=REOPEN) from None
                raise
            self._cancel_taken(run_id, epoch, command)
            self._admission.forget(run_id)
            break
        self._cancel_running_children(run_id)

    def cancel_here(self, run_id: str, reason: str) -> bool:
        """A cancel asked for from another machine: True if a run driven here took it."""
        return self._system.tell(run_id, Cancel(now=self._clock(), reason=reason))

    def _recorded(self, run_id: str, deadline: float) -> bool:
        """Wait for the end of the run a cancel was told to (here, or by the runtime driving
        it elsewhere) to be in the log: True once it ended, or the wait is over (the cancel
        is on its way: logged); False when it parked instead (the cancel came as it did,
        and is for the caller to take it now). Its settlement here says so at once; the
        log, read with a growing pause, says so wherever it went (a lost cancel carried)."""
        settlement = self._system.settlement(run_id)
        began, pause = time.monotonic(), 0.002
        while True:
            if settlement is not None and settlement.event.wait(pause):
                state = settlement.state
                return settlement.interrupted != "" or state is None or state.terminal
            state = self._queries.state(run_id)
            if state.terminal:
                return True
            if settlement is None and state.settled:  # parked, where nothing drives it
                return False
            if time.monotonic() + pause > deadline:
                waited = round(time.monotonic() - began, 1)
                log.warning("cancel_not_yet_recorded", run_id=run_id, waited_s=waited)
                return True
            if settlement is None:
                time.sleep(pause)
            pause = min(pause * 2, 0.1)

    def _cancel_running_children(self, run_id: str) -> None:
        """The cascade, carried from the log now onto the tree pool (which ``close`` waits
        for): the children the run's log says still run. Those its actor starts before the
        cancel reaches it are cancelled by that decision's own effect, or by their start,
        which finds the parent ended."""
        running = tuple(c.run_id for c in self._queries.state(run_id).children if c.running)
        if running:
            self.cancel_children(running, "parent cancelled")

    def _overtaken(self, state: RunState) -> tuple[list[tuple[Decision, Command]], RunState]:
        """The decisions (and expiries) taken on the parked run's calls that never reached
        it, as the run takes them, and the state after them: a cancel records them first,
        so its log says who decided (their effects, a tool to run or a model to ask, are
        never carried out)."""
        steps: list[tuple[Decision, Command]] = []
        for carried in self._desk.commands(state):
            decision = decide(state, carried)
            if decision.events and decision.state is not None:
                steps.append((decision, carried))
                state = decision.state
        return steps, state

    def _cancel_taken(self, run_id: str, epoch: int, command: Cancel) -> None:
        """Cancel a run taken here that no actor drives; its lease goes with the cancel."""
        try:
            state = self._queries.state(run_id)
            steps, decided = self._overtaken(state)
            # timed after the decisions it follows (the take may have waited)
            command = replace(command, now=max(command.now, self._clock()))
            decision = decide(decided, command)  # refused if one of them ended the run
            if decision.events:
                steps.append((decision, command))
            if steps:
                self._writes.append_decisions(state, steps, epoch, release=True)
        except BaseException:
            self._system.give_back(run_id, epoch)
            raise
        ended = steps[-1][0].state if steps else None
        if ended is not None:  # waits on it (one parked for its children) hear of its end
            self._system.settled_without_actor(ended)
        elif steps:
            self._system.unclaim(run_id)
        else:
            self._system.give_back(run_id, epoch)
