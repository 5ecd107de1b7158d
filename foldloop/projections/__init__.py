"""Projections: folds of the whole log into states of your own, backfilled then live.

``Projection`` is the protocol; ``RunMetrics`` the built-in operator's view;
``prometheus_text`` / ``serve_prometheus`` expose it for a scrape; ``OtelSpans`` (extra
``otel``) turns the live log into OpenTelemetry spans.
"""

from foldloop.projections._base import Projection
from foldloop.projections._histogram import Histogram
from foldloop.projections._metrics import RunMetrics, RunMetricsState, TreeTotals
from foldloop.projections._otel import OtelSpans
from foldloop.projections._prometheus import MetricsServer, prometheus_text, serve_prometheus

__all__ = [
    "Histogram",
    "MetricsServer",
    "OtelSpans",
    "Projection",
    "RunMetrics",
    "RunMetricsState",
    "TreeTotals",
    "prometheus_text",
    "serve_prometheus",
]
