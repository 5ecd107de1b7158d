"""How ``foldloop metrics`` shows a RunMetrics state on a terminal."""

from __future__ import annotations

import math
from collections.abc import Callable

from rich.table import Table

from foldloop.cli._fit import free
from foldloop.projections._histogram import Histogram
from foldloop.projections._metrics import RunMetricsState

__all__ = ["metrics_view"]


def _seconds(value: float) -> str:
    if math.isnan(value):
        return "-"
    if value < 0.001:
        return f"{value * 1e6:.0f} µs"
    if value < 1:
        return f"{value * 1000:.1f} ms"
    if value < 120:
        return f"{value:.2f} s"
    return f"{value / 60:.1f} min"


def _row(name: str, h: Histogram) -> tuple[str, ...]:
    return (name, str(h.count), _seconds(h.p50), _seconds(h.p90), _seconds(h.p99), _seconds(h.max))


def metrics_view(state: RunMetricsState, esc: Callable[[str], str]) -> tuple[Table, Table]:
    """Totals, runs by status, and latency percentiles (bucket estimates) as rich tables;
    ``esc`` makes names from the log safe for the terminal."""
    totals = Table(
        "figure",
        free("value", wrap=True),
        title=f"foldloop metrics (log position {state.position})",
    )
    for status, n in sorted(state.runs_by_status.items()):
        totals.add_row(f"runs {status}", str(n))
    totals.add_row("model calls", f"{state.model_calls} ({state.model_failures} failed)")
    failed = sum(state.tool_failures.values())
    kinds = ", ".join(f"{k} {n}" for k, n in sorted(state.tool_failures.items()))
    totals.add_row(
        "tool calls", f"{state.tool_calls} ({failed} failed{': ' + kinds if kinds else ''})"
    )
    totals.add_row("tokens in / out", f"{state.tokens_in:,} / {state.tokens_out:,}")
    totals.add_row("cost", f"${state.cost_usd:.4f}")
    if state.approvals:
        totals.add_row(
            "approvals", ", ".join(f"{k} {n}" for k, n in sorted(state.approvals.items()))
        )
    latency = Table("latency", "count", "p50", "p90", "p99", "max")
    latency.add_row(*_row("model call", state.model_latency))
    for tool, h in sorted(state.tool_latency.items()):
        latency.add_row(*_row(f"tool {esc(tool)}", h))
    if state.approval_wait.count:
        latency.add_row(*_row("approval wait", state.approval_wait))
    return totals, latency
