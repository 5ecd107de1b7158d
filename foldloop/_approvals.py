"""Approval gates: which tool calls wait for a person, and how that person is told.

``RequireApproval`` is the agent's policy. When the model asks for a gated call, the
run records approval.requested with only a digest of a fresh random token (32 bytes from
``secrets``), writes the pending request to the store's approvals table in the same
transaction, parks (no actor, no thread) once nothing else is in flight, and hands the
token to ``notify`` and to this runtime's ``pending_approvals()``.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import msgspec

from foldloop._arguments import MAX_WAIT_S, check_seconds
from foldloop.core._commands import ApprovalTicket
from foldloop.core._state import RunState
from foldloop.errors import ConfigError
from foldloop.events._catalogue import (
    ApprovalDecided,
    ApprovalExpired,
    ApprovalRequested,
    KnownEvent,
    RunCancelled,
    RunCompleted,
    RunFailed,
    RunLimitReached,
    RunNoProgress,
)
from foldloop.store._approvals import ApprovalChanges, ApprovalRecord

__all__ = [
    "PendingApproval",
    "RequireApproval",
    "approval_changes",
    "issue_tickets",
    "new_token",
    "token_digest",
]


@dataclass(frozen=True)
class PendingApproval:
    """A gated call waiting for a decision. ``token`` is set only where it was issued.

    ``root_run_id`` is the root of the run's tree (``rt.tree(root_run_id)`` reaches the
    run), in ``rt.pending_approvals()`` rows and in what a gate's ``notify`` is handed; the
    run itself for a run no sub-agent call started.
    """

    run_id: str
    call_id: str
    tool: str
    args: Any
    gate: str
    summary: str
    expires_at: int
    token: str | None = None
    root_run_id: str = ""

    def __post_init__(self) -> None:
        if not self.root_run_id:
            object.__setattr__(self, "root_run_id", self.run_id)


Notify = Callable[[PendingApproval], None]


MAX_TTL_S = 10 * 365 * 86_400.0
"""The longest a request may wait for a person (its expiry is stored in nanoseconds)."""


@dataclass(frozen=True, eq=False)
class RequireApproval:
    """Gate the calls of ``tools`` (names, or a predicate ``(tool, args) -> bool``)."""

    tools: Iterable[str] | Callable[[str, Mapping[str, Any]], bool]
    ttl: float = 3600.0
    notify: Notify | None = None
    gate: str = "approval"
    notify_timeout: float = 10.0

    def __post_init__(self) -> None:
        if isinstance(self.tools, str):  # iterating it would gate one-letter names
            raise ConfigError(
                f"RequireApproval({self.tools!r}): pass a set of tool names, "
                f"RequireApproval({{{self.tools!r}}}), or a predicate (tool, args) -> bool"
            )
        if not callable(self.tools):
            names = frozenset(self.tools)
            if not all(isinstance(n, str) for n in names):
                raise ConfigError(
                    f"RequireApproval: tool names must be str; got {sorted(map(repr, names))}"
                )
            object.__setattr__(self, "tools", names)
        if (
            isinstance(self.ttl, bool)
            or not isinstance(self.ttl, int | float)
            or not 0 < self.ttl <= MAX_TTL_S  # NaN fails both
        ):
            raise ConfigError(
                f"ttl must be a number of seconds > 0 and at most {MAX_TTL_S:,.0f} (ten "
                f"years); got {self.ttl!r}",
                advice="for a request that waits as good as for ever, give ttl=315_360_000",
            )
        check_seconds("notify_timeout", self.notify_timeout, MAX_WAIT_S)
        if self.notify is not None and not callable(self.notify):
            raise ConfigError(
                f"notify must be None or a callable taking the PendingApproval; got "
                f"{self.notify!r:.80}"
            )
        if not isinstance(self.gate, str) or not self.gate:
            raise ConfigError(f"gate must be a non-empty name; got {self.gate!r}")

    def requires(self, tool: str, args_json: str) -> bool:
        """Whether a call of ``tool`` with these arguments must wait for a person."""
        tools = self.tools
        if not callable(tools):
            return tool in tools
        try:
            args = msgspec.json.decode(args_json or "{}")
        except msgspec.DecodeError:
            args = {}
        return bool(tools(tool, args if isinstance(args, dict) else {}))


def new_token() -> str:
    """A fresh approval token: 32 random bytes, URL-safe."""
    return secrets.token_urlsafe(32)


def token_digest(token: str) -> str:
    """What the log and the store keep of a token (never the token itself)."""
    return hashlib.sha256(token.encode()).hexdigest()


def issue_tickets(
    policy: RequireApproval,
    calls: Iterable[tuple[int, str, str, str]],
    now: int,
) -> tuple[tuple[ApprovalTicket, ...], dict[str, str]]:
    """Tickets (with fresh tokens) for the calls the policy gates.

    ``calls`` are (index, call_id, tool, args): a reply's calls by index (call_id ''), or
    a resume's held-back calls by id (index -1). Returns the tickets and, by the key of
    each ticket (``str(index)`` or the call id), its raw token.
    """
    tickets: list[ApprovalTicket] = []
    tokens: dict[str, str] = {}
    expires_at = now + int(policy.ttl * 1e9)
    for index, call_id, tool, args in calls:
        if not policy.requires(tool, args):
            continue
        token = new_token()
        summary = f"{tool}({args if len(args) <= 200 else args[:197] + '...'})"
        tickets.append(
            ApprovalTicket(
                index=index,
                call_id=call_id,
                gate=policy.gate,
                token_digest=token_digest(token),
                expires_at=expires_at,
                summary=summary,
            )
        )
        tokens[call_id or str(index)] = token
    return tuple(tickets), tokens


_GATE_EVENTS = (ApprovalRequested, ApprovalDecided, ApprovalExpired)
_ENDS = (RunCancelled, RunCompleted, RunFailed, RunLimitReached, RunNoProgress)
_CHANGES = _GATE_EVENTS + _ENDS


def approval_changes(
    run_id: str, state: RunState, events: Iterable[KnownEvent], at: int, first_seq: int = 0
) -> ApprovalChanges | None:
    """The approvals-table changes that go with a decision's events, in the same append:
    new requests become pending records, applied decisions are marked applied (with the
    seq of their approval.decided, when ``first_seq``, the seq of the first event, is known).
    """
    events = tuple(events)
    for event in events:
        if isinstance(event, _CHANGES):
            break
    else:
        return None  # the common case: a step with no approvals in it (a loop: no generator)
    requests: list[ApprovalRecord] = []
    applied: list[tuple[str, int]] = []
    calls = {c.call_id: c for c in state.calls}
    for offset, event in enumerate(events):
        if isinstance(event, ApprovalRequested):
            call = calls.get(event.call_id)
            requests.append(
                ApprovalRecord(
                    run_id=run_id,
                    call_id=event.call_id,
                    agent=state.agent,
                    gate=event.gate,
                    tool=call.tool if call else "",
                    args=call.args if call else "",
                    args_digest=hashlib.sha256((call.args if call else "").encode()).hexdigest(),
                    summary=event.summary,
                    token_digest=event.token_digest,
                    expires_at=event.expires_at,
                    requested_at=at,
                )
            )
        elif isinstance(event, ApprovalDecided | ApprovalExpired):
            applied.append((event.call_id, first_seq + offset if first_seq else 0))
        elif isinstance(event, _ENDS) and state.terminal:  # nobody can decide for it now
            done = {call_id for call_id, _ in applied}
            applied += [
                (c.call_id, 0)
                for c in state.calls
                if c.status in ("awaiting_approval", "expired") and c.call_id not in done
            ]
    if not requests and not applied:
        return None
    return ApprovalChanges(requests=tuple(requests), applied=tuple(applied))
