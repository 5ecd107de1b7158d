"""OpenTelemetry spans for runs, model calls and tool calls (optional extra ``otel``).

``rt.subscribe(fl.projections.OtelSpans())`` turns the live log into spans: one per run
(``foldloop.run``, from run.started to its end) with children per model call
(``foldloop.model_call``) and per tool call (``foldloop.tool_call``). A child run's span
nests under the tool call span of the sub-agent call that started it, so a run tree is one
trace. Span times are the events' recorded times, so spans describe what the log says
happened. A run whose start came before the subscription gets its run span at the first
record seen (a root span, parent unknown).

Spans are side effects, so this is a subscriber rather than a stored projection.
"""

from __future__ import annotations

from typing import Any

from foldloop.errors import ConfigError
from foldloop.events._catalogue import (
    ModelFailed,
    ModelRequested,
    ModelResponded,
    RunCancelled,
    RunCompleted,
    RunFailed,
    RunLimitReached,
    RunNoProgress,
    RunStarted,
    ToolCompleted,
    ToolFailed,
    ToolRequested,
)
from foldloop.events._recorded import Recorded

__all__ = ["OtelSpans"]

_ENDS = (RunCompleted, RunFailed, RunCancelled, RunLimitReached, RunNoProgress)


class OtelSpans:
    """A subscriber callback that records OpenTelemetry spans (``tracer_provider`` optional)."""

    def __init__(self, tracer_provider: Any = None) -> None:
        try:
            from opentelemetry import trace  # noqa: PLC0415 - optional extra
        except ImportError:
            raise ConfigError(
                "OtelSpans needs OpenTelemetry: pip install 'foldloop[otel]'"
            ) from None
        self._trace = trace
        self._tracer = trace.get_tracer("foldloop", tracer_provider=tracer_provider)
        self._runs: dict[str, Any] = {}
        self._open: dict[tuple[str, str], Any] = {}

    def __call__(self, record: Recorded) -> None:
        event = record.event
        run_id = record.run_id
        if isinstance(event, RunStarted):
            self._run_span(record, event)
            return
        run = self._run_span(record)
        if isinstance(event, ModelRequested):
            attrs: dict[str, Any] = {"foldloop.step": event.step}
            self._start(record, (run_id, f"model:{event.step}"), "foldloop.model_call", run, attrs)
        elif isinstance(event, ModelResponded | ModelFailed):
            span = self._open.pop((run_id, f"model:{event.step}"), None)
            if span is not None:
                if isinstance(event, ModelResponded):
                    span.set_attribute("gen_ai.usage.input_tokens", event.usage.input_tokens)
                    span.set_attribute("gen_ai.usage.output_tokens", event.usage.output_tokens)
                else:
                    self._error(span, event.error)
                span.end(end_time=record.at)
        elif isinstance(event, ToolRequested):
            attrs = {"foldloop.tool": event.tool, "foldloop.call_id": event.call_id}
            self._start(record, (run_id, event.call_id), "foldloop.tool_call", run, attrs)
        elif isinstance(event, ToolCompleted | ToolFailed):
            span = self._open.pop((run_id, event.call_id), None)
            if span is not None:
                if isinstance(event, ToolFailed):
                    span.set_attribute("foldloop.failure_kind", event.kind)
                    self._error(span, event.error)
                span.end(end_time=record.at)
        elif isinstance(event, _ENDS):
            span = self._runs.pop(run_id)
            span.set_attribute("foldloop.status", event.type.removeprefix("run."))
            if isinstance(event, RunFailed):
                self._error(span, event.error)
            for key in [k for k in self._open if k[0] == run_id]:
                self._open.pop(key).end(end_time=record.at)
            span.end(end_time=record.at)

    def _run_span(self, record: Recorded, started: RunStarted | None = None) -> Any:
        span = self._runs.get(record.run_id)
        if span is None:
            attributes = {"foldloop.run_id": record.run_id}
            context = None
            if started is not None:
                attributes["foldloop.agent"] = started.agent
                if started.parent_run_id:
                    attributes["foldloop.parent_run_id"] = started.parent_run_id
                    attributes["foldloop.parent_call_id"] = started.parent_call_id
                    context = self._parent_context(started)
            span = self._tracer.start_span(
                "foldloop.run", context=context, start_time=record.at, attributes=attributes
            )
            self._runs[record.run_id] = span
        return span

    def _parent_context(self, started: RunStarted) -> Any:
        """The sub-agent call's span in the parent (or the parent's run span, if the call's
        span is not open here), as the context a child run's span starts in."""
        parent = started.parent_run_id or ""
        span = self._open.get((parent, started.parent_call_id))
        if span is None:
            span = self._runs.get(parent)
        return None if span is None else self._trace.set_span_in_context(span)

    def _start(
        self, record: Recorded, key: tuple[str, str], name: str, parent: Any, attrs: dict[str, Any]
    ) -> None:
        context = self._trace.set_span_in_context(parent)
        attrs["foldloop.run_id"] = record.run_id
        self._open[key] = self._tracer.start_span(
            name, context=context, start_time=record.at, attributes=attrs
        )

    def _error(self, span: Any, message: str) -> None:
        span.set_status(self._trace.Status(self._trace.StatusCode.ERROR, message))
