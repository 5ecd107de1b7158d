"""The approvals table: one record per gated call, decided exactly once.

The run's log says a call waits (approval.requested) and, later, how it was decided
(approval.decided / approval.expired). Between the two, a person decides from any
process: that decision is checked ("still pending, not expired") and recorded here in
one LMDB write transaction, so of two racing deciders exactly one wins. Whoever drives
the run next appends the decision to the log and marks the record applied (in the same
transaction as the append).
"""

from __future__ import annotations

from typing import Literal

import msgspec

__all__ = ["ApprovalChanges", "ApprovalRecord", "ApprovalStatus", "approval_key"]

ApprovalStatus = Literal["pending", "approved", "denied", "expired"]


class ApprovalRecord(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """A gated call's request and, once made, its decision."""

    run_id: str
    call_id: str
    agent: str = ""
    gate: str
    tool: str
    args: str
    args_digest: str = ""
    summary: str = ""
    token_digest: str
    expires_at: int
    requested_at: int
    status: ApprovalStatus = "pending"
    by: str = ""
    note: str = ""
    decided_at: int = 0
    applied: bool = False
    applied_seq: int = 0

    def lapsed(self, now: int) -> bool:
        """Pending past its deadline at ``now`` (unix ns): no one can decide it any more,
        whether or not its expiry is recorded yet."""
        return self.status == "pending" and now >= self.expires_at


class ApprovalChanges(msgspec.Struct, frozen=True, kw_only=True):
    """What an append changes in the approvals table, atomically with its events: the
    requests it makes (pending records) and the decisions it applies to the run's log
    (call ids, each with the seq of its approval.decided or approval.expired, 0 if unknown)."""

    requests: tuple[ApprovalRecord, ...] = ()
    applied: tuple[tuple[str, int], ...] = ()

    def __add__(self, other: ApprovalChanges) -> ApprovalChanges:
        """Both, as one append's: requests are written before applied marks, so a call
        applied here cannot be requested again by ``other`` in the same append."""
        again = {r.call_id for r in other.requests} & {call_id for call_id, _ in self.applied}
        if again:
            raise ValueError(
                f"call(s) {sorted(again)} applied and requested again in one append; "
                "append the re-request separately"
            )
        return ApprovalChanges(
            requests=self.requests + other.requests, applied=self.applied + other.applied
        )

    def __bool__(self) -> bool:
        return bool(self.requests or self.applied)


def approval_key(run_id: str, call_id: str) -> bytes:
    """Key of a run's approval record (run ids and call ids never hold NUL)."""
    return run_id.encode() + b"\0" + call_id.encode()
