"""RunMetrics: the whole log folded into the figures an operator watches.

Runs by status, model and tool calls, tokens and cost, per-tool latency, model latency
and approval wait times; runs, calls, tokens and cost per run tree (``by_root``). The
state is immutable: counters are plain values, histograms are ``Histogram`` structs and
the per-run bookkeeping (a run's status, its open calls, each tree's totals) lives in
``immutables.Map`` (a persistent hash map), so ``apply`` copies O(log n), not the whole
state, per record.

Statuses come from the log alone: a run counts as ``awaiting_approval`` while it has an
undecided approval request, and a run whose runtime died still counts as ``running``
(``interrupted`` needs the store's leases; ``rt.runs()`` shows it).

A child run's ``run.started`` names its parent and comes before any other event of it, so
each run's root is known from the runs folded before it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import immutables
import msgspec

from foldloop.events._catalogue import (
    ApprovalDecided,
    ApprovalExpired,
    ApprovalRequested,
    ModelFailed,
    ModelRequested,
    ModelResponded,
    RunAdmitted,
    RunCancelled,
    RunCompleted,
    RunFailed,
    RunLimitReached,
    RunNoProgress,
    RunQueued,
    RunResumed,
    RunStarted,
    ToolCompleted,
    ToolFailed,
    ToolRequested,
    may_resume,
)
from foldloop.events._recorded import Recorded
from foldloop.events._values import Usage
from foldloop.projections._base import Projection
from foldloop.projections._histogram import APPROVAL_BUCKETS, Histogram

__all__ = ["RunMetrics", "RunMetricsState", "TreeTotals"]

_EMPTY: immutables.Map[Any, Any] = immutables.Map()

_FINAL = {
    RunCompleted: "completed",
    RunFailed: "failed",
    RunCancelled: "cancelled",
    RunLimitReached: "limit_reached",
    RunNoProgress: "no_progress",
}


class _Run(msgspec.Struct, frozen=True, array_like=True):
    """A run's bookkeeping: its status, the approval requests still open, the root of its
    tree ("" when it is a root), its tool calls still open, and those its final end cut."""

    agent: str
    status: str
    waiting: frozenset[str] = frozenset()
    root: str = ""
    calls: frozenset[str] = frozenset()
    cut: tuple[tuple[str, str, int], ...] = ()
    """(call id, tool, requested at) of calls its final end left without an outcome."""


class TreeTotals(msgspec.Struct, frozen=True, array_like=True):
    """What one run tree (a root run and every child run below it) has used so far."""

    runs: int = 0
    model_calls: int = 0
    tool_calls: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    cost_usd: float = 0.0


_NO_TOTALS = TreeTotals()


class RunMetricsState(msgspec.Struct, frozen=True, kw_only=True):
    """What ``RunMetrics`` folds the log into (read ``handle.state``)."""

    position: int = 0
    events: int = 0
    runs_by_status: Mapping[str, int] = msgspec.field(default_factory=dict)
    runs_by_agent: Mapping[str, int] = msgspec.field(default_factory=dict)
    model_calls: int = 0
    model_failures: int = 0
    tool_calls: int = 0
    tool_failures: Mapping[str, int] = msgspec.field(default_factory=dict)
    """tool.failed count by kind (exception, timeout, invalid_args, interrupted, denied)."""
    tokens_in: int = 0
    tokens_out: int = 0
    cost_usd: float = 0.0
    tool_latency: Mapping[str, Histogram] = msgspec.field(default_factory=dict)
    """Seconds from a tool call's request to its result, per tool."""
    model_latency: Histogram = Histogram()
    approval_wait: Histogram = Histogram(bounds=APPROVAL_BUCKETS)
    """Seconds from approval.requested to approval.decided."""
    approvals: Mapping[str, int] = msgspec.field(default_factory=dict)
    """Approval outcomes: requested, approved, denied, expired."""
    runs: immutables.Map[str, _Run] = _EMPTY
    open_calls: immutables.Map[str, tuple[str, int]] = _EMPTY
    """(run_id NUL call_id) -> (tool, requested at ns): tool calls not finished yet."""
    open_approvals: immutables.Map[str, int] = _EMPTY
    """(run_id NUL call_id) -> requested at ns."""
    by_root: immutables.Map[str, TreeTotals] = _EMPTY
    """Root run id -> what its tree used (a run no sub-agent call started is a root)."""

    def root_of(self, run_id: str) -> str:
        """The root of the run's tree (the run itself for a root or a run not seen)."""
        run = self.runs.get(run_id)
        return run.root or run_id if run is not None else run_id

    def tool_percentiles(self) -> dict[str, dict[str, float]]:
        """Per tool: count, p50, p90, p99 and max latency in seconds (bucket estimates)."""
        return {
            tool: {"count": h.count, "p50": h.p50, "p90": h.p90, "p99": h.p99, "max": h.max}
            for tool, h in sorted(self.tool_latency.items())
        }


def _bump(counts: Mapping[str, int], key: str, by: int = 1) -> dict[str, int]:
    out = dict(counts)
    n = out.get(key, 0) + by
    if n:
        out[key] = n
    else:
        out.pop(key, None)
    return out


def _tree(
    state: RunMetricsState,
    run_id: str,
    *,
    runs: int = 0,
    model_calls: int = 0,
    tool_calls: int = 0,
    usage: Usage | None = None,
) -> immutables.Map[str, TreeTotals]:
    """``by_root`` with these runs, calls and ``usage`` added to the run's tree (built
    positionally: this runs for most records)."""
    run = state.runs.get(run_id)
    root = run.root or run_id if run is not None else run_id
    t = state.by_root.get(root, _NO_TOTALS)
    if usage is None:
        totals = TreeTotals(
            t.runs + runs,
            t.model_calls + model_calls,
            t.tool_calls + tool_calls,
            t.tokens_in,
            t.tokens_out,
            t.cost_usd,
        )
    else:
        totals = TreeTotals(
            t.runs,
            t.model_calls,
            t.tool_calls,
            t.tokens_in + usage.input_tokens,
            t.tokens_out + usage.output_tokens,
            t.cost_usd + usage.cost_usd,
        )
    return state.by_root.set(root, totals)


def _moved(state: RunMetricsState, run_id: str, run: _Run) -> RunMetricsState:
    """``state`` with ``run_id`` now in ``run`` (statuses recounted)."""
    old = state.runs.get(run_id)
    counts: Mapping[str, int] = state.runs_by_status
    if old is None or old.status != run.status:
        if old is not None:
            counts = _bump(counts, old.status, -1)
        counts = _bump(counts, run.status)
    return msgspec.structs.replace(state, runs=state.runs.set(run_id, run), runs_by_status=counts)


class RunMetrics(Projection[RunMetricsState]):
    """``rt.attach(fl.projections.RunMetrics())``: figures for dashboards and alerts."""

    name = "foldloop.run_metrics"
    version = 4

    def __init__(self, name: str | None = None) -> None:
        super().__init__(name)

    def initial(self) -> RunMetricsState:
        return RunMetricsState()

    def apply(self, state: RunMetricsState, record: Recorded) -> RunMetricsState:
        state = msgspec.structs.replace(state, position=record.position, events=state.events + 1)
        handler = _HANDLERS.get(type(record.event))
        return state if handler is None else handler(state, record)

    def encode_state(self, state: RunMetricsState) -> bytes:
        return _ENC.encode(_Stored.of(state))

    def decode_state(self, raw: bytes) -> RunMetricsState:
        return _DEC.decode(raw).restore()


# -- handlers -------------------------------------------------------------------------


def _run_started(s: RunMetricsState, r: Recorded) -> RunMetricsState:
    event: Any = r.event
    s = msgspec.structs.replace(s, runs_by_agent=_bump(s.runs_by_agent, event.agent))
    root = s.root_of(event.parent_run_id) if event.parent_run_id else ""
    s = _moved(s, r.run_id, _Run(event.agent, "running", root=root))
    return msgspec.structs.replace(s, by_root=_tree(s, r.run_id, runs=1))


def _now(s: RunMetricsState, run_id: str, status: str, waiting: frozenset[str]) -> _Run:
    """The run's bookkeeping with this status and these open requests."""
    run = s.runs.get(run_id) or _Run("", status)
    return msgspec.structs.replace(run, status=status, waiting=waiting)


def _run_ended(s: RunMetricsState, r: Recorded) -> RunMetricsState:
    run = s.runs.get(r.run_id) or _Run("", "running")
    status = _FINAL[type(r.event)]
    if may_resume(r.event) or not (run.calls or run.waiting):
        return _moved(s, r.run_id, msgspec.structs.replace(run, status=status))
    # A final end: its open approvals get no decision, and its calls are no longer open
    # (a cancel does not wait for a tool: the outcome may still come, and is timed then).
    calls, approvals = s.open_calls.mutate(), s.open_approvals.mutate()
    cut: list[tuple[str, str, int]] = []
    for call_id in run.calls:
        opened = calls.pop(f"{r.run_id}\0{call_id}", None)
        if opened is not None:
            cut.append((call_id, *opened))
    for call_id in run.waiting:
        approvals.pop(f"{r.run_id}\0{call_id}", None)
    s = msgspec.structs.replace(s, open_calls=calls.finish(), open_approvals=approvals.finish())
    ended = _Run(run.agent, status, root=run.root, cut=(*run.cut, *cut))
    return _moved(s, r.run_id, ended)


def _run_resumed(s: RunMetricsState, r: Recorded) -> RunMetricsState:
    run = s.runs.get(r.run_id)
    waiting = run.waiting if run is not None else frozenset()
    status = "awaiting_approval" if waiting else "running"
    return _moved(s, r.run_id, _now(s, r.run_id, status, waiting))


def _run_queued(s: RunMetricsState, r: Recorded) -> RunMetricsState:
    return _moved(s, r.run_id, _now(s, r.run_id, "queued", frozenset()))


def _run_admitted(s: RunMetricsState, r: Recorded) -> RunMetricsState:
    return _moved(s, r.run_id, _now(s, r.run_id, "running", frozenset()))


def _model_requested(s: RunMetricsState, r: Recorded) -> RunMetricsState:
    by_root = _tree(s, r.run_id, model_calls=1)
    return msgspec.structs.replace(s, model_calls=s.model_calls + 1, by_root=by_root)


def _model_responded(s: RunMetricsState, r: Recorded) -> RunMetricsState:
    event: Any = r.event
    usage = event.usage
    return msgspec.structs.replace(
        s,
        tokens_in=s.tokens_in + usage.input_tokens,
        tokens_out=s.tokens_out + usage.output_tokens,
        cost_usd=s.cost_usd + usage.cost_usd,
        model_latency=s.model_latency.observe(event.latency_ms / 1000),
        by_root=_tree(s, r.run_id, usage=usage),
    )


def _model_failed(s: RunMetricsState, _r: Recorded) -> RunMetricsState:
    return msgspec.structs.replace(s, model_failures=s.model_failures + 1)


def _tool_requested(s: RunMetricsState, r: Recorded) -> RunMetricsState:
    event: Any = r.event
    key = f"{r.run_id}\0{event.call_id}"
    s = msgspec.structs.replace(
        s,
        tool_calls=s.tool_calls + 1,
        open_calls=s.open_calls.set(key, (event.tool, r.at)),
        by_root=_tree(s, r.run_id, tool_calls=1),
    )
    return _with_calls(s, r.run_id, lambda calls: calls | {event.call_id})


def _with_calls(
    s: RunMetricsState, run_id: str, change: Callable[[frozenset[str]], frozenset[str]]
) -> RunMetricsState:
    """The run's set of open tool calls changed (its status stays)."""
    run = s.runs.get(run_id)
    if run is None:
        return s
    run = msgspec.structs.replace(run, calls=change(run.calls))
    return msgspec.structs.replace(s, runs=s.runs.set(run_id, run))


def _tool_finished(s: RunMetricsState, r: Recorded) -> RunMetricsState:
    event: Any = r.event
    key = f"{r.run_id}\0{event.call_id}"
    opened = s.open_calls.get(key)
    failures = s.tool_failures
    if isinstance(event, ToolFailed):
        failures = _bump(failures, event.kind)
        if event.kind == "denied":  # a call, though never requested: the person said no
            s = msgspec.structs.replace(
                s, tool_calls=s.tool_calls + 1, by_root=_tree(s, r.run_id, tool_calls=1)
            )
    if opened is None:
        return _late_outcome(msgspec.structs.replace(s, tool_failures=failures), r)
    s = msgspec.structs.replace(s, tool_failures=failures, open_calls=s.open_calls.delete(key))
    s = _timed(s, r, *opened)
    return _with_calls(s, r.run_id, lambda calls: calls - {event.call_id})


def _timed(s: RunMetricsState, r: Recorded, tool: str, at: int) -> RunMetricsState:
    """The tool's latency histogram with this outcome's call in it."""
    event: Any = r.event
    took = event.duration_ms / 1000 if getattr(event, "duration_ms", 0.0) else (r.at - at) / 1e9
    latency = dict(s.tool_latency)
    latency[tool] = latency.get(tool, Histogram()).observe(max(took, 0.0))
    return msgspec.structs.replace(s, tool_latency=latency)


def _late_outcome(s: RunMetricsState, r: Recorded) -> RunMetricsState:
    """The outcome of a call its run's final end cut (a tool a cancel did not wait for):
    timed as any other, and no longer kept; any other outcome of no open call changes
    nothing more."""
    event: Any = r.event
    run = s.runs.get(r.run_id)
    call = None if run is None else next((c for c in run.cut if c[0] == event.call_id), None)
    if run is None or call is None:
        return s
    s = _timed(s, r, call[1], call[2])
    run = msgspec.structs.replace(run, cut=tuple(c for c in run.cut if c is not call))
    return msgspec.structs.replace(s, runs=s.runs.set(r.run_id, run))


def _approval_requested(s: RunMetricsState, r: Recorded) -> RunMetricsState:
    event: Any = r.event
    key = f"{r.run_id}\0{event.call_id}"
    s = msgspec.structs.replace(
        s,
        approvals=_bump(s.approvals, "requested"),
        open_approvals=s.open_approvals.set(key, r.at),
    )
    run = s.runs.get(r.run_id) or _Run("", "running")
    waiting = run.waiting | {event.call_id}
    status = "awaiting_approval" if run.status == "running" else run.status
    return _moved(s, r.run_id, msgspec.structs.replace(run, status=status, waiting=waiting))


def _approval_decided(s: RunMetricsState, r: Recorded) -> RunMetricsState:
    event: Any = r.event
    key = f"{r.run_id}\0{event.call_id}"
    opened = s.open_approvals.get(key)
    wait = s.approval_wait if opened is None else s.approval_wait.observe((r.at - opened) / 1e9)
    s = msgspec.structs.replace(
        s,
        approvals=_bump(s.approvals, "approved" if event.approved else "denied"),
        approval_wait=wait,
        open_approvals=s.open_approvals.delete(key) if opened is not None else s.open_approvals,
    )
    run = s.runs.get(r.run_id)
    if run is None:
        return s
    waiting = run.waiting - {event.call_id}
    status = "running" if run.status == "awaiting_approval" and not waiting else run.status
    return _moved(s, r.run_id, msgspec.structs.replace(run, status=status, waiting=waiting))


def _approval_expired(s: RunMetricsState, r: Recorded) -> RunMetricsState:
    event: Any = r.event
    key = f"{r.run_id}\0{event.call_id}"
    opened = s.open_approvals
    return msgspec.structs.replace(
        s,
        approvals=_bump(s.approvals, "expired"),
        open_approvals=opened.delete(key) if key in opened else opened,
    )


_HANDLERS: dict[type, Any] = {
    RunStarted: _run_started,
    RunCompleted: _run_ended,
    RunFailed: _run_ended,
    RunCancelled: _run_ended,
    RunLimitReached: _run_ended,
    RunNoProgress: _run_ended,
    RunResumed: _run_resumed,
    RunQueued: _run_queued,
    RunAdmitted: _run_admitted,
    ModelRequested: _model_requested,
    ModelResponded: _model_responded,
    ModelFailed: _model_failed,
    ToolRequested: _tool_requested,
    ToolCompleted: _tool_finished,
    ToolFailed: _tool_finished,
    ApprovalRequested: _approval_requested,
    ApprovalDecided: _approval_decided,
    ApprovalExpired: _approval_expired,
}


# -- checkpoint format ---------------------------------------------------------------


class _Stored(msgspec.Struct, frozen=True, kw_only=True):
    """RunMetricsState with its persistent maps as plain dicts (msgpack-friendly)."""

    state: RunMetricsState
    runs: dict[str, _Run]
    open_calls: dict[str, tuple[str, int]]
    open_approvals: dict[str, int]
    by_root: dict[str, TreeTotals] = msgspec.field(default_factory=dict)

    @classmethod
    def of(cls, state: RunMetricsState) -> _Stored:
        return cls(
            state=msgspec.structs.replace(
                state, runs=_EMPTY, open_calls=_EMPTY, open_approvals=_EMPTY, by_root=_EMPTY
            ),
            runs=dict(state.runs.items()),
            open_calls=dict(state.open_calls.items()),
            open_approvals=dict(state.open_approvals.items()),
            by_root=dict(state.by_root.items()),
        )

    def restore(self) -> RunMetricsState:
        return msgspec.structs.replace(
            self.state,
            runs=immutables.Map(self.runs),
            open_calls=immutables.Map(self.open_calls),
            open_approvals=immutables.Map(self.open_approvals),
            by_root=immutables.Map(self.by_root),
        )


def _enc_hook(obj: object) -> object:
    if isinstance(obj, immutables.Map):
        if obj:
            raise TypeError("persistent maps are stored through _Stored")
        return {}
    raise NotImplementedError(f"cannot encode {type(obj).__name__}")


def _dec_hook(tp: type, obj: object) -> object:
    if getattr(tp, "__origin__", tp) is immutables.Map:
        return _EMPTY
    raise NotImplementedError(f"cannot decode {tp}")


_ENC = msgspec.msgpack.Encoder(enc_hook=_enc_hook)
_DEC = msgspec.msgpack.Decoder(_Stored, dec_hook=_dec_hook)
