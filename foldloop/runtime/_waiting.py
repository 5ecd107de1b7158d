"""Waiting for a run: through its turn if it is queued here, on this runtime's settlement of
it where it drives the run, by following the log where another runtime (or process) does,
and through its parks when asked."""

from __future__ import annotations

import time
from collections.abc import Callable

import msgspec

from foldloop._arguments import MAX_WAIT_S, check_seconds
from foldloop._log import get_logger
from foldloop.actors._system import ActorSystem, Settlement
from foldloop.core._explain import ORPHAN_QUEUED, parked_reason
from foldloop.core._state import RunState, RunStatus
from foldloop.errors import (
    ConfigError,
    FoldloopError,
    StoreCorrupted,
    StoreError,
    StoreNotFound,
)
from foldloop.runtime._admission import Admission
from foldloop.runtime._approval_desk import ApprovalDesk
from foldloop.runtime._calls import CallsUnderWay
from foldloop.runtime._lifecycle import CLOSED, REOPEN
from foldloop.runtime._queries import Queries
from foldloop.runtime._results import RunResult, result_of
from foldloop.store import EventStore, WorkQueue, answer_by

__all__ = ["LEASE_RELEASE_GRACE", "Waiter"]

log = get_logger("foldloop.runtime")

LEASE_RELEASE_GRACE = 1.0
"""Seconds a wait on a run settled in another process waits for that process to release
the run's lease before returning. A run releases it in the transaction that settles it,
except after a ``resume`` that parks it again at once with nothing decided meanwhile: that
release goes with the resuming process's next commit, within milliseconds."""
PARKED_POLL = 0.05
"""Longest pause between looks at a parked run's log while waiting through its park (a
decision from another process takes a poller's 0.1 s to arrive anyway)."""
CLOSED_UNDER = "the runtime driving it was closed; resume it later"
"""Why a wait on a run its own runtime drove until it closed returns it interrupted."""
NOT_DRIVEN = "no runtime is driving it"
"""Why a wait returns a run as interrupted when nothing drives it and this runtime cannot."""
QUEUED_NOT_HELD = f"{ORPHAN_QUEUED}; recover() in a runtime with its agent"
"""The same for a queued run."""
MAX_TAKE_UPS = 3
"""How many times one wait takes up its run when nobody drives it (each time its runtime
went away) before it says so."""
FOLLOW_PAUSE_S = 0.02
"""Longest pause between a follow's looks at its run's log while few follows are under way."""
FOLLOW_LOOKS_PER_S = 2_000.0
"""Looks a second the follows of one runtime take between them at most, once there are more
than ``FOLLOW_LOOKS_PER_S * FOLLOW_PAUSE_S``: a thousand threads waiting on runs driven
elsewhere each look every 0.5 s, not every 20 ms (a look is a head read and a lease check,
~30 us: a thousand every 20 ms would take more than a core)."""
CLOSED_UNDER_READ_S = 2.0
"""How long a close waits for a server to answer a read of a run it leaves (for its wait)."""
DECISION_LOOK_S = 0.5
"""How often a wait through approvals in a runtime without the run's agent looks for a
decision taken on it (a read of the approvals table a waiting call)."""
CARRY_GRACE_S = 2.0
"""How long a wait in a runtime without the run's agent follows a parked run whose decision
is taken but not carried in before it returns the run parked, saying so (a live runtime
with the agent carries it in within its poll_interval, 0.1 s by default; none may be open,
and which agents another process has is not known here)."""
SHARED_RECOVERY_GRACE_S = 30.0
"""On a store with a shared work queue, how long a run nobody drives is followed before
``wait`` says it is interrupted: its runtime's owner key lapses and workers recover it."""


class Waiter:
    """``RunHandle.wait`` for one runtime."""

    def __init__(
        self,
        store: EventStore,
        system: ActorSystem,
        queries: Queries,
        desk: ApprovalDesk,
        admission: Admission,
        *,
        take_up: Callable[[str], bool],
        knows: Callable[[str], bool],
    ) -> None:
        self._store = store
        self._take_up = take_up
        """Recovers a run nobody drives if its agent is known here (True: it moves on)."""
        self._knows = knows
        """Whether an agent (by name) is registered here: this runtime's poller carries the
        decisions on its runs in."""
        self._system = system
        self._queries = queries
        self._desk = desk
        self._admission = admission
        self._following = CallsUnderWay()
        """Follows (and waits through parks) under way: they share FOLLOW_LOOKS_PER_S."""

    def closed_under(self, run_ids: list[str]) -> None:
        """(Closing, what the runs wrote stored, the store still open.) Wake the waits on
        the runs the runtime left: each gets its run as the log holds it, interrupted unless
        the log says it ended (its last commit landed as the close began). A store that
        stops answering (a server away) is not read again: a wait given no state reads it
        itself, and says what failed."""
        answering = True
        for run_id in run_ids:
            settlement = self._system.settlement(run_id)
            if settlement is None or settlement.event.is_set():
                continue
            state: RunState | None = None
            if answering:
                try:
                    with answer_by(time.monotonic() + CLOSED_UNDER_READ_S):
                        state = self._queries.state(run_id)
                except (StoreNotFound, StoreCorrupted):
                    pass
                except StoreError:  # the store does not answer: the waits read it
                    answering = False
                except FoldloopError:  # this run's own trouble: its wait says what
                    pass
            settlement.state = state
            if state is None or not state.terminal:
                settlement.interrupted = CLOSED_UNDER
            settlement.event.set()

    def ending(self, run_id: str) -> Settlement | None:
        """How the run ends, as this runtime records it (for a handle to keep)."""
        return self._system.settlement(run_id)

    def wait(
        self,
        run_id: str,
        timeout: float | None,
        *,
        through_approvals: bool = False,
        ending: Settlement | None = None,
    ) -> RunResult:
        """See ``RunHandle.wait``; ``ending``: the handle's record of how the run ends
        (kept by the handle after the runtime forgets it)."""
        check_seconds("timeout", timeout, MAX_WAIT_S, none=True)
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            with answer_by(deadline):  # a server's outage: its reads give up with the wait
                return self._wait(run_id, deadline, through_approvals, ending)
        except StoreError as exc:
            if self._system.closed and not isinstance(exc, (StoreNotFound, StoreCorrupted)):
                raise ConfigError(CLOSED, advice=REOPEN) from exc  # say so, not the store
            raise

    def _wait(
        self,
        run_id: str,
        deadline: float | None,
        through_approvals: bool,
        ending: Settlement | None,
    ) -> RunResult:
        take_ups = 0
        while True:
            state, interrupted = self._settle(run_id, deadline, ending)
            if (
                interrupted in (NOT_DRIVEN, QUEUED_NOT_HELD)
                and take_ups < MAX_TAKE_UPS
                and self._take_up(run_id)
            ):
                take_ups += 1  # its runtime went (closed, or died): driven here now
                continue
            if (
                through_approvals
                and not interrupted
                and state.status is RunStatus.AWAITING_APPROVAL
                and not self._uncarried(state)
                and self._moved(state, deadline)
            ):
                continue
            return result_of(self._as_listed(state), interrupted=interrupted)

    def _as_listed(self, state: RunState) -> RunState:
        """``state`` with the reason ``runs()`` lists it with: a parked run with a decision
        taken and not yet carried into its log says so (not "waiting for a person")."""
        if state.status is not RunStatus.AWAITING_APPROVAL:
            return state
        why = parked_reason(state, self._queries.decided(state))
        return state if why == state.reason else msgspec.structs.replace(state, reason=why)

    def _settle(
        self, run_id: str, deadline: float | None, ending: Settlement | None
    ) -> tuple[RunState, str]:
        """The run once it ends, parks or is interrupted (or at the deadline), and why it
        was interrupted ("" if it was not)."""
        if ending is not None and ending.event.is_set():
            state = ending.state
            if state is not None and state.terminal and not ending.interrupted:
                return state, ""  # ended for good: nothing can have changed it since
        # A queued run's state, read before its wait: the close that ends the wait goes on
        # to close the store, maybe before the wait reads again (and queued, it is unchanged).
        queued = self._queries.state(run_id) if self._admission.queued_here(run_id) else None
        turn = self._admission.wait_turn(run_id, deadline)
        if turn == "deadline":
            return self._queries.state(run_id), ""
        if turn == "closed":
            why = "the runtime holding it in its queue was closed; recover() in a new one admits it"
            try:
                return self._queries.state(run_id), why
            except StoreError:
                if queued is None or not self._system.closed:
                    raise
                return queued, why
        while (settlement := self._system.settlement(run_id)) is not None:
            settlement.event.wait(None if deadline is None else max(0, deadline - time.monotonic()))
            state = settlement.state
            if not settlement.event.is_set() or state is None:  # the deadline, or closed under it
                return self._queries.state(run_id), settlement.interrupted
            if settlement.interrupted:
                stored = self._as_stored(run_id, state)
                if stored.terminal:  # its end landed, or a resume elsewhere ended it since
                    return stored, ""
                if not self._system.closed and self._queries.driven_by_another(run_id):
                    break  # another runtime took it over (it fenced this one off): follow it
                return stored, settlement.interrupted
            if self._decision_pending(state, deadline):
                # the poller (or the drive the decision started) continues the run; wait
                # for that settlement
                time.sleep(0.01)
                continue
            if (
                not state.terminal
                and not settlement.interrupted
                and self._store.head(run_id) > state.seq
            ):
                break  # it moved on since it settled here (a decision carried in, a resume)
            return state, settlement.interrupted
        return self._follow(run_id, deadline)

    def _as_stored(self, run_id: str, state: RunState) -> RunState:
        """An interrupted run as its log holds it: what its actor decided but could not
        store (a full disk) did not happen. As it stood when the store cannot say (closed
        with its runtime: the close read it then; or failing)."""
        if self._system.closed:
            return state
        try:
            return self._queries.state(run_id)
        except StoreError:
            return state

    def _moved(self, state: RunState, deadline: float | None) -> bool:
        """Wait for the parked run's log to grow past ``state``, or for a decision taken
        on it that this runtime cannot carry in (the follow then gives a runtime that can
        its grace); False at the deadline (it shares the follows' looks a second)."""
        pause = 0.001
        run_id, seq = state.run_id, state.seq
        carries = self._knows(state.agent)  # then this runtime's poller carries it in
        look_at_decisions = time.monotonic()
        with self._following.call():
            while self._store.head(run_id) <= seq:
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    return False
                if not carries and now >= look_at_decisions:  # a read a call: not every look
                    if self._desk.decided_not_applied(state):
                        return True
                    look_at_decisions = now + DECISION_LOOK_S
                left = PARKED_POLL if deadline is None else deadline - time.monotonic()
                time.sleep(max(0.0, min(pause, left)))
                pause = min(pause * 1.5, self._longest_pause(PARKED_POLL))
        return True

    def _uncarried(self, state: RunState) -> bool:
        """Parked with a decision taken that this runtime cannot carry in (no agent): past
        the follow's grace, waiting on through it would wait for a runtime that may never
        open."""
        return not self._knows(state.agent) and self._desk.decided_not_applied(state)

    def _decision_pending(self, state: RunState, deadline: float | None) -> bool:
        """Parked before a decision already taken reached it (and there is time left)."""
        return (
            state.status is RunStatus.AWAITING_APPROVAL
            and self._desk.decided_not_applied(state)
            and (deadline is None or time.monotonic() < deadline)
        )

    @property
    def _shared(self) -> bool:
        return isinstance(self._store, WorkQueue)

    def _in_shared_queue(self, run_id: str) -> bool:
        """A queued run on a store with a shared work queue, still in it (nobody holds it)
        or just taken from it by a live runtime (a taker may be under way)."""
        return self._queries.in_shared_queue(run_id) or (
            self._shared and self._queries.driven(run_id)
        )

    def _left_to_others(self, run_id: str, state: RunState, followed_s: float) -> bool:
        """Whether a run nobody drives is still for others to take up, not this wait: in
        the shared work queue, or given the workers their time to recover it (a run still
        for longer had it). Never once stranded there (``Queries.stranded``)."""
        if self._queries.stranded(state):
            return False
        if state.status is RunStatus.QUEUED and self._in_shared_queue(run_id):
            return True
        return (
            self._shared
            and followed_s < SHARED_RECOVERY_GRACE_S
            and self._queries.still_for(state) < SHARED_RECOVERY_GRACE_S
        )

    def _follow(self, run_id: str, deadline: float | None) -> tuple[RunState, str]:
        """Wait for a run driven elsewhere (another process) by following the log, every
        1 ms at first and backing off to every 20 ms (or less often, when so many follows
        are under way that they would take more than FOLLOW_LOOKS_PER_S between them): a
        short run is seen settled soon after it settles, a long one costs ~50 looks a
        second, and a state read when its log grew (the state is the fold of the log up
        to its head) or nobody drives it."""
        with self._following.call():
            return self._follow_log(run_id, deadline)

    def _longest_pause(self, alone: float = FOLLOW_PAUSE_S) -> float:
        """The longest pause between looks: ``alone``, or longer once the follows under way
        would take more than FOLLOW_LOOKS_PER_S between them."""
        return max(alone, self._following.under_way / FOLLOW_LOOKS_PER_S)

    def _follow_log(self, run_id: str, deadline: float | None) -> tuple[RunState, str]:
        pause = 0.001
        released_by: float | None = None
        undriven_since: float | None = None
        uncarried_since: float | None = None
        state: RunState | None = None
        while True:
            try:
                if state is None or self._store.head(run_id) != state.seq:
                    state = self._queries.state(run_id)
                if state.settled and self._decision_pending(state, deadline):
                    # parked, but a runtime's poller carries a decision in: keep following,
                    # unless none has taken it up for a while and this one cannot
                    now = time.monotonic()
                    if self._knows(state.agent) or self._queries.driven(run_id):
                        uncarried_since = None
                    elif now - (uncarried_since := uncarried_since or now) >= CARRY_GRACE_S:
                        return state, ""  # parked, its decision taken, not yet carried in
                elif state.settled:
                    # The approvals table was read after the state: a decision carried in
                    # between shows as applied there and not yet here. Settled: no change.
                    if self._store.head(run_id) != state.seq:
                        continue
                    # Parked again by a resume, its lease goes with that runtime's next
                    # commit: wait for it (a little), so a resume right after finds it free.
                    now = time.monotonic()
                    released_by = released_by or now + LEASE_RELEASE_GRACE
                    if (
                        not self._queries.driven(run_id)
                        or now >= released_by
                        or (deadline is not None and now >= deadline)
                    ):
                        return state, ""
                elif not self._queries.driven(run_id):
                    # A run settles before its lease is released: read it again, then the lease
                    state = self._queries.state(run_id)
                    if state.settled:
                        continue
                    if not self._queries.driven(run_id):
                        now = time.monotonic()
                        undriven_since = undriven_since or now
                        if self._left_to_others(run_id, state, now - undriven_since):
                            pass  # keep following
                        elif state.status is RunStatus.QUEUED:
                            return state, QUEUED_NOT_HELD
                        else:
                            return state, NOT_DRIVEN
                    else:
                        undriven_since = None
            except (StoreNotFound, StoreCorrupted):
                raise
            except StoreError as exc:  # a shared store's server away: ride it out
                if not self._shared or state is None or self._system.closed:
                    raise
                if deadline is not None and time.monotonic() >= deadline:
                    return state, ""
                log.info("wait_store_unavailable", run_id=run_id, error=str(exc))
                time.sleep(0.5)
                continue
            if deadline is not None and time.monotonic() >= deadline:
                return state, ""
            left = pause if deadline is None else deadline - time.monotonic()
            time.sleep(max(0.0, min(pause, left)))
            pause = min(pause * 1.5, self._longest_pause())
