"""The store port: every operation the actors and the runtime need of their log.

``EventStore`` is backend-neutral: its arguments and results are events, records, leases,
approval records, checkpoints and bytes, never a transaction. ``LmdbStore`` implements it
on one directory; a second backend is a new module implementing the same Protocol, held
to it by the one contract suite (``tests/store_contract.py``).

Every write is all-or-nothing, including the ones that touch several keys: ``start_run``
(the run's lease and its first events) and an ``append`` that carries approval records or
releases the lease. The contract suite holds every backend to that. Each operation is
shaped for a per-subject optimistic append plus key-value compare-and-set (DESIGN.md
section 8): an append is "publish after ``expected_seq``" on the run's subject (a stale
seq is ``ConcurrencyError``), fenced by the run's lease (a stale epoch is ``RunLocked``);
a lease, an approval decision, a snapshot or a checkpoint is one key changed if it still
holds what was read. A backend without multi-key transactions must make the extra keys
follow from the appended events (and rebuild them from the log) before it passes.

Writes return a ``Pending`` (the group-commit writer resolves it): ``wait()`` returns the
result or raises the write's error. ``durable`` writes are on disk when they resolve; the
others ride in the next commit (nobody waits on them; a ``callback`` hears of a failure).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from typing import Protocol, TypeVar, runtime_checkable

from foldloop.events._catalogue import KnownEvent
from foldloop.events._recorded import AnyEvent, Recorded
from foldloop.store._approvals import ApprovalChanges, ApprovalRecord
from foldloop.store._checkpoints import Checkpoint
from foldloop.store._framing import Lease
from foldloop.store._payloads import Payload, encode_all

__all__ = [
    "EventStore",
    "Listener",
    "OwnerHold",
    "Pending",
    "Snapshot",
    "RemoteCancel",
    "WorkItem",
    "WorkQueue",
    "append_events",
]

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)

Snapshot = tuple[int, int, bytes, list[bytes]]
"""(state_version, seq, state bytes, history chunks) of a run's latest snapshot."""
Listener = Callable[[list[Recorded]], None]
"""Told of every batch of records this process commits (on the writer's thread)."""


class Pending(Protocol[T_co]):
    """**Protocol:** a queued write; ``wait`` blocks until it is committed."""

    @property
    def done(self) -> bool:
        """True once the write is committed or refused."""
        ...

    @property
    def error(self) -> BaseException | None:
        """Why the write was refused (None while pending or once committed)."""
        ...

    def wait(self, timeout: float | None = None) -> T_co:
        """The write's result once committed; raises its error if it was refused."""
        ...


class OwnerHold(Protocol):
    """**Protocol:** a runtime's proof of life while it holds runs (``hold_owner``)."""

    def release(self) -> None:
        """The runtime closed cleanly: it holds nothing any more."""
        ...


class EventStore(Protocol):
    """**Protocol:** the log of runs, its leases, approvals, snapshots and checkpoints."""

    @property
    def readonly(self) -> bool:
        """True when opened for reading only (writes raise StoreError)."""
        ...

    @property
    def location(self) -> str:
        """Where the store is (a path, a URL): what reopens it from another process."""
        ...

    @property
    def max_event_bytes(self) -> int:
        """The most one encoded event may take here (``MAX_EVENT_BYTES``, or less where the
        store's transport says so): a model reply or tool result past it cannot be kept."""
        ...

    # -- appends ---------------------------------------------------------------------------

    def append(
        self,
        run_id: str,
        payloads: Sequence[Payload],
        *,
        expected_seq: int,
        lease: Lease | None = None,
        release: bool = False,
        approvals: ApprovalChanges | None = None,
        durable: bool = True,
        records: bool = True,
        callback: Callable[[Pending[list[Recorded]]], None] | None = None,
    ) -> Pending[list[Recorded]]:
        """Append ``payloads`` to the run after ``expected_seq``, atomically with the
        approval records they carry and (``release``) the release of ``lease``.

        ConcurrencyError when the run is not at ``expected_seq``; RunLocked when ``lease``
        is given and the run's lease is not that one (a fenced-off owner). Nothing of a
        refused append is written. The result is the records, or (``records=False``)
        possibly empty: the step path does not build them."""
        ...

    def start_run(
        self, run_id: str, payloads: Sequence[Payload], *, owner: str, release: bool = False
    ) -> Pending[int]:
        """Create the run: take its lease for ``owner`` and append its first events under
        it, atomically (and release the lease at once too with ``release``: a run that
        ends or parks on its first decision). Resolves to the lease's epoch.

        ConcurrencyError (actual seq > 0) when the run exists; RunLocked when a live
        owner holds its lease."""
        ...

    def import_run(
        self,
        run_id: str,
        payloads: Sequence[Payload],
        *,
        approvals: ApprovalChanges | None = None,
    ) -> Pending[None]:
        """Append a whole run (an export) under no lease, with the approval records it
        waits on; ConcurrencyError when the run exists. The payloads keep their own times.
        LMDB writes it all in one transaction; JetStream writes the log, then the records
        (a crash between them leaves them to the next runtime that takes the run: resume)."""
        ...

    # -- reads -----------------------------------------------------------------------------

    def head(self, run_id: str) -> int:
        """The run's last seq (0 when the run does not exist)."""
        ...

    def read(self, run_id: str, from_seq: int = 1, to_seq: int | None = None) -> list[Recorded]:
        """The run's records from ``from_seq`` to ``to_seq`` (inclusive), in seq order."""
        ...

    def read_events(self, run_id: str, from_seq: int = 1) -> tuple[list[AnyEvent], list[int]]:
        """The events of ``read(run_id, from_seq)`` and the time of each."""
        ...

    def consume_events(
        self,
        run_id: str,
        fn: Callable[[Iterator[tuple[AnyEvent, int]]], T],
        from_seq: int = 1,
    ) -> T:
        """``fn`` over the run's ``(event, at)`` pairs from ``from_seq``, read as it takes
        them (a fold that builds no list of the whole run). ``fn`` must only read."""
        ...

    def read_runs(self, starts: dict[str, int]) -> dict[str, tuple[list[AnyEvent], list[int]]]:
        """``read_events`` of several runs at once (``run_id -> from_seq``)."""
        ...

    def run_ids(self) -> list[str]:
        """Every run in the store, sorted by id."""
        ...

    def verify_chain(self, run_id: str) -> int:
        """Check the run's stored integrity whole; its length, or CorruptRecord."""
        ...

    def read_all(self, from_position: int = 1, limit: int | None = None) -> list[Recorded]:
        """Records of every run in log order from ``from_position`` (1-based, gapless)."""
        ...

    def last_position(self) -> int:
        """The position of the log's last record (0 when empty)."""
        ...

    def add_listener(self, fn: Listener) -> Callable[[], None]:
        """Be told of every batch this process commits; returns the remover."""
        ...

    # -- leases ----------------------------------------------------------------------------

    def acquire_lease(self, run_id: str, owner: str) -> Pending[int]:
        """Take the run for ``owner`` (durably) unless a live owner holds it (RunLocked);
        resolves to the new epoch, one more than any before."""
        ...

    def release_lease(self, run_id: str, lease: Lease, *, durable: bool = False) -> Pending[bool]:
        """Give the run up if ``lease`` still holds it; resolves to whether it did."""
        ...

    def lease(self, run_id: str) -> Lease | None:
        """Who holds the run (owner '' once released); None if nobody ever did."""
        ...

    def leases(self) -> dict[str, Lease]:
        """Every run's lease, read at once (a store-wide scan such as ``recover()`` reads
        them so, not one by one); a damaged one is left out: ``lease`` of its run says so."""
        ...

    def hold_owner(self, owner: str) -> OwnerHold:
        """Announce ``owner`` alive until the hold is released or the process dies."""
        ...

    def owner_alive(self, owner: str) -> bool:
        """True while ``owner``'s hold is kept by a live process."""
        ...

    # -- the approvals table ---------------------------------------------------------------

    def decide_approval(
        self, record: ApprovalRecord, *, approved: bool, by: str, note: str, now: int
    ) -> Pending[ApprovalRecord]:
        """Decide a pending request (exactly one racing decider wins; the others get
        ApprovalError); a request past its deadline at ``now`` is marked expired instead.
        Resolves to the stored record."""
        ...

    def expire_approval(self, record: ApprovalRecord, *, now: int) -> Pending[ApprovalRecord]:
        """Mark a pending request past its deadline expired (ApprovalError if decided)."""
        ...

    def approval(self, run_id: str, call_id: str) -> ApprovalRecord | None:
        """One approval record."""
        ...

    def approval_by_token(self, token_digest: str) -> ApprovalRecord | None:
        """The current record of the request a token's digest was issued for."""
        ...

    def approvals(self) -> list[ApprovalRecord]:
        """Every approval record (pending, decided, expired; applied or not)."""
        ...

    def open_approvals(self) -> list[ApprovalRecord]:
        """Records not yet applied to their run's log (pending or freshly decided)."""
        ...

    def due_approvals(self, now: int) -> list[ApprovalRecord]:
        """Open records that need carrying into their run: decided, or past deadline."""
        ...

    # -- snapshots and checkpoints ---------------------------------------------------------

    def put_snapshot(
        self, run_id: str, *, seq: int, state_version: int, state: bytes, chunks: Sequence[bytes]
    ) -> Pending[bool]:
        """Keep the run's state at ``seq`` if the run's head is still at ``seq`` (resolves
        to whether it was kept; never durable). ``chunks`` are the history chunks, which
        never change once full: only those not stored yet are read from the sequence."""
        ...

    def snapshot(self, run_id: str) -> Snapshot | None:
        """(state_version, seq, state, chunks) of the run's latest snapshot."""
        ...

    def put_checkpoint(
        self, checkpoint: Checkpoint, *, advance: bool = True, durable: bool = False
    ) -> Pending[bool]:
        """Store a projection's checkpoint; with ``advance``, only if not behind the
        stored one of the same version. Resolves to whether it was written."""
        ...

    def delete_checkpoint(self, name: str) -> Pending[None]:
        """Forget projection ``name``'s checkpoint (durably)."""
        ...

    def checkpoint(self, name: str) -> Checkpoint | None:
        """Projection ``name``'s checkpoint (StoreError when it does not decode)."""
        ...

    def checkpoints(self) -> list[Checkpoint]:
        """Every stored checkpoint that decodes."""
        ...

    def writes_together(self) -> AbstractContextManager[None]:
        """A block in which this thread begins many writes before it waits on them (many
        runs' starts): a store may hold back their commits so that they share them (LMDB
        does: a few commits, not one each). Each write lands or fails as it would outside
        the block; waiting inside it is fine."""
        ...

    def flush(self, timeout: float) -> bool:
        """Wait until every write submitted so far is stored or refused (a queued,
        non-durable one included); False if some were not within ``timeout`` s."""
        ...

    def close(self) -> None:
        """Commit what is queued and let the store go."""
        ...


class WorkItem(Protocol):
    """**Protocol:** a queued run taken from a ``WorkQueue``."""

    @property
    def run_id(self) -> str:
        """The run to start."""
        ...

    def done(self) -> None:
        """The run is taken (its lease held here): the queue forgets the item."""
        ...

    def retry(self) -> None:
        """Not taken: the queue offers the item again (to any taker) soon."""
        ...


@runtime_checkable
class WorkQueue(Protocol):
    """**Protocol:** a queue of runs to start, shared by every runtime of a store (a store
    that has one queues every spawn on it, and runtimes with agents take from it)."""

    def enqueue(self, agent: str, run_ids: Sequence[str]) -> None:
        """Queue runs of ``agent`` (recorded queued, lease released), durably, in order."""
        ...

    def take_work(self, agents: Sequence[str], limit: int, timeout: float) -> list[WorkItem]:
        """Up to ``limit`` queued runs of these agents, waiting up to ``timeout`` seconds
        for the first; each must be ``done`` or ``retry``."""
        ...


@runtime_checkable
class RemoteCancel(Protocol):
    """**Protocol:** cancels carried to whichever runtime drives a run, on a store shared
    by many machines (the cancelled run's own log records the cancel, as always)."""

    def serve_cancels(self, handler: Callable[[str, str], bool]) -> Callable[[], None]:
        """Hear cancels for runs driven here: ``handler(run_id, reason)`` returns True when
        it drives the run and passed the cancel on. Returns the stopper."""
        ...

    def ask_cancel(self, run_id: str, reason: str) -> bool:
        """True once the runtime driving ``run_id`` took the cancel; False if none did."""
        ...


def append_events(
    store: EventStore,
    run_id: str,
    events: Sequence[KnownEvent],
    *,
    expected_seq: int,
    at: int,
    lease: Lease | None = None,
) -> list[Recorded]:
    """Append ``events`` decided at ``at`` and wait until they are durable."""
    return store.append(
        run_id, encode_all(events, at), expected_seq=expected_seq, lease=lease
    ).wait()
