"""WriteTxn: what a write op sees, one LMDB write transaction plus the store's rules.

Appends check the expected seq and the lease epoch, number a new run, seal each append as
one stored value chained to the run's previous one, and remember the new events for the
unindexed tail; approvals, leases, snapshots and
projection checkpoints are written through it too, so whatever belongs together commits
together.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import msgspec

from foldloop.errors import ApprovalError, ConcurrencyError, RunLocked
from foldloop.events.recorded import Recorded
from foldloop.store.approvals import ApprovalRecord, approval_key
from foldloop.store.checkpoints import Checkpoint, decode_checkpoint, encode_checkpoint
from foldloop.store.framing import (
    Head,
    Lease,
    batch_frame,
    index_key,
    index_value,
    pack_position,
    pack_run,
    seal,
    steps_between,
    unpack_run,
)
from foldloop.store.layout import (
    APPROVAL_DECODER,
    ENCODER,
    INDEXED_KEY,
    LEASE_DECODER,
    SNAPSHOT_DECODER,
    Payload,
    TailEntry,
    index_ranges,
    iso,
    joined,
    last_index_entry,
    last_index_range,
    value_groups,
)
from foldloop.store.owners import owner_alive

if TYPE_CHECKING:
    from foldloop.store.lmdb_store import LmdbStore

__all__ = ["WriteTxn"]


class _Savepoint:
    """What an op may change of a WriteTxn's bookkeeping, as it was when the op began."""

    __slots__ = ("appended", "heads", "new", "next", "numbered")

    def __init__(self, next_position: int, new: int, appended: int) -> None:
        self.next = next_position
        self.new = new
        self.appended = appended
        self.heads: dict[str, Head | None] = {}
        self.numbered: list[str] = []


class WriteTxn:
    """What a write op sees: one LMDB write transaction plus the store's rules."""

    def __init__(self, store: LmdbStore) -> None:
        self.store = store
        self._resize = store._resize
        self._resize.acquire_shared()
        self._released = False
        try:
            self._parent = store._begin(write=True)
        except BaseException:
            self._release()
            raise
        self.txn = self._parent
        """Where writes go: the op's own child transaction while an op runs."""
        self.appended: list[Recorded] = []
        try:
            # Read from what is committed, every time: another process may have written
            # since this one last did, and LMDB says so in nothing cheaper than its data.
            self._next = store._last_position(self._parent) + 1
            store._sync_tail(self._parent)
        except BaseException:
            self.abort()
            raise
        self._heads: dict[str, Head] = {}
        self._numbered: dict[str, int] = {}  # run numbers given in this transaction
        self._new: list[TailEntry] = []
        self._force_index = False
        self._op: _Savepoint | None = None

    # -- one op at a time, each all or nothing -----------------------------------------------

    def begin_op(self) -> None:
        """Start an op: its writes go to a child transaction until ``end_op``/``undo_op``."""
        self.txn = self.store._begin(write=True, parent=self._parent)
        self._op = _Savepoint(self._next, len(self._new), len(self.appended))

    def end_op(self) -> None:
        """Keep the op's writes (they commit with the transaction)."""
        child, self.txn, self._op = self.txn, self._parent, None
        child.commit()

    def undo_op(self) -> None:
        """Drop everything the op wrote, in LMDB and in this transaction's bookkeeping, so
        that an op which raises part-way leaves nothing behind."""
        child, self.txn, op, self._op = self.txn, self._parent, self._op, None
        if child is not self._parent:
            child.abort()
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
        store = self.store
        try:
            pending = len(store._tail) + len(self._new)
            indexed = pending and (pending >= store.index_every or self._force_index)
            if indexed:
                self._write_index((*store._tail, *self._new))
                self._parent.put(INDEXED_KEY, pack_position(self._next - 1), db=store._meta)
            self._parent.commit()
            for run_id, number in self._numbered.items():
                store.remember_run(run_id, number)
            if indexed:
                store._reset_tail(self._next - 1)
            elif self._new:
                store._tail.extend(self._new)
                store._tail_heads.update(self._heads)
                store._tail_scanned = self._next - 1
                store._publish_tail()
        finally:
            self._release()

    def _write_index(self, tail: Sequence[TailEntry]) -> None:
        """Index the tail: one entry per stretch of a run's records at consecutive seqs,
        extending the run's last entry when the stretch continues it."""
        put, index_db = self.txn.put, self.store._index
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
                self.txn.abort()
            self._parent.abort()
        finally:
            self._release()

    def _release(self) -> None:
        # Exactly once: a failed commit is followed by an abort, and a reader count that
        # went below zero would make the next map resize wait for ever.
        if not self._released:
            self._released = True
            self._resize.release_shared()

    # -- reads inside the transaction ----------------------------------------------------

    def head(self, run_id: str) -> Head:
        head = self._heads.get(run_id) or self.store._tail_heads.get(run_id)
        if head is not None:
            return head
        return last_index_entry(self.txn.cursor(db=self.store._index), run_id)

    def run_number(self, run_id: str) -> int:
        """The run's number, given now (the next free one) on its first append. Numbers
        given here reach the store's cache only once this transaction commits, so an
        aborted one never leaves a number two runs could both be given."""
        number = self.store._numbers.get(run_id) or self._numbered.get(run_id)
        if number is not None:
            return number
        store, key = self.store, run_id.encode()
        raw = self.txn.get(key, db=store._run_numbers)
        if raw is not None:
            number = unpack_run(raw)
            store.remember_run(run_id, number)
            return number
        cur = self.txn.cursor(db=store._run_ids)
        number = unpack_run(cur.key()) + 1 if cur.last() else 1
        self.txn.put(key, pack_run(number), db=store._run_numbers)
        self.txn.put(pack_run(number), key, db=store._run_ids)
        if self._op is not None:
            self._op.numbered.append(run_id)
        self._numbered[run_id] = number
        return number

    def lease(self, run_id: str) -> Lease | None:
        raw = self.txn.get(run_id.encode(), db=self.store._leases)
        return None if raw is None else LEASE_DECODER.decode(raw)

    # -- writes --------------------------------------------------------------------------

    def check_lease(self, run_id: str, owner: str, epoch: int) -> None:
        lease = self.lease(run_id)
        if lease is None or lease.owner != owner or lease.epoch != epoch:
            now = "nobody" if lease is None or not lease.owner else f"owner {lease.owner}"
            held = 0 if lease is None else lease.epoch
            raise RunLocked(
                f"run {run_id!r} is now driven by {now} (epoch {held}); this runtime held "
                f"epoch {epoch} and was fenced off, so its append was refused"
            )

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
        put, log_db, new = self.txn.put, self.store._log, self._new
        keep = records or bool(self.store._listeners)
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

    def put_lease(self, run_id: str, lease: Lease) -> None:
        self.txn.put(run_id.encode(), ENCODER.encode(lease), db=self.store._leases)

    def acquire_lease(self, run_id: str, owner: str) -> int:
        """Take the run for ``owner`` unless a live owner holds it; returns the new epoch."""
        lease = self.lease(run_id)
        if (
            lease is not None
            and lease.owner
            and lease.owner != owner
            and owner_alive(self.store.owners_dir, lease.owner)
        ):
            raise RunLocked(
                f"run {run_id!r} is driven by a live runtime (owner {lease.owner}, epoch "
                f"{lease.epoch}); stop that runtime or let it finish first"
            )
        epoch = (lease.epoch if lease is not None else 0) + 1
        self.put_lease(run_id, Lease(owner, epoch))
        return epoch

    def release_lease(self, run_id: str, owner: str, epoch: int) -> bool:
        lease = self.lease(run_id)
        if lease is None or lease.owner != owner or lease.epoch != epoch:
            return False
        self.put_lease(run_id, Lease("", epoch))
        return True

    # -- approvals ---------------------------------------------------------------------------

    def approval(self, run_id: str, call_id: str) -> ApprovalRecord | None:
        raw = self.txn.get(approval_key(run_id, call_id), db=self.store._approvals)
        return None if raw is None else APPROVAL_DECODER.decode(raw)

    def put_approval(self, record: ApprovalRecord) -> None:
        key = approval_key(record.run_id, record.call_id)
        self.txn.put(key, ENCODER.encode(record), db=self.store._approvals)
        self.txn.put(record.token_digest.encode(), key, db=self.store._tokens)
        if record.applied:
            self.txn.delete(key, db=self.store._open)
        else:
            # status and deadline beside the key: the poller finds what is due without
            # decoding every pending request
            due = record.status.encode()[:1] + pack_position(record.expires_at)
            self.txn.put(key, due, db=self.store._open)

    def find_approval(self, token_digest: str) -> ApprovalRecord | None:
        key = self.txn.get(token_digest.encode(), db=self.store._tokens)
        if key is None:
            return None
        raw = self.txn.get(key, db=self.store._approvals)
        return None if raw is None else APPROVAL_DECODER.decode(raw)

    def decide_approval(
        self, record: ApprovalRecord, *, approved: bool, by: str, note: str, now: int
    ) -> ApprovalRecord:
        """Record a decision if the request is still pending and unexpired.

        Returns the stored record: decided, or marked expired (the caller reports that).
        Raises ApprovalError, writing nothing, when the request was already decided.
        """
        current = self.approval(record.run_id, record.call_id)
        if current is None or current.token_digest != record.token_digest:
            raise ApprovalError(
                f"no such approval request for run {record.run_id!r} call {record.call_id!r}"
            )
        if current.status != "pending":
            raise ApprovalError(
                f"the approval of run {current.run_id!r} call {current.call_id!r} was already "
                f"{current.status}"
                + (f" by {current.by!r}" if current.by else "")
                + (f" at {iso(current.decided_at)}" if current.decided_at else "")
                + (f" (seq {current.applied_seq} of the run)" if current.applied_seq else "")
            )
        if now >= current.expires_at:
            decided = msgspec.structs.replace(current, status="expired", decided_at=now)
        else:
            decided = msgspec.structs.replace(
                current,
                status="approved" if approved else "denied",
                by=by,
                note=note,
                decided_at=now,
            )
        self.put_approval(decided)
        return decided

    def mark_applied(self, run_id: str, call_id: str, seq: int = 0) -> None:
        current = self.approval(run_id, call_id)
        if current is not None and not current.applied:
            self.put_approval(msgspec.structs.replace(current, applied=True, applied_seq=seq))

    def snapshot_chunks(self, run_id: str) -> int:
        """How many history chunks the run's stored snapshot has (0 without one)."""
        raw = self.txn.get(run_id.encode(), db=self.store._snapshots)
        if raw is None:
            return 0
        try:
            return SNAPSHOT_DECODER.decode(raw)[3]
        except msgspec.MsgspecError:
            return 0

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
        key = run_id.encode()
        for i, chunk in enumerate(new_chunks, start=first_chunk):
            self.txn.put(key + b"\0" + i.to_bytes(4, "big"), chunk, db=self.store._chunks)
        count = first_chunk + len(new_chunks)
        self.txn.put(
            key, ENCODER.encode((state_version, seq, state, count)), db=self.store._snapshots
        )

    def put_meta(self, key: str, value: bytes) -> None:
        self.txn.put(key.encode(), value, db=self.store._meta)

    def put_checkpoint(self, checkpoint: Checkpoint, *, advance: bool = True) -> bool:
        """Store a projection checkpoint; with ``advance``, only if it is not behind the
        stored one (same version). Returns whether it was written."""
        key = checkpoint.name.encode()
        db = self.store._checkpoints
        if advance:
            raw = self.txn.get(key, db=db)
            if raw is not None:
                try:
                    current = decode_checkpoint(raw)
                except msgspec.DecodeError:
                    current = None
                if (
                    current is not None
                    and current.version == checkpoint.version
                    and current.position > checkpoint.position
                ):
                    return False
        self.txn.put(key, encode_checkpoint(checkpoint), db=db)
        return True

    def delete_checkpoint(self, name: str) -> None:
        self.txn.delete(name.encode(), db=self.store._checkpoints)
