"""WriteTxn: what a write op sees, one LMDB write transaction plus the store's rules.

Appends check the expected seq and the lease epoch, number a new run, seal each append as
one stored value chained to the run's previous one, and remember the new events for the
unindexed tail; approvals, leases, snapshots and projection checkpoints are written
through it too, so whatever belongs together commits together. It works through the
store's parts (``WriteParts``), never through the store itself.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from foldloop.errors import ConcurrencyError
from foldloop.events._recorded import Recorded
from foldloop.store._approvals import ApprovalChanges, ApprovalRecord
from foldloop.store._checkpoints import Checkpoint
from foldloop.store._env import Tables
from foldloop.store._framing import (
    Head,
    Lease,
    batch_frame,
    index_key,
    index_value,
    pack_position,
    seal,
    steps_between,
)
from foldloop.store._layout import (
    INDEXED_KEY,
    Payload,
    TailEntry,
    index_ranges,
    joined,
    last_index_entry,
    last_index_range,
    value_groups,
)
from foldloop.store._log_reader import LogReader
from foldloop.store._mapped import MappedEnv
from foldloop.store._run_numbers import RunNumbers
from foldloop.store._tables import SideTables
from foldloop.store._tail import TailCache

__all__ = ["Append", "WriteParts", "WriteTxn"]


@dataclass(frozen=True, slots=True)
class WriteParts:
    """What a write transaction works with: the store's parts, each through its methods."""

    env: MappedEnv
    tables: Tables
    reader: LogReader
    tail: TailCache
    numbers: RunNumbers
    side: SideTables
    owner_alive: Callable[[str], bool]
    index_every: int
    listeners: Sequence[object]
    """Who listens to commits (appends build their records while anyone does)."""


class _Savepoint:
    """What an op may change of a WriteTxn's bookkeeping, as it was when the op began."""

    __slots__ = ("appended", "heads", "new", "next", "numbered")

    def __init__(self, next_position: int, new: int, appended: int) -> None:
        self.next = next_position
        self.new = new
        self.appended = appended
        self.heads: dict[str, Head | None] = {}
        self.numbered: list[str] = []


class _OpTxn:
    """A running op's transaction: reads see what the op wrote so far, and its first write
    begins the child transaction (of the shared one) that keeps or drops the op whole.

    An op refused before it writes (a stale seq, a lease held) so leaves nothing to undo:
    py-lmdb's abort of a write transaction waits until no other thread of the process is
    inside an LMDB call, which a process full of readers may not allow for seconds while
    it holds LMDB's write lock and every other process's writes wait for it.
    """

    __slots__ = ("_child", "_env", "_parent", "_reading")

    def __init__(self, env: MappedEnv, parent: Any) -> None:
        self._env = env
        self._parent = parent
        self._child: Any = None
        self._reading: Any = parent

    def get(self, key: bytes, default: Any = None, db: Any = None) -> Any:
        return self._reading.get(key, default, db=db)

    def cursor(self, db: Any = None) -> Any:
        """A cursor to read with; close it before the op's first write (a parent's cursor
        open then is carried into the child, and copied into every later op's child until
        the transaction ends)."""
        return self._reading.cursor(db=db)

    def put(self, key: bytes, value: bytes, *, db: Any = None, append: bool = False) -> bool:
        return bool(self._writing().put(key, value, db=db, append=append))

    def delete(self, key: bytes, *, db: Any = None) -> bool:
        return bool(self._writing().delete(key, db=db))

    def _writing(self) -> Any:
        if self._child is None:
            self._child = self._reading = self._env.begin(write=True, parent=self._parent)
        return self._child

    def keep(self) -> None:
        """The op's writes stay (they commit with the shared transaction)."""
        if self._child is not None:
            self._child.commit()

    def drop(self) -> None:
        """The op's writes go."""
        if self._child is not None:
            self._child.abort()


class WriteTxn:
    """What a write op sees: one LMDB write transaction plus the store's rules."""

    def __init__(self, parts: WriteParts) -> None:
        self._parts = parts
        self._env = env = parts.env
        env.hold()
        self._released = False
        try:
            self._parent = env.begin(write=True)
        except BaseException:
            self._release()
            raise
        self.txn: Any = self._parent
        """Where reads and writes go: the running op's own ``_OpTxn`` while an op runs."""
        self.appended: list[Recorded] = []
        try:
            # Read from what is committed, every time: another process may have written
            # since this one last did, and LMDB says so in nothing cheaper than its data.
            reader, parent = parts.reader, self._parent
            self._next = reader.last_position(parent) + 1
            parts.tail.sync(reader.indexed(parent), lambda after: reader.scan(parent, after))
        except BaseException:
            self.abort()
            raise
        # The step path's collaborators, looked up once a transaction, not once an append.
        self._tail_head = parts.tail.head
        self._known_numbers = parts.numbers.known
        self._log_db = parts.tables.log
        self._heads: dict[str, Head] = {}
        self._numbered: dict[str, int] = {}  # run numbers given in this transaction
        self._new: list[TailEntry] = []
        self._force_index = False
        self._op: _Savepoint | None = None
        self._alive: dict[str, bool] = {}

    # -- one op at a time, each all or nothing -----------------------------------------------

    def begin_op(self) -> None:
        """Start an op: its writes go to a child transaction until ``end_op``/``undo_op``."""
        self.txn = _OpTxn(self._env, self._parent)
        self._op = _Savepoint(self._next, len(self._new), len(self.appended))

    def end_op(self) -> None:
        """Keep the op's writes (they commit with the transaction)."""
        op_txn, self.txn, self._op = self.txn, self._parent, None
        op_txn.keep()

    def undo_op(self) -> None:
        """Drop everything the op wrote, in LMDB and in this transaction's bookkeeping, so
        that an op which raises part-way leaves nothing behind."""
        op_txn, self.txn, op, self._op = self.txn, self._parent, self._op, None
        if op_txn is not self._parent:
            op_txn.drop()
        if op is None:
            return
        self._next = op.next
        del self._new[op.new :]
        del self.appended[op.appended :]
        for run_id, head in op.heads.items():
            if head is None:
                self._heads.pop(run_id, None)
            else:
                self._heads[run_id] = head
        for run_id in op.numbered:
            self._numbered.pop(run_id, None)

    def index_now(self) -> None:
        """Write the tail's index entries in this transaction (used on close)."""
        self._force_index = True

    def commit(self) -> None:
        parts, tail = self._parts, self._parts.tail
        try:
            pending = len(tail) + len(self._new)
            indexed = pending and (pending >= parts.index_every or self._force_index)
            if indexed:
                self._write_index((*tail.entries(), *self._new))
                self._parent.put(INDEXED_KEY, pack_position(self._next - 1), db=parts.tables.meta)
            self._parent.commit()
            for run_id, number in self._numbered.items():
                parts.numbers.remember(run_id, number)
            if indexed:  # the whole tail as this cache knew it: its heads stay true
                tail.restart(self._next - 1, self._heads)
            elif self._new:
                tail.extend(self._new, self._heads, self._next - 1)
        finally:
            self._release()

    def _write_index(self, tail: Sequence[TailEntry]) -> None:
        """Index the tail: one entry per stretch of a run's records at consecutive seqs,
        extending the run's last entry when the stretch continues it."""
        put, index_db = self.txn.put, self._parts.tables.index
        cur = self.txn.cursor(db=index_db)
        for run_id, first_seq, positions, chain in index_ranges(tail):
            last = last_index_range(cur, run_id)
            merged = joined(last, first_seq, positions)
            if last is not None and merged is not None:
                count, last_position, steps = merged
                value = index_value(last.first_position, count, chain, last_position, steps)
                put(index_key(run_id, last.first_seq), value, db=index_db)
            else:
                steps = steps_between(positions)
                value = index_value(positions[0], len(positions), chain, positions[-1], steps)
                put(index_key(run_id, first_seq), value, db=index_db)

    def abort(self) -> None:
        """Drop the whole transaction (safe after a failed commit, and twice)."""
        try:
            if self.txn is not self._parent:
                self.txn.drop()
            self._parent.abort()
        finally:
            self._release()

    def _release(self) -> None:
        # Exactly once: a failed commit is followed by an abort, and a reader count that
        # went below zero would make the next map resize wait for ever.
        if not self._released:
            self._released = True
            self._env.let_go()

    # -- reads inside the transaction ----------------------------------------------------

    def head(self, run_id: str) -> Head:
        head = self._heads.get(run_id) or self._tail_head(run_id)
        if head is not None:
            return head
        return last_index_entry(self.txn.cursor(db=self._parts.tables.index), run_id)

    def run_number(self, run_id: str) -> int:
        """The run's number, given now (the next free one) on its first append. Numbers
        given here reach the store's cache only once this transaction commits, so an
        aborted one never leaves a number two runs could both be given."""
        number = (
            self._known_numbers.get(run_id)
            or self._numbered.get(run_id)
            or self._parts.numbers.stored(self.txn, run_id)
        )
        if number is not None:
            return number
        number = self._parts.numbers.give(self.txn, run_id)
        if self._op is not None:
            self._op.numbered.append(run_id)
        self._numbered[run_id] = number
        return number

    def lease(self, run_id: str) -> Lease | None:
        return self._parts.side.lease(self.txn, run_id)

    # -- appends ---------------------------------------------------------------------------

    def check_lease(self, run_id: str, owner: str, epoch: int) -> None:
        self._parts.side.check_lease(self.txn, run_id, owner, epoch)

    def append(
        self,
        run_id: str,
        payloads: Sequence[Payload],
        *,
        expected_seq: int,
        owner: str | None = None,
        epoch: int | None = None,
        records: bool = True,
    ) -> list[Recorded]:
        """Append encoded events after ``expected_seq``; check everything before writing.

        Returns the Recorded events unless ``records`` is False and nobody listens to
        commits (the step path needs neither, and skips building them).
        """
        head = self.head(run_id)
        if head.seq != expected_seq:
            raise ConcurrencyError(run_id, expected_seq, head.seq)
        if owner is not None and epoch is not None:
            self.check_lease(run_id, owner, epoch)
        put, log_db, new = self.txn.put, self._log_db, self._new
        keep = records or bool(self._parts.listeners)
        number = self.run_number(run_id)
        prev = head.hash
        seq = head.seq
        out: list[Recorded] = []
        for batch in value_groups(payloads):
            position = self._next
            value, prev = seal(batch_frame(number, seq + 1, position, batch), prev)
            put(pack_position(position), value, db=log_db, append=True)
            for event, _raw, at in batch:
                seq += 1
                new.append((run_id, seq, self._next, prev))
                if keep:
                    out.append(
                        Recorded(run_id=run_id, seq=seq, position=self._next, at=at, event=event)
                    )
                self._next += 1
        self._remember_head(run_id)
        self._heads[run_id] = Head(seq, prev)
        self.appended.extend(out)
        return out

    def _remember_head(self, run_id: str) -> None:
        """Note the run's head as it was before the running op, once, for ``undo_op``."""
        op = self._op
        if op is not None and run_id not in op.heads:
            op.heads[run_id] = self._heads.get(run_id)

    # -- leases ----------------------------------------------------------------------------

    def put_lease(self, run_id: str, lease: Lease) -> None:
        self._parts.side.put_lease(self.txn, run_id, lease)

    def acquire_lease(self, run_id: str, owner: str) -> int:
        """Take the run for ``owner`` unless a live owner holds it; returns the new epoch."""
        return self._parts.side.acquire_lease(self.txn, run_id, owner, self._owner_alive)

    def _owner_alive(self, owner: str) -> bool:
        """Whether ``owner`` lives, asked once a transaction: a batch taking up a dead
        runtime's runs asks once, not once a run (each asking is syscalls, so GIL hand-offs
        among the process's threads, while it holds LMDB's write lock)."""
        alive = self._alive.get(owner)
        if alive is None:
            alive = self._alive[owner] = self._parts.owner_alive(owner)
        return alive

    def release_lease(self, run_id: str, owner: str, epoch: int) -> bool:
        return self._parts.side.release_lease(self.txn, run_id, owner, epoch)

    # -- approvals ---------------------------------------------------------------------------

    def approval(self, run_id: str, call_id: str) -> ApprovalRecord | None:
        return self._parts.side.approval(self.txn, run_id, call_id)

    def put_approval(self, record: ApprovalRecord) -> None:
        self._parts.side.put_approval(self.txn, record)

    def find_approval(self, token_digest: str) -> ApprovalRecord | None:
        return self._parts.side.approval_by_token(self.txn, token_digest)

    def decide_approval(
        self, record: ApprovalRecord, *, approved: bool, by: str, note: str, now: int
    ) -> ApprovalRecord:
        """Record a decision if the request is still pending and unexpired (``SideTables``)."""
        return self._parts.side.decide_approval(
            self.txn, record, approved=approved, by=by, note=note, now=now
        )

    def mark_applied(self, run_id: str, call_id: str, seq: int = 0) -> None:
        self._parts.side.mark_applied(self.txn, run_id, call_id, seq)

    def apply_approvals(self, run_id: str, changes: ApprovalChanges) -> None:
        """The approval records that go with an append: new requests, applied decisions."""
        for record in changes.requests:
            self.put_approval(record)
        for call_id, seq in changes.applied:
            self.mark_applied(run_id, call_id, seq)

    # -- snapshots, checkpoints, meta ------------------------------------------------------

    def snapshot_chunks(self, run_id: str) -> int:
        """How many history chunks the run's stored snapshot has (0 without one)."""
        return self._parts.side.snapshot_chunks(self.txn, run_id)

    def put_snapshot(
        self,
        run_id: str,
        state_version: int,
        seq: int,
        state: bytes,
        *,
        new_chunks: Sequence[bytes] = (),
        first_chunk: int = 0,
    ) -> None:
        """Store a snapshot; ``new_chunks`` are the history chunks from ``first_chunk`` on
        (the ones before are stored already and never change)."""
        self._parts.side.put_snapshot(
            self.txn,
            run_id,
            state_version,
            seq,
            state,
            new_chunks=new_chunks,
            first_chunk=first_chunk,
        )

    def put_meta(self, key: str, value: bytes) -> None:
        self._parts.side.put_meta(self.txn, key, value)

    def put_checkpoint(self, checkpoint: Checkpoint, *, advance: bool = True) -> bool:
        """Store a projection checkpoint; with ``advance``, only if it is not behind the
        stored one (same version). Returns whether it was written."""
        return self._parts.side.put_checkpoint(self.txn, checkpoint, advance=advance)

    def delete_checkpoint(self, name: str) -> None:
        self._parts.side.delete_checkpoint(self.txn, name)


class Append:
    """An append as a write op's function: run in the group commit's transaction, it checks
    and writes the events, the approval records they carry and the lease's release. An
    object, not a closure: a fleet's thousands of appends wait for a commit at once, and
    each closure cell would be one more object for the garbage collector to scan."""

    __slots__ = ("approvals", "expected_seq", "lease", "payloads", "records", "release", "run_id")

    def __init__(
        self,
        run_id: str,
        payloads: Sequence[Payload],
        *,
        expected_seq: int,
        lease: Lease | None,
        release: bool,
        approvals: ApprovalChanges | None,
        records: bool,
    ) -> None:
        self.run_id = run_id
        self.payloads = payloads
        self.expected_seq = expected_seq
        self.lease = lease
        self.release = release
        self.approvals = approvals
        self.records = records

    def __call__(self, w: WriteTxn) -> list[Recorded]:
        run_id, lease = self.run_id, self.lease
        owner, epoch = (lease.owner, lease.epoch) if lease is not None else (None, None)
        out = w.append(
            run_id,
            self.payloads,
            expected_seq=self.expected_seq,
            owner=owner,
            epoch=epoch,
            records=self.records,
        )
        if self.approvals:
            w.apply_approvals(run_id, self.approvals)
        if self.release and lease is not None:
            w.release_lease(run_id, lease.owner, lease.epoch)
        return out
