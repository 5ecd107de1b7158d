"""Every write the runtime itself makes to the store, in one place.

The actors write their own steps; what the host's calls write (a run started, decisions
taken outside any actor, an imported run, an approval decided or expired) goes through
``RunWrites``, each as one write transaction.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Sequence
from contextlib import AbstractContextManager

import msgspec

from foldloop._approvals import approval_changes
from foldloop.core._batch import fold_events
from foldloop.core._commands import Command
from foldloop.core._effects import Decision
from foldloop.core._state import RunState
from foldloop.errors import ConcurrencyError, ConfigError
from foldloop.events._catalogue import ApprovalRequested, KnownEvent
from foldloop.events._recorded import Recorded
from foldloop.runtime._rules import evolve_all
from foldloop.store import ApprovalChanges, EventStore, Lease, Payload, Pending, encode_all
from foldloop.store._approvals import ApprovalRecord

__all__ = ["RunWrites", "together"]


def together(store: EventStore, writes: int) -> AbstractContextManager[None]:
    """Where a thread begins ``writes`` writes before it waits on them: sharing commits
    when there are several (``EventStore.writes_together``); one commits sooner alone."""
    return store.writes_together() if writes > 1 else contextlib.nullcontext()


class RunWrites:
    """The runtime's writes, as ``owner`` (the runtime whose leases they check)."""

    def __init__(self, store: EventStore, owner: str) -> None:
        self._store = store
        self._owner = owner

    def start(
        self, run_id: str, events: Sequence[KnownEvent], at: int, *, settles: bool
    ) -> Pending[int]:
        """Write a new run's first events under a fresh lease (released with them when
        they settle it at once); ``started`` waits for it. Several may be under way at
        once: they share commits."""
        return self._store.start_run(
            run_id, encode_all(events, at), owner=self._owner, release=settles
        )

    @staticmethod
    def started(run_id: str, pending: Pending[int]) -> int:
        """Wait for a ``start``: the lease's epoch once durable. Refuses a run id in use."""
        try:
            return pending.wait()
        except ConcurrencyError as exc:
            raise ConfigError(
                f"run {run_id!r} already exists",
                advice="spawn with another run_id (or, if it stopped resumable, rt.resume it)",
            ) from exc

    def append_decisions(
        self,
        state: RunState,
        steps: Sequence[tuple[Decision, Command]],
        epoch: int,
        *,
        release: bool = False,
    ) -> None:
        """Append decisions taken outside any actor (resume, approvals, cancel), one after
        another from ``state``, durably and as one append, with their approvals-table
        changes, and (``release``) the run's lease with them, when nothing follows them."""
        self.begin_decisions(state, steps, epoch, release=release).wait()

    def begin_decisions(
        self,
        state: RunState,
        steps: Sequence[tuple[Decision, Command]],
        epoch: int,
        *,
        release: bool = False,
    ) -> Pending[list[Recorded]]:
        """``append_decisions`` under way: its write, to wait on (several begun one after
        another share commits, ``together``)."""
        run_id, first_seq = state.run_id, state.seq
        payloads: list[Payload] = []
        changes = ApprovalChanges()
        for decision, command in steps:
            after = evolve_all(state, decision, command.now)
            events, now = decision.events, command.now
            payloads.extend(encode_all(events, now))
            step_changes = approval_changes(run_id, after, events, now, state.seq + 1)
            if step_changes is not None:
                changes = changes + step_changes
            state = after
        return self._store.append(
            run_id,
            payloads,
            expected_seq=first_seq,
            lease=Lease(self._owner, epoch),
            approvals=changes or None,
            release=release,
        )

    def import_run(self, target: str, events: Sequence[tuple[KnownEvent, int]]) -> None:
        """Append an exported run's events (each with its time) as the new run ``target``,
        with the approval requests it is parked on, decidable here by ids."""
        payloads = [p for event, at in events for p in encode_all([event], at)]
        approvals = _waited_on(target, events)
        try:
            self._store.import_run(target, payloads, approvals=approvals).wait()
        except ConcurrencyError as exc:
            raise ConfigError(
                f"run {target!r} already exists in this store",
                advice="import it under another id: import_jsonl(lines, run_id=NEW)",
            ) from exc

    def decide_approval(
        self, record: ApprovalRecord, *, approved: bool, by: str, note: str, now: int
    ) -> ApprovalRecord:
        """Check and record a decision in the approvals table (exactly one racing decider
        wins); returns the record as it stands after."""
        return self._store.decide_approval(
            record, approved=approved, by=by, note=note, now=now
        ).wait()

    def expire(self, record: ApprovalRecord, now: int) -> ApprovalRecord:
        """Mark a pending request expired (its deadline has passed)."""
        return self._store.expire_approval(record, now=now).wait()


def _waited_on(run_id: str, events: Sequence[tuple[KnownEvent, int]]) -> ApprovalChanges | None:
    """The approval records of the requests a run's log leaves it waiting on (the last
    request of each such call: a resume asks again with a new token), each at its own time
    and under a digest no token has: only its ids decide it. A token cannot travel with an
    export, since the log cannot say whose it is (a copy re-exported holds the original's
    digest)."""
    state = fold_events(run_id, iter(events), RunState(run_id=run_id))
    waiting = {c.call_id for c in state.calls if c.status == "awaiting_approval"}
    asked = {e.call_id: (e, at) for e, at in events if type(e) is ApprovalRequested}
    requests: list[ApprovalRecord] = []
    for call_id in sorted(waiting & asked.keys()):
        event, at = asked[call_id]
        unique = hashlib.sha256(f"{run_id}\0{call_id}".encode()).hexdigest()
        event = msgspec.structs.replace(event, token_digest=f"imported:{unique}")
        changes = approval_changes(run_id, state, [event], at)
        if changes is not None:
            requests += changes.requests
    return ApprovalChanges(requests=tuple(requests)) if requests else None
