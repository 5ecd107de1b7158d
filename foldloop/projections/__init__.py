"""Projections: folds of the whole log into states of your own, backfilled then live.

``Projection`` is the protocol; ``RunMetrics`` the built-in operator's view;
``prometheus_text`` / ``serve_prometheus`` expose it for a scrape; ``OtelSpans`` (extra
``otel``) turns the live log into OpenTelemetry spans.
"""

from foldloop.projections.base import Projection
from foldloop.projections.histogram import Histogram
from foldloop.projections.metrics import RunMetrics, RunMetricsState
from foldloop.projections.otel import OtelSpans
from foldloop.projections.prometheus import MetricsServer, prometheus_text, serve_prometheus

__all__ = [
    "Histogram",
    "MetricsServer",
    "OtelSpans",
    "Projection",
    "RunMetrics",
    "RunMetricsState",
    "prometheus_text",
    "serve_prometheus",
]
