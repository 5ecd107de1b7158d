"""OpenTelemetry spans for runs, model calls and tool calls (optional extra ``otel``).

``rt.subscribe(fl.projections.OtelSpans())`` turns the live log into spans: one per run
(``foldloop.run``, from run.started to its end) with children per model call
(``foldloop.model_call``) and per tool call (``foldloop.tool_call``). A child run's span
nests under the tool call span of the sub-agent call that started it, so a run tree is one
trace. Span times are the events' recorded times, so spans describe what the log says
happened. A run whose start came before the subscription gets its run span at the first
record seen that starts a span (a root span, parent unknown). A resumed run's new span is a
child of the span of the stretch it resumes; an outcome recorded after its run ended (a
cancel does not wait for a tool) has no span left to end and starts none.

Spans are side effects, so this is a subscriber rather than a stored projection.
"""

from __future__ import annotations

from collections import OrderedDict
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
    RunResumed,
    RunStarted,
    ToolCompleted,
    ToolFailed,
    ToolRequested,
    may_resume,
)
from foldloop.events._recorded import Recorded

__all__ = ["OtelSpans"]

_ENDS = (RunCompleted, RunFailed, RunCancelled, RunLimitReached, RunNoProgress)
REMEMBERED_ENDS = 10_000
"""Runs whose end a ``run.resumed`` may follow whose span this remembers (the oldest
forgotten first): a resumed run's span continues in its trace."""


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
        self._runs: dict[str, tuple[Any, dict[str, Any]]] = {}  # run id -> (span, attributes)
        self._ended: OrderedDict[str, tuple[Any, dict[str, Any]]] = OrderedDict()
        self._open: dict[tuple[str, str], Any] = {}

    def __call__(self, record: Recorded) -> None:
        event = record.event
        run_id = record.run_id
        if isinstance(event, RunStarted):
            self._run_span(record, self._started(record, event))
        elif isinstance(event, RunResumed):
            self._run_span(record)
        elif isinstance(event, ModelRequested):
            attrs: dict[str, Any] = {"foldloop.step": event.step}
            run = self._run_span(record)
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
            run = self._run_span(record)
            self._start(record, (run_id, event.call_id), "foldloop.tool_call", run, attrs)
        elif isinstance(event, ToolCompleted | ToolFailed):
            # An outcome that comes after its run ended (a cancel does not wait for a
            # tool) has no span open any more, and opens none.
            span = self._open.pop((run_id, event.call_id), None)
            if span is not None:
                if isinstance(event, ToolFailed):
                    span.set_attribute("foldloop.failure_kind", event.kind)
                    self._error(span, event.error)
                span.end(end_time=record.at)
        elif isinstance(event, _ENDS):
            self._ended_run(record, event)

    def _started(self, record: Recorded, started: RunStarted) -> tuple[Any, dict[str, Any]]:
        """The context and attributes of a run's span, from its ``run.started``."""
        attributes: dict[str, Any] = {
            "foldloop.run_id": record.run_id,
            "foldloop.agent": started.agent,
        }
        context = None
        if started.parent_run_id:
            attributes["foldloop.parent_run_id"] = started.parent_run_id
            attributes["foldloop.parent_call_id"] = started.parent_call_id
            context = self._parent_context(started)
        return context, attributes

    def _ended_run(self, record: Recorded, event: Any) -> None:
        run_id = record.run_id
        span = self._run_span(record)
        _, attributes = self._runs.pop(run_id)
        span.set_attribute("foldloop.status", event.type.removeprefix("run."))
        if isinstance(event, RunFailed):
            self._error(span, event.error)
        for key in [k for k in self._open if k[0] == run_id]:
            self._open.pop(key).end(end_time=record.at)
        span.end(end_time=record.at)
        if may_resume(event):
            self._ended[run_id] = (span, attributes)
            if len(self._ended) > REMEMBERED_ENDS:
                self._ended.popitem(last=False)

    def _run_span(self, record: Recorded, start: tuple[Any, dict[str, Any]] | None = None) -> Any:
        """The run's open span; one is started if it has none: in ``start``'s context with
        its attributes, else under the span of the stretch that ended before this one (a
        resume, or a cancel of a run at a limit) with its attributes, else a root span (the
        run's start was not seen here)."""
        found = self._runs.get(record.run_id)
        if found is not None:
            return found[0]
        if start is None and (before := self._ended.pop(record.run_id, None)) is not None:
            span, attributes = before
            start = (self._trace.set_span_in_context(span), attributes)
        context, attributes = start or (None, {"foldloop.run_id": record.run_id})
        span = self._tracer.start_span(
            "foldloop.run", context=context, start_time=record.at, attributes=attributes
        )
        self._runs[record.run_id] = (span, attributes)
        return span

    def _parent_context(self, started: RunStarted) -> Any:
        """The sub-agent call's span in the parent (or the parent's run span, if the call's
        span is not open here), as the context a child run's span starts in."""
        parent = started.parent_run_id or ""
        span = self._open.get((parent, started.parent_call_id))
        if span is None:
            found = self._runs.get(parent)
            span = None if found is None else found[0]
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
