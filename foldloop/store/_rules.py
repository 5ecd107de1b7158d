"""The rules of the side tables, as pure functions every backend applies the same way.

A lease, an approval record or a checkpoint changes only when it still holds what was
read: LMDB reads and writes it in one transaction, JetStream's key-value buckets by
revision. What the new value is (or why there is none) is decided here, once.
"""

from __future__ import annotations

from collections.abc import Callable

import msgspec

from foldloop.errors import ApprovalError, RunLocked
from foldloop.store._approvals import ApprovalRecord
from foldloop.store._checkpoints import Checkpoint
from foldloop.store._framing import Lease
from foldloop.store._layout import iso

__all__ = [
    "acquired",
    "applied",
    "check_expirable",
    "check_fence",
    "checkpoint_advances",
    "decided",
    "released",
]


def check_fence(run_id: str, lease: Lease | None, owner: str, epoch: int) -> None:
    """Raise RunLocked unless ``owner`` holds the run at ``epoch`` (the fence)."""
    if lease is None or lease.owner != owner or lease.epoch != epoch:
        now = "nobody" if lease is None or not lease.owner else f"owner {lease.owner}"
        held = 0 if lease is None else lease.epoch
        raise RunLocked(
            f"run {run_id!r} is now driven by {now} (epoch {held}); this runtime held "
            f"epoch {epoch} and was fenced off, so its append was refused"
        )


def acquired(
    run_id: str, lease: Lease | None, owner: str, owner_alive: Callable[[str], bool]
) -> Lease:
    """The lease ``owner`` takes (one epoch more); RunLocked while a live other holds it."""
    if lease is not None and lease.owner and lease.owner != owner and owner_alive(lease.owner):
        raise RunLocked(
            f"run {run_id!r} is driven by a live runtime (owner {lease.owner}, epoch "
            f"{lease.epoch}); stop that runtime or let it finish first"
        )
    return Lease(owner, (lease.epoch if lease is not None else 0) + 1)


def released(lease: Lease | None, owner: str, epoch: int) -> Lease | None:
    """The lease once ``owner`` gives the run up; None when it no longer holds it."""
    if lease is None or lease.owner != owner or lease.epoch != epoch:
        return None
    return Lease("", epoch)


def decided(
    current: ApprovalRecord | None,
    record: ApprovalRecord,
    *,
    approved: bool,
    by: str,
    note: str,
    now: int,
) -> ApprovalRecord:
    """The record once decided (or marked expired, past its deadline at ``now``).

    ApprovalError when there is no such request or it was decided already."""
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
    if current.applied:  # still pending, yet its run's log moved past it: the run ended
        raise ApprovalError(
            f"run {current.run_id!r} no longer waits on call {current.call_id!r}: the run "
            "ended before anyone decided"
        )
    if current.lapsed(now):
        return msgspec.structs.replace(current, status="expired", decided_at=now)
    return msgspec.structs.replace(
        current, status="approved" if approved else "denied", by=by, note=note, decided_at=now
    )


def check_expirable(record: ApprovalRecord, now: int) -> None:
    """An expiry is never a denial in disguise: before the deadline it is refused."""
    if now < record.expires_at:
        raise ApprovalError(
            f"the approval of run {record.run_id!r} call {record.call_id!r} is not due "
            f"until {iso(record.expires_at)}; it cannot expire before then"
        )


def applied(current: ApprovalRecord | None, seq: int) -> ApprovalRecord | None:
    """The record once its run's log holds the decision (at ``seq``); None: no change."""
    if current is None or current.applied:
        return None
    return msgspec.structs.replace(current, applied=True, applied_seq=seq)


def checkpoint_advances(current: Checkpoint | None, checkpoint: Checkpoint) -> bool:
    """Whether ``checkpoint`` may replace ``current`` when checkpoints only move forward."""
    return (
        current is None
        or current.version != checkpoint.version
        or current.position <= checkpoint.position
    )
