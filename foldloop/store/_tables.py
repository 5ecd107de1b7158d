"""The side tables beside the log: leases, approvals, snapshots, checkpoints, meta.

Each operation takes the transaction to work in, so a write transaction puts what belongs
together (an append, its approval records, a lease release) into one commit, and a read
transaction sees them together.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import msgspec

from foldloop.errors import StoreError
from foldloop.store._approvals import ApprovalRecord, approval_key
from foldloop.store._checkpoints import Checkpoint, decode_checkpoint, encode_checkpoint
from foldloop.store._env import UNDECODABLE, Tables
from foldloop.store._framing import Lease, pack_position, unpack_position
from foldloop.store._layout import APPROVAL_DECODER, ENCODER, LEASE_DECODER, SNAPSHOT_DECODER
from foldloop.store._port import Snapshot
from foldloop.store._rules import (
    acquired,
    applied,
    check_fence,
    checkpoint_advances,
    decided,
    released,
)

__all__ = ["SideTables"]


def _chunk_key(key: bytes, i: int) -> bytes:
    return key + b"\0" + i.to_bytes(4, "big")


class SideTables:
    """Leases, approvals, snapshots, checkpoints and store-wide values, in a transaction."""

    def __init__(self, tables: Tables) -> None:
        self._t = tables

    # -- leases ----------------------------------------------------------------------------

    def lease(self, txn: Any, run_id: str) -> Lease | None:
        """Who holds the run (owner '' when nobody)."""
        raw = txn.get(run_id.encode(), db=self._t.leases)
        return None if raw is None else LEASE_DECODER.decode(raw)

    def leases(self, txn: Any) -> dict[str, Lease]:
        """Every run's lease, leaving out one that does not decode (``lease`` raises there)."""
        out: dict[str, Lease] = {}
        for key, raw in txn.cursor(db=self._t.leases):
            try:
                out[bytes(key).decode()] = LEASE_DECODER.decode(raw)
            except UNDECODABLE:
                continue
        return out

    def put_lease(self, txn: Any, run_id: str, lease: Lease) -> None:
        txn.put(run_id.encode(), ENCODER.encode(lease), db=self._t.leases)

    def check_lease(self, txn: Any, run_id: str, owner: str, epoch: int) -> None:
        """Raise RunLocked unless ``owner`` holds the run at ``epoch`` (the fence)."""
        check_fence(run_id, self.lease(txn, run_id), owner, epoch)

    def acquire_lease(
        self, txn: Any, run_id: str, owner: str, owner_alive: Callable[[str], bool]
    ) -> int:
        """Take the run for ``owner`` unless a live owner holds it; returns the new epoch."""
        lease = acquired(run_id, self.lease(txn, run_id), owner, owner_alive)
        self.put_lease(txn, run_id, lease)
        return lease.epoch

    def release_lease(self, txn: Any, run_id: str, owner: str, epoch: int) -> bool:
        """Give the run up if ``owner`` still holds it at ``epoch``; False if not."""
        lease = released(self.lease(txn, run_id), owner, epoch)
        if lease is not None:
            self.put_lease(txn, run_id, lease)
        return lease is not None

    # -- approvals -------------------------------------------------------------------------

    def approval(self, txn: Any, run_id: str, call_id: str) -> ApprovalRecord | None:
        raw = txn.get(approval_key(run_id, call_id), db=self._t.approvals)
        return None if raw is None else APPROVAL_DECODER.decode(raw)

    def approval_by_token(self, txn: Any, token_digest: str) -> ApprovalRecord | None:
        """The current record of the request a token's digest was issued for."""
        key = txn.get(token_digest.encode(), db=self._t.tokens)
        raw = None if key is None else txn.get(key, db=self._t.approvals)
        return None if raw is None else APPROVAL_DECODER.decode(raw)

    def approvals(self, txn: Any) -> list[ApprovalRecord]:
        return [APPROVAL_DECODER.decode(v) for _k, v in txn.cursor(db=self._t.approvals)]

    def open_approvals(self, txn: Any, *, due_by: int | None = None) -> list[ApprovalRecord]:
        """Records not yet applied to their run's log; with ``due_by``, only those decided
        or past their deadline at that time."""
        out = []
        for key, due in txn.cursor(db=self._t.approvals_open):
            if due_by is not None and due[:1] == b"p" and unpack_position(due[1:9]) > due_by:
                continue
            raw = txn.get(key, db=self._t.approvals)
            if raw is not None:
                out.append(APPROVAL_DECODER.decode(raw))
        return out

    def put_approval(self, txn: Any, record: ApprovalRecord) -> None:
        key = approval_key(record.run_id, record.call_id)
        txn.put(key, ENCODER.encode(record), db=self._t.approvals)
        txn.put(record.token_digest.encode(), key, db=self._t.tokens)
        if record.applied:
            txn.delete(key, db=self._t.approvals_open)
        else:
            # status and deadline beside the key: the poller finds what is due without
            # decoding every pending request
            due = record.status.encode()[:1] + pack_position(record.expires_at)
            txn.put(key, due, db=self._t.approvals_open)

    def decide_approval(
        self, txn: Any, record: ApprovalRecord, *, approved: bool, by: str, note: str, now: int
    ) -> ApprovalRecord:
        """Record a decision if the request is still pending and unexpired (``decided``).

        Returns the stored record: decided, or marked expired (the caller reports that).
        Raises ApprovalError, writing nothing, when the request was already decided.
        """
        current = self.approval(txn, record.run_id, record.call_id)
        stored = decided(current, record, approved=approved, by=by, note=note, now=now)
        self.put_approval(txn, stored)
        return stored

    def mark_applied(self, txn: Any, run_id: str, call_id: str, seq: int = 0) -> None:
        """The run's log holds the decision now (at ``seq``, when known)."""
        record = applied(self.approval(txn, run_id, call_id), seq)
        if record is not None:
            self.put_approval(txn, record)

    # -- snapshots -------------------------------------------------------------------------

    def snapshot(self, txn: Any, run_id: str) -> Snapshot | None:
        key = run_id.encode()
        raw = txn.get(key, db=self._t.snapshots)
        if raw is None:
            return None
        try:
            version, seq, state, count = SNAPSHOT_DECODER.decode(raw)
        except msgspec.MsgspecError:
            return None  # not a snapshot this foldloop wrote: a cache, rebuilt from the log
        chunks = []
        for i in range(count):
            chunk = txn.get(_chunk_key(key, i), db=self._t.history_chunks)
            if chunk is None:
                return None
            chunks.append(bytes(chunk))
        return version, seq, state, chunks

    def snapshot_chunks(self, txn: Any, run_id: str) -> int:
        """How many history chunks the run's stored snapshot has (0 without one)."""
        raw = txn.get(run_id.encode(), db=self._t.snapshots)
        if raw is None:
            return 0
        try:
            return int(SNAPSHOT_DECODER.decode(raw)[3])
        except msgspec.MsgspecError:
            return 0

    def put_snapshot(
        self,
        txn: Any,
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
            txn.put(_chunk_key(key, i), chunk, db=self._t.history_chunks)
        count = first_chunk + len(new_chunks)
        txn.put(key, ENCODER.encode((state_version, seq, state, count)), db=self._t.snapshots)

    # -- checkpoints -----------------------------------------------------------------------

    def checkpoint(self, txn: Any, name: str) -> Checkpoint | None:
        """The stored checkpoint of projection ``name``; StoreError when it does not decode."""
        raw = txn.get(name.encode(), db=self._t.checkpoints)
        if raw is None:
            return None
        try:
            return decode_checkpoint(bytes(raw))
        except msgspec.DecodeError as exc:
            raise StoreError(
                f"the checkpoint of projection {name!r} is unreadable ({exc}); "
                "re-attach it with reset=True to rebuild it from the log"
            ) from None

    def checkpoints(self, txn: Any) -> list[Checkpoint]:
        """Every stored checkpoint that decodes, by name."""
        out = []
        for _key, raw in txn.cursor(db=self._t.checkpoints):
            try:
                out.append(decode_checkpoint(raw))
            except msgspec.DecodeError:
                continue
        return out

    def put_checkpoint(self, txn: Any, checkpoint: Checkpoint, *, advance: bool = True) -> bool:
        """Store a projection checkpoint; with ``advance``, only if it is not behind the
        stored one (same version). Returns whether it was written."""
        key = checkpoint.name.encode()
        if advance:
            raw = txn.get(key, db=self._t.checkpoints)
            try:
                current = None if raw is None else decode_checkpoint(raw)
            except msgspec.DecodeError:
                current = None
            if not checkpoint_advances(current, checkpoint):
                return False
        txn.put(key, encode_checkpoint(checkpoint), db=self._t.checkpoints)
        return True

    def delete_checkpoint(self, txn: Any, name: str) -> None:
        txn.delete(name.encode(), db=self._t.checkpoints)

    # -- store-wide values -----------------------------------------------------------------

    def meta(self, txn: Any, key: str) -> bytes | None:
        raw = txn.get(key.encode(), db=self._t.meta)
        return None if raw is None else bytes(raw)

    def put_meta(self, txn: Any, key: str, value: bytes) -> None:
        txn.put(key.encode(), value, db=self._t.meta)
