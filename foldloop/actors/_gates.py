"""The approval gates of one runtime: an ApprovalGate actor for each agent's approval policy
(started on first use), the tokens issued here (stored nowhere: only their digests are),
and the pool their ``notify`` callbacks run on."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable
from typing import Any

import msgspec
import pykka

from foldloop._agent import Agent
from foldloop._approvals import PendingApproval, RequireApproval
from foldloop._log import get_logger
from foldloop.actors._approval_gate import ApprovalGate, Issued
from foldloop.actors._timers import Timers
from foldloop.actors._workers import Workers
from foldloop.core._state import RunState
from foldloop.store import ApprovalRecord, EventStore

__all__ = ["Gates"]

log = get_logger(__name__)

NOTIFY_WORKERS = 8
"""Threads running approval ``notify`` callbacks (a chat message, an e-mail: I/O)."""


class Gates:
    """The approval gates of one runtime."""

    def __init__(self, store: EventStore, timers: Timers) -> None:
        self._store = store
        self._timers = timers
        self._lock = threading.Lock()
        # one actor per policy (an agent's RequireApproval: its notify, its timeout), not
        # per gate name: agents whose policies share a name must not share a notify. Keyed
        # by the object (RequireApproval is eq=False: hashed by identity).
        self._gates: dict[RequireApproval, ApprovalGate] = {}
        self._refs: dict[RequireApproval, pykka.ActorRef[Any]] = {}
        self._notify_pool = Workers(NOTIFY_WORKERS, "foldloop-notify")
        self.issued: dict[tuple[str, str], str] = {}
        """Tokens issued, until their request is durable and handed to its gate."""
        self.root_of: Callable[[str], str] | None = None
        """The root run of a run's tree (for the rows ``notify`` gets)."""

    def pending(self, record: ApprovalRecord) -> PendingApproval:
        """The host's view of an approval record (with the token if it was issued here)."""
        try:
            args: Any = msgspec.json.decode(record.args or "{}")
        except msgspec.DecodeError:
            args = record.args
        return PendingApproval(
            run_id=record.run_id,
            call_id=record.call_id,
            tool=record.tool,
            args=args,
            gate=record.gate,
            summary=record.summary,
            expires_at=record.expires_at,
            token=self.token(record.run_id, record.call_id),
        )

    def gate(self, policy: RequireApproval) -> ApprovalGate:
        """The ApprovalGate actor of ``policy`` (started on first use)."""
        with self._lock:
            gate = self._gates.get(policy)
            if gate is None:
                gate = ApprovalGate(policy, self._timers, self._notify_pool)
                self._refs[policy] = gate.start_here()
                self._gates[policy] = gate
            return gate

    def token(self, run_id: str, call_id: str) -> str | None:
        """A token this runtime issued for a request (never stored anywhere)."""
        fresh = self.issued.get((run_id, call_id))
        if fresh is not None:
            return fresh
        with self._lock:
            gates = list(self._gates.values())
        for gate in gates:
            token = gate.token(run_id, call_id)
            if token is not None:
                return token
        return None

    def notify(self, agent: Agent, state: RunState, call_id: str) -> None:
        """A request is durable: its gate remembers the token and tells ``notify``."""
        policy = agent.approvals
        record = self._store.approval(state.run_id, call_id)
        if policy is None or record is None:
            return
        gate = self.gate(policy)
        token = self.issued.pop((state.run_id, call_id), None)
        if token is not None:
            gate.remember(state.run_id, call_id, token)
        pending = self.pending(record)
        if state.parent_run_id and self.root_of is not None:  # a request deep in a tree
            pending = dataclasses.replace(pending, root_run_id=self.root_of(state.run_id))
        gate.actor_ref.tell(Issued(pending))

    def refs(self) -> list[pykka.ActorRef[Any]]:
        """The gates' actors (a close stops them)."""
        with self._lock:
            return list(self._refs.values())

    def deliver_notifications(self) -> None:
        """Let every notify already handed to a gate run before the runtime closes: the
        token it carries is stored nowhere else. A notify that hangs past its gate's
        timeout is left behind (logged); its request stays pending, decidable by ids."""
        with self._lock:
            gates = list(self._gates.values())
        timeout = max((gate.policy.notify_timeout for gate in gates), default=0.0)
        if gates and not self._notify_pool.join(timeout):
            log.warning("approval_notify_unfinished_at_close", timeout_s=timeout)

    def shutdown(self) -> None:
        """Stop the notify threads once their calls end."""
        self._notify_pool.shutdown()
