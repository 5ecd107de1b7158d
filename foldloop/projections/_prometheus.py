"""RunMetrics in Prometheus' text exposition format, rendered by prometheus_client.

``prometheus_text(state)`` renders one state; ``serve_prometheus(handle)`` starts
prometheus_client's HTTP server whose every scrape reads the attached projection's
current state. The metric families are built by a custom collector, so foldloop never
writes the exposition format by hand.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from foldloop.core._state import RunStatus
from foldloop.errors import ConfigError
from foldloop.projections._histogram import Histogram
from foldloop.projections._metrics import RunMetricsState

__all__ = ["MetricsServer", "prometheus_text", "serve_prometheus"]

_STATUSES = tuple(s.value for s in RunStatus if s is not RunStatus.INTERRUPTED)
"""Every status the log alone can show (interrupted needs the leases), exported even at 0."""


def _collector(read: Callable[[], RunMetricsState]) -> Any:
    from prometheus_client.core import (  # noqa: PLC0415 - only when rendering
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
    )
    from prometheus_client.registry import Collector  # noqa: PLC0415

    def histogram(family: Any, labels: list[str], h: Histogram) -> None:
        counts = list(h.counts) or [0] * (len(h.bounds) + 1)
        buckets: list[tuple[str, float]] = []
        running = 0
        for bound, n in zip((*h.bounds, math.inf), counts, strict=True):
            running += n
            buckets.append(("+Inf" if math.isinf(bound) else repr(bound), running))
        family.add_metric(labels, buckets, h.sum)

    def by_label(name: str, doc: str, label: str, counts: Mapping[str, int]) -> Any:
        family = CounterMetricFamily(name, doc, labels=[label])
        for key, n in sorted(counts.items()):
            family.add_metric([key], n)
        return family

    class RunMetricsCollector(Collector):
        def collect(self) -> Iterator[Any]:
            s = read()
            runs = GaugeMetricFamily(
                "foldloop_runs", "Runs by status, folded from the log.", labels=["status"]
            )
            for status in sorted({*_STATUSES, *s.runs_by_status}):
                runs.add_metric([status], s.runs_by_status.get(status, 0))
            yield runs
            yield by_label(
                "foldloop_runs_started", "Runs started, by agent.", "agent", s.runs_by_agent
            )
            yield CounterMetricFamily(
                "foldloop_model_calls", "Model calls asked.", value=s.model_calls
            )
            yield CounterMetricFamily(
                "foldloop_model_failures", "Model calls that failed.", value=s.model_failures
            )
            yield CounterMetricFamily(
                "foldloop_tool_calls", "Tool calls requested.", value=s.tool_calls
            )
            yield by_label(
                "foldloop_tool_failures",
                "Tool calls that failed, by kind.",
                "kind",
                s.tool_failures,
            )
            tokens = CounterMetricFamily(
                "foldloop_tokens", "Model tokens used.", labels=["direction"]
            )
            tokens.add_metric(["in"], s.tokens_in)
            tokens.add_metric(["out"], s.tokens_out)
            yield tokens
            yield CounterMetricFamily(
                "foldloop_cost_usd", "Model cost in US dollars (priced runs).", value=s.cost_usd
            )
            yield by_label(
                "foldloop_approvals", "Approval requests and outcomes.", "outcome", s.approvals
            )
            tools = HistogramMetricFamily(
                "foldloop_tool_latency_seconds",
                "Seconds from a tool call's request to its result.",
                labels=["tool"],
            )
            for tool, h in sorted(s.tool_latency.items()):
                histogram(tools, [tool], h)
            yield tools
            model = HistogramMetricFamily(
                "foldloop_model_latency_seconds", "Seconds per answered model call."
            )
            histogram(model, [], s.model_latency)
            yield model
            wait = HistogramMetricFamily(
                "foldloop_approval_wait_seconds", "Seconds an approval waited for a decision."
            )
            histogram(wait, [], s.approval_wait)
            yield wait
            yield GaugeMetricFamily(
                "foldloop_log_position", "Last log position folded.", value=s.position
            )

    return RunMetricsCollector()


def _registry(read: Callable[[], RunMetricsState]) -> Any:
    from prometheus_client import CollectorRegistry  # noqa: PLC0415

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_collector(read))
    return registry


def prometheus_text(state: RunMetricsState) -> str:
    """``state`` in the Prometheus text format (version 0.0.4), ready for a scrape."""
    from prometheus_client import generate_latest  # noqa: PLC0415

    if not isinstance(state, RunMetricsState):
        raise ConfigError(
            f"prometheus_text takes a RunMetricsState; got {type(state).__name__}",
            advice="pass the handle's state: prometheus_text(handle.state)",
        )
    text: bytes = generate_latest(_registry(lambda: state))
    return text.decode()


class MetricsServer:
    """A running scrape endpoint; ``close()`` stops it."""

    def __init__(self, server: Any, thread: Any) -> None:
        self._server = server
        self._thread = thread
        host, port = server.server_address[:2]
        self.port: int = port
        self.url = f"http://{host}:{port}/metrics"

    def close(self) -> None:
        """Stop serving and release the port."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def serve_prometheus(source: Any, *, port: int = 9464, addr: str = "127.0.0.1") -> MetricsServer:
    """Serve ``source`` (an attached RunMetrics handle, or a function returning a state)
    on ``http://addr:port/metrics`` from a daemon thread. ``port=0`` picks a free port."""
    from prometheus_client import start_http_server  # noqa: PLC0415

    handle = hasattr(source, "state") and hasattr(source, "detach")  # (calling one detaches)
    if not (handle or callable(source)):
        raise ConfigError(
            f"serve_prometheus takes an attached RunMetrics handle or a function returning "
            f"its state; got {type(source).__name__}",
            advice="serve_prometheus(rt.attach(fl.projections.RunMetrics()))",
        )
    read: Callable[[], RunMetricsState] = (lambda: source.state) if handle else source
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ConfigError(f"port must be an int from 0 to 65535 (0: a free one); got {port!r}")
    try:
        server, thread = start_http_server(port, addr=addr, registry=_registry(read))
    except OSError as exc:  # the port taken, the address not this machine's
        raise ConfigError(
            f"cannot serve metrics on {addr}:{port}: {exc.strerror or exc}",
            advice="pick another port (0: a free one)",
        ) from None
    return MetricsServer(server, thread)
