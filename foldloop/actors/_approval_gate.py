"""ApprovalGate: one actor per approval policy (an agent's ``RequireApproval``, its gate);
holds the tokens it issued and tells the policy's ``notify``.

Pending requests themselves live in the store's approvals table (so any process can
decide them and a parked run needs no actor); the gate keeps what must never be stored,
the raw tokens it handed out, and runs the gate's ``notify`` callback off every run's
thread, logging a callback that raises or hangs.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from foldloop._approvals import PendingApproval, RequireApproval
from foldloop._log import get_logger
from foldloop.actors._base import FAILURES, FastActor
from foldloop.actors._timers import Timers
from foldloop.actors._workers import Workers

__all__ = ["ApprovalGate", "Issued"]

log = get_logger(__name__)


@dataclass(frozen=True)
class Issued:
    """A request was recorded durably: remember its token and tell the gate's notify."""

    pending: PendingApproval


class ApprovalGate(FastActor):
    """The actor of one approval policy."""

    def __init__(self, policy: RequireApproval, timers: Timers, pool: Workers) -> None:
        super().__init__()
        self.policy = policy
        self.timers = timers
        self.pool = pool
        self.tokens: dict[tuple[str, str], str] = {}
        self._lock = threading.Lock()

    def remember(self, run_id: str, call_id: str, token: str) -> None:
        """Keep the token of a request this runtime issued (thread-safe, immediate)."""
        with self._lock:
            self.tokens[(run_id, call_id)] = token

    def token(self, run_id: str, call_id: str) -> str | None:
        """The token issued for a request, if this gate issued it (thread-safe)."""
        with self._lock:
            return self.tokens.get((run_id, call_id))

    def on_receive(self, message: Any) -> None:
        if isinstance(message, Issued):
            try:
                self._issued(message.pending)
            except FAILURES:
                log.exception("approval_gate_failed", gate=self.policy.gate)

    def _issued(self, pending: PendingApproval) -> None:
        log.info("approval_requested", run_id=pending.run_id, call_id=pending.call_id)
        callback = self.policy.notify
        if callback is None:
            return
        finished = threading.Event()

        def call(notify: Callable[[PendingApproval], None] = callback) -> None:
            try:
                notify(pending)
            except FAILURES:
                log.exception(
                    "approval_notify_failed", run_id=pending.run_id, call_id=pending.call_id
                )
            finally:
                finished.set()

        def watchdog() -> None:
            if not finished.is_set():
                log.warning(
                    "approval_notify_timed_out",
                    run_id=pending.run_id,
                    call_id=pending.call_id,
                    timeout_s=self.policy.notify_timeout,
                )

        self.timers.call_later(self.policy.notify_timeout, watchdog)
        self.pool.submit(call)
