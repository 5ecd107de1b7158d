"""Projections: backfill then live, checkpoints across restarts and SIGKILL, isolation of a
raising projection, a reader process following another's writes, RunMetrics, Prometheus
and OpenTelemetry, and the structlog events at the edges."""

from __future__ import annotations

import collections
import itertools
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

import foldloop as fl
from foldloop.events import (
    ApprovalDecided,
    ApprovalExpired,
    ApprovalRequested,
    ModelFailed,
    ModelRequested,
    ModelResponded,
    RunCancelled,
    RunCompleted,
    RunFailed,
    RunLimitReached,
    RunResumed,
    RunStarted,
    ToolCompleted,
    ToolFailed,
    ToolRequested,
)
from foldloop.projections import Histogram, RunMetrics, RunMetricsState, prometheus_text
from tests.log_capture import capture_logs
from tests.projection_shared import Positions, agent
from tests.waiting import wait_until

REPO = Path(__file__).resolve().parent.parent


def status_counts(rt: fl.Runtime) -> dict[str, int]:
    return dict(collections.Counter(s.status.value for s in rt.runs()))


def test_a_new_projection_backfills_the_history_then_follows_live(rt: fl.Runtime) -> None:
    for i in range(3):
        assert rt.spawn(agent(), f"old {i}").wait(timeout=30).ok
    before = rt.store.last_position()
    metrics = rt.attach(RunMetrics())
    positions = rt.attach(Positions())
    assert metrics.catch_up() == before
    assert positions.catch_up() == before
    assert positions.state == tuple(range(1, before + 1))
    state: RunMetricsState = metrics.state
    assert state.runs_by_status == {"completed": 3} == status_counts(rt)
    assert (state.model_calls, state.tool_calls) == (6, 3)
    # live: runs spawned after attaching show up, once each, in log order
    for i in range(2):
        rt.spawn(agent("other"), f"new {i}").wait(timeout=30)
    last = rt.store.last_position()
    assert positions.catch_up() == last and metrics.catch_up() == last
    assert positions.state == tuple(range(1, last + 1))
    state = metrics.state
    assert state.runs_by_status == {"completed": 5} and state.runs_by_agent == {
        "calc": 3,
        "other": 2,
    }
    records = list(rt.read_all())
    assert state.events == len(records) == last
    assert state.tokens_in == sum(
        r.event.usage.input_tokens for r in records if isinstance(r.event, ModelResponded)
    )
    assert state.tool_latency["add"].count == 5
    metrics.detach()
    positions.detach()
    assert not metrics.live


def test_a_restart_continues_from_the_checkpoint_and_applies_nothing_twice(
    store_path: Path,
) -> None:
    applied: list[int] = []

    class Counting(Positions):
        def apply(self, state: tuple[int, ...], record: fl.types.Recorded) -> tuple[int, ...]:
            applied.append(record.position)
            return super().apply(state, record)

    with fl.Runtime.open(store_path) as rt:
        rt.spawn(agent(), "one").wait(timeout=30)
        handle = rt.attach(Counting())
        first = handle.catch_up()
        # closing the runtime detaches it, writing the checkpoint
    assert applied == list(range(1, first + 1))
    with fl.Runtime.open(store_path) as rt:
        stored = rt.store.checkpoint("positions")
        assert stored is not None and stored.position == first
        rt.spawn(agent(), "two").wait(timeout=30)
        applied.clear()
        handle = rt.attach(Counting())
        last = handle.catch_up()
        assert applied == list(range(first + 1, last + 1))
        assert handle.state == tuple(range(1, last + 1))
        # reset=True rebuilds from the first record
        handle.detach()
        applied.clear()
        handle = rt.attach(Counting(), reset=True)
        assert handle.catch_up() == last and applied == list(range(1, last + 1))
        handle.detach()
        # a new version discards the stored state and backfills
        applied.clear()
        bumped = Counting()
        bumped.version = 2
        assert rt.attach(bumped).catch_up() == last
        assert applied == list(range(1, last + 1))


def test_a_sigkilled_follower_resumes_from_its_checkpoint_gapless(store_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.projection_worker", "follow", str(store_path)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    seen = 0
    for line in child.stdout:
        if line.startswith("AT "):
            seen += 1
            if seen == 8:
                break
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=10)
    with fl.Runtime.open(store_path) as rt:
        stored = rt.store.checkpoint("positions")
        assert stored is not None and stored.position > 0
        # the stored pair is consistent: the state holds exactly the positions before it
        assert Positions().decode_state(stored.state or b"") == tuple(range(1, stored.position + 1))
        handle = rt.attach(Positions())
        last = handle.catch_up()
        assert last == rt.store.last_position()
        assert handle.state == tuple(range(1, last + 1))


class Fragile(fl.projections.Projection[int]):
    """Counts records and raises on the first tool.completed (when ``broken``)."""

    name = "fragile"
    broken = True

    def initial(self) -> int:
        return 0

    def apply(self, state: int, record: fl.types.Recorded) -> int:
        if self.broken and record.type == "tool.completed":
            raise ValueError("cannot handle tool results")
        return state + 1


def test_a_raising_projection_stops_alone_and_says_where(rt: fl.Runtime) -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG))
    try:
        with capture_logs() as logs:
            fragile = rt.attach(Fragile())
            positions = rt.attach(Positions())
            assert rt.spawn(agent(), "go").wait(timeout=30).ok
            with pytest.raises(
                fl.errors.ProjectionError, match="cannot handle tool results"
            ) as info:
                fragile.catch_up()
    finally:
        structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    failed_at = next(r.position for r in rt.read_all() if r.type == "tool.completed")
    error = info.value
    assert (error.name, error.position, error.event_type) == (
        "fragile",
        failed_at,
        "tool.completed",
    )
    assert error.seq == failed_at and error.run_id == fragile.error.run_id  # type: ignore[union-attr]
    assert fragile.state == failed_at - 1 and fragile.position == failed_at - 1
    assert not fragile.live
    stopped = [e for e in logs if e["event"] == "projection_stopped"]
    assert stopped and stopped[0]["position"] == failed_at and stopped[0]["log_level"] == "error"
    # the other projection and the runs went on
    rt.spawn(agent(), "after").wait(timeout=30)
    last = positions.catch_up()
    assert positions.state == tuple(range(1, last + 1))
    # the failure is in the checkpoint; attaching a fixed projection retries that record
    stored = rt.store.checkpoint("fragile")
    assert stored is not None and stored.failure is not None
    assert stored.failure.position == failed_at and stored.position == failed_at - 1
    fixed = Fragile()
    fixed.broken = False
    again = rt.attach(fixed)
    assert again.catch_up() == last and again.state == last and again.error is None


def test_a_damaged_record_stops_a_projection_with_where_it_is(store_path: Path) -> None:
    with fl.Runtime.open(store_path) as rt:
        rt.spawn(agent(), "MARKER-0123456789").wait(timeout=30)
        last = rt.store.last_position()
    data = (store_path / "data.mdb").read_bytes()
    assert b"MARKER-0123456789" in data  # (free pages may hold old copies too)
    (store_path / "data.mdb").write_bytes(data.replace(b"MARKER-0123456789", b"MARKER-0123456788"))
    with fl.Runtime.open(store_path) as rt:
        handle = rt.attach(Positions())
        with pytest.raises(fl.errors.ProjectionError, match="checksum mismatch") as info:
            handle.catch_up()
        # run.started (position 1) holds the input: the projection stopped before it
        assert (info.value.position, info.value.seq) == (1, 1)
        assert handle.position == 0 and not handle.live
        assert last > 1


def test_a_reader_process_follows_what_another_process_writes(rt: fl.Runtime) -> None:
    metrics = rt.attach(RunMetrics())
    metrics.catch_up()
    assert metrics.state.runs_by_status == {}
    subprocess.run(
        [sys.executable, "-m", "tests.projection_worker", "write", str(rt.store.path), "4"],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        check=True,
        capture_output=True,
        timeout=60,
    )
    # nothing was committed by this process: the poller notices the log grew
    last = metrics.catch_up(timeout=10)
    assert last == rt.store.last_position() > 0
    assert metrics.state.runs_by_status == {"completed": 4}


def test_attach_refuses_what_it_cannot_run(rt: fl.Runtime) -> None:
    with pytest.raises(fl.ConfigError, match=r"takes a foldloop\.projections\.Projection"):
        rt.attach(object())  # type: ignore[arg-type]
    with pytest.raises(fl.ConfigError, match="needs a name"):
        rt.attach(fl.projections.Projection(initial=lambda: 0, apply=lambda s, r: s))
    rt.attach(Positions())
    with pytest.raises(fl.ConfigError, match="already attached"):
        rt.attach(Positions())
    with pytest.raises(fl.ConfigError, match="set of event types"):
        rt.subscribe(print, types="tool.completed")
    with pytest.raises(fl.ConfigError, match=r"'run\.complete' is not an event type \(did you"):
        rt.subscribe(print, types={"run.complete"})  # a typo would never fire
    with pytest.raises(fl.ConfigError, match=r"'tool\.done' is not an event type"):
        rt.attach(fl.projections.Projection("typo", initial=int, apply=max, types={"tool.done"}))
    with pytest.raises(fl.ConfigError, match="types is empty"):
        rt.subscribe(print, types=set())  # it would never fire either
    count = rt.attach(
        fl.projections.Projection("count", initial=lambda: 0, apply=lambda n, r: n + 1)
    )
    rt.spawn(agent(), "go").wait(timeout=30)
    assert count.catch_up() == count.state == rt.store.last_position()


class Opaque:
    """A state msgspec cannot encode."""


@pytest.mark.parametrize(
    ("make", "says"),
    [
        (lambda: fl.projections.Projection("😀" * 200, initial=int, apply=max), "500 bytes"),
        (lambda: fl.projections.Projection("a\udc80", initial=int, apply=max), "500 bytes"),
        (lambda: fl.projections.Projection("v", initial=int, apply=max, version=2**70), "version"),
        (lambda: fl.projections.Projection("v", initial=int, apply=max, version=True), "version"),
        (
            lambda: fl.projections.Projection("opaque", initial=Opaque, apply=lambda s, r: s),
            "encode_state cannot store the state it starts from",
        ),
    ],
    ids=["name-bytes", "name-surrogate", "version-huge", "version-bool", "state-opaque"],
)
def test_attach_refuses_a_projection_whose_checkpoint_could_never_be_kept(
    rt: fl.Runtime, make: Callable[[], fl.projections.Projection[Any]], says: str
) -> None:
    """Each of these passed attach before and then failed every checkpoint write (or
    read) deep in the store, visible only in a log line: every attach refolded the log."""
    with pytest.raises(fl.ConfigError, match=says):
        rt.attach(make())


class Counted(fl.projections.Projection[int]):
    """Counts the records it applies (``applied``), from a checkpoint or from the start."""

    name = "counted"

    def __init__(self) -> None:
        super().__init__()
        self.applied = 0

    def initial(self) -> int:
        return 0

    def apply(self, state: int, record: fl.types.Recorded) -> int:
        self.applied += 1
        return state + 1


class StoresText(Counted):
    def encode_state(self, state: int) -> bytes:
        return str(state)  # type: ignore[return-value]  # what the check is for


def test_a_refused_attach_changes_nothing_and_a_checkpointed_name_is_checked_too(
    rt: fl.Runtime,
) -> None:
    """A codec that could never store its state is refused under a name that has a
    checkpoint too, and a refused attach(reset=True) leaves that checkpoint as it was."""
    rt.spawn(agent(), "go").wait(timeout=30)
    first = Counted()
    handle = rt.attach(first)
    handle.catch_up()
    handle.detach()  # checkpointed at the log's end
    assert first.applied == rt.store.last_position()
    for reset in (False, True):
        with pytest.raises(fl.ConfigError, match="encode_state returned str, not bytes"):
            rt.attach(StoresText(), reset=reset)
    refused = pytest.raises(fl.ConfigError, match="encode_state cannot store")
    with capture_logs(logging.INFO) as logs, refused:  # its checkpoint unreadable to it too
        rt.attach(fl.projections.Projection("counted", initial=Opaque, apply=lambda s, r: s))
    assert not [e for e in logs if e.get("event") == "projection_rebuilt"]  # refused, no more
    again = Counted()
    rt.attach(again).catch_up()
    assert again.applied == 0  # went on from the checkpoint: nothing refolded


def test_attach_and_catch_up_check_their_arguments(rt: fl.Runtime) -> None:
    with pytest.raises(fl.ConfigError, match="set of event types"):
        fl.projections.Projection("t", initial=int, apply=max, types="tool.requested")
    count = fl.projections.Projection("count", initial=lambda: 0, apply=lambda n, r: n + 1)
    for every in (float("nan"), True, -1, "1"):
        with pytest.raises(fl.ConfigError, match="checkpoint_every must be a number of seconds"):
            rt.attach(count, checkpoint_every=every)  # type: ignore[arg-type]
    with pytest.raises(fl.ConfigError, match="reset must be True or False"):
        rt.attach(count, reset="yes")  # type: ignore[arg-type]
    handle = rt.attach(count)  # none of the refused attaches kept its name
    for timeout in ("5", -1, float("inf")):
        with pytest.raises(fl.ConfigError, match="timeout must be None or a number of seconds"):
            handle.catch_up(timeout=timeout)  # type: ignore[arg-type]
    assert handle.catch_up(timeout=10) == rt.store.last_position()


# -- RunMetrics ----------------------------------------------------------------------


@fl.tool
def boom() -> str:
    """Always fails."""
    raise RuntimeError("boom")


def test_run_metrics_follow_approvals_failures_and_statuses(rt: fl.Runtime) -> None:
    gated = fl.Agent(
        name="gated",
        llm=fl.ScriptedLLM(
            [fl.Reply(tool_calls=[fl.ToolCall("boom", {})]), fl.Reply(text="gave up")]
        ),
        tools=[boom],
        approvals=fl.RequireApproval({"boom"}),
    )
    metrics = rt.attach(RunMetrics())
    run = rt.spawn(gated, "try")
    assert run.wait(timeout=30).status is fl.RunStatus.AWAITING_APPROVAL
    metrics.catch_up()
    assert metrics.state.runs_by_status == {"awaiting_approval": 1} == status_counts(rt)
    assert metrics.state.approvals == {"requested": 1}
    rt.approve(run_id=run.id, call_id=rt.pending_approvals()[0].call_id, by="alice")
    assert rt.handle(run.id).wait(timeout=30).status is fl.RunStatus.COMPLETED
    metrics.catch_up()
    state = metrics.state
    assert state.runs_by_status == {"completed": 1} == status_counts(rt)
    assert state.approvals == {"requested": 1, "approved": 1}
    assert state.approval_wait.count == 1 and state.approval_wait.max >= 0
    assert state.tool_failures == {"exception": 1}
    assert state.tool_latency["boom"].count == 1
    limited = fl.Agent(
        name="limited",
        llm=fl.ScriptedLLM([fl.Reply(tool_calls=[fl.ToolCall("add", {"a": 1, "b": 1})])] * 5),
        tools=[agent().tools[0]],
        limits=fl.Limits(max_steps=1),
    )
    assert rt.spawn(limited, "loop").wait(timeout=30).status is fl.RunStatus.LIMIT_REACHED
    metrics.catch_up()
    assert metrics.state.runs_by_status == {"completed": 1, "limit_reached": 1}
    assert metrics.state.runs_by_status == status_counts(rt)
    calls = metrics.state.tool_calls
    denied = rt.spawn(gated, "try again")
    assert denied.wait(timeout=30).status is fl.RunStatus.AWAITING_APPROVAL
    rt.deny(run_id=denied.id, call_id=rt.pending_approvals()[0].call_id, by="alice")
    assert rt.handle(denied.id).wait(timeout=30).status is fl.RunStatus.COMPLETED
    metrics.catch_up()
    # a denied call is a call (never made): failures never outnumber calls
    assert metrics.state.tool_calls == calls + 1
    assert metrics.state.tool_failures == {"exception": 1, "denied": 1}


def held_tool() -> tuple[Any, threading.Event, threading.Event]:
    """An idempotent tool ``hang`` that sets ``started`` and returns once ``release`` is set
    (a cancel does not wait for it: its outcome is recorded after the run ended)."""
    started, release = threading.Event(), threading.Event()

    @fl.tool(idempotent=True)
    def hang() -> str:
        """Wait to be released."""
        started.set()
        release.wait(30)
        return "late"

    return hang, started, release


def test_run_metrics_time_a_tool_a_cancel_did_not_wait_for_and_drop_approvals_it_cut(
    rt: fl.Runtime,
) -> None:
    """A cancel does not wait for a running tool: the call is no longer open once the run
    ended, and its outcome, recorded after, is timed all the same. An approval the cancel
    cut gets no decision: it is no longer open either."""
    hang, started, release = held_tool()

    def one_call(name: str) -> fl.ScriptedLLM:
        return fl.ScriptedLLM([fl.Reply(tool_calls=[fl.ToolCall(name, {})]), fl.Reply(text="x")])

    metrics = rt.attach(RunMetrics())
    busy = rt.spawn(fl.Agent(name="busy", llm=one_call("hang"), tools=[hang]), "go")
    gated = fl.Agent(
        name="gated", llm=one_call("boom"), tools=[boom], approvals=fl.RequireApproval({"boom"})
    )
    waiting = rt.spawn(gated, "go")
    assert started.wait(30)
    assert waiting.wait(timeout=30).status is fl.RunStatus.AWAITING_APPROVAL
    metrics.catch_up()
    assert len(metrics.state.open_calls) == 1 and len(metrics.state.open_approvals) == 1
    busy.cancel("enough")
    waiting.cancel("enough")
    assert busy.wait(timeout=30).status is fl.RunStatus.CANCELLED
    assert waiting.wait(timeout=30).status is fl.RunStatus.CANCELLED
    metrics.catch_up()
    assert dict(metrics.state.open_calls) == {} and dict(metrics.state.open_approvals) == {}
    assert metrics.state.runs_by_status == {"cancelled": 2} == status_counts(rt)
    release.set()
    wait_until(
        lambda: "tool.completed" in [r.type for r in rt.events(busy.id)], 30, "the late outcome"
    )
    metrics.catch_up()
    assert metrics.state.tool_latency["hang"].count == 1
    assert dict(metrics.state.open_calls) == {}


CUT_THEN_KILLED = """
import sys, threading, foldloop as fl
@fl.tool(idempotent=True)
def hang() -> str:
    \"\"\"Never returns.\"\"\"
    threading.Event().wait()
    return "never"
llm = fl.ScriptedLLM([fl.Reply(tool_calls=[fl.ToolCall("hang", {})])])
rt = fl.Runtime.open(sys.argv[1], agents=[fl.Agent(name="cut", llm=llm, tools=[hang])])
run = rt.spawn(rt.agent_named("cut"), "go")
while "tool.requested" not in [r.type for r in rt.events(run.id)]:
    pass
run.cancel("enough")
print(run.wait(timeout=30).status.value, flush=True)
threading.Event().wait()
"""


def test_run_metrics_keep_no_call_open_of_a_run_cancelled_before_its_process_died(
    store_path: Path,
) -> None:
    """The process that cancelled a run during a tool call is SIGKILLed before the tool
    ends: no outcome ever comes, and the call is not open for ever in the metrics."""
    proc = subprocess.Popen(
        [sys.executable, "-c", CUT_THEN_KILLED, str(store_path)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "cancelled"
    finally:
        proc.kill()
        proc.wait(30)
    with fl.Runtime.open(store_path) as rt:
        metrics = rt.attach(RunMetrics())
        metrics.catch_up()
        assert metrics.state.runs_by_status == {"cancelled": 1}
        assert dict(metrics.state.open_calls) == {} and metrics.state.tool_calls == 1


def test_prometheus_text_parses_back_and_is_served_over_http(rt: fl.Runtime) -> None:
    for i in range(3):
        rt.spawn(agent(), f"go {i}").wait(timeout=30)
    metrics = rt.attach(RunMetrics())
    metrics.catch_up()
    families = {f.name: f for f in text_string_to_metric_families(prometheus_text(metrics.state))}
    runs = {s.labels["status"]: s.value for s in families["foldloop_runs"].samples}
    assert runs["completed"] == 3 and runs["running"] == 0
    calls = families["foldloop_tool_calls"].samples
    assert [s.value for s in calls if s.name == "foldloop_tool_calls_total"] == [3]
    tokens = {
        s.labels["direction"]: s.value
        for s in families["foldloop_tokens"].samples
        if s.name.endswith("_total")
    }
    assert tokens == {"in": metrics.state.tokens_in, "out": metrics.state.tokens_out}
    latency = families["foldloop_tool_latency_seconds"].samples
    count = [s for s in latency if s.name.endswith("_count") and s.labels["tool"] == "add"]
    inf = [s for s in latency if s.name.endswith("_bucket") and s.labels["le"] == "+Inf"]
    assert count[0].value == inf[0].value == 3
    with fl.projections.serve_prometheus(metrics, port=0) as server:
        assert server.url.startswith("http://127.0.0.1:")
        rt.spawn(agent(), "live").wait(timeout=30)
        metrics.catch_up()
        with urllib.request.urlopen(server.url, timeout=10) as response:
            body = response.read().decode()
    scraped = {f.name: f for f in text_string_to_metric_families(body)}
    served = {s.labels["status"]: s.value for s in scraped["foldloop_runs"].samples}
    assert served["completed"] == 4


def test_otel_spans_per_run_model_call_and_tool_call(rt: fl.Runtime) -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    follow = rt.subscribe(fl.projections.OtelSpans(provider))
    run = rt.spawn(agent(), "traced")
    run.wait(timeout=30)
    follow.catch_up()
    spans = exporter.get_finished_spans()
    names = collections.Counter(s.name for s in spans)
    assert names == {"foldloop.run": 1, "foldloop.model_call": 2, "foldloop.tool_call": 1}
    root = next(s for s in spans if s.name == "foldloop.run")
    assert root.attributes is not None and root.attributes["foldloop.run_id"] == run.id
    assert root.attributes["foldloop.status"] == "completed"
    for span in spans:
        if span is not root:
            assert span.parent is not None and span.parent.span_id == root.context.span_id
            assert root.start_time <= span.start_time <= span.end_time <= root.end_time
    tool = next(s for s in spans if s.name == "foldloop.tool_call")
    assert tool.attributes is not None and tool.attributes["foldloop.tool"] == "add"


def traced() -> tuple[Any, Any, collections.Counter[str]]:
    """A tracer provider, its in-memory exporter, and a count of spans started and ended."""
    from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    counts: collections.Counter[str] = collections.Counter()

    class Counting(SpanProcessor):
        def on_start(self, span: Any, parent_context: Any = None) -> None:
            counts["started"] += 1

        def on_end(self, span: Any) -> None:
            counts["ended"] += 1

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    provider.add_span_processor(Counting())
    return provider, exporter, counts


def test_otel_spans_end_when_a_cancel_outruns_a_tool_and_a_resume_stays_in_the_trace(
    rt: fl.Runtime,
) -> None:
    """A tool's outcome recorded after its run was cancelled opens no span of a run that
    ended; a run resumed after a limit continues under its first span, with its agent."""
    provider, exporter, counts = traced()
    follow = rt.subscribe(fl.projections.OtelSpans(provider))
    hang, started, release = held_tool()

    cut = rt.spawn(
        fl.Agent(
            name="cut",
            llm=fl.ScriptedLLM([fl.Reply(tool_calls=[fl.ToolCall("hang", {})])]),
            tools=[hang],
        ),
        "go",
    )
    assert started.wait(30)
    cut.cancel("enough")
    assert cut.wait(timeout=30).status is fl.RunStatus.CANCELLED
    release.set()
    wait_until(
        lambda: "tool.completed" in [r.type for r in rt.events(cut.id)], 30, "the late outcome"
    )
    limited = fl.Agent(
        name="limited",
        llm=fl.ScriptedLLM([fl.Reply(tool_calls=[fl.ToolCall("add", {"a": 1, "b": 1})])] * 3),
        tools=[agent().tools[0]],
        limits=fl.Limits(max_steps=1),
    )
    again = rt.spawn(limited, "loop")
    assert again.wait(timeout=30).status is fl.RunStatus.LIMIT_REACHED
    assert rt.resume(again.id, extend=fl.Limits(max_steps=2)).wait(timeout=30).status is (
        fl.RunStatus.LIMIT_REACHED
    )
    rt.handle(again.id).cancel("enough")  # a run at its limit, cancelled: its trace still
    follow.catch_up()
    assert counts["started"] == counts["ended"]
    runs = [s for s in exporter.get_finished_spans() if s.name == "foldloop.run"]
    assert [s.attributes["foldloop.run_id"] for s in runs if s.attributes] == [
        cut.id,
        again.id,
        again.id,
        again.id,
    ]
    for before, after in itertools.pairwise(runs[1:]):
        assert after.parent is not None and after.parent.span_id == before.context.span_id
        assert after.context.trace_id == before.context.trace_id
        assert after.attributes is not None and after.attributes["foldloop.agent"] == "limited"
    assert runs[-1].attributes is not None
    assert runs[-1].attributes["foldloop.status"] == "cancelled"


def test_structlog_events_at_the_edges_carry_the_run_id(rt: fl.Runtime) -> None:
    gated = fl.Agent(
        name="edges",
        llm=fl.ScriptedLLM(
            [
                fl.Reply(tool_calls=[fl.ToolCall("boom", {})]),
                fl.Reply(tool_calls=[fl.ToolCall("add", {"a": 1, "b": 2})]),
                fl.Reply(text="done"),
            ]
        ),
        tools=[boom, agent().tools[0]],
        approvals=fl.RequireApproval({"add"}),
    )
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG))
    try:
        with capture_logs() as logs:
            run = rt.spawn(gated, "go")
            assert run.wait(timeout=30).status is fl.RunStatus.AWAITING_APPROVAL
            rt.approve(run_id=run.id, call_id=rt.pending_approvals()[0].call_id)
            assert rt.handle(run.id).wait(timeout=30).ok
    finally:
        structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    by_event: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    for entry in logs:
        by_event[entry["event"]].append(entry)
    for name in ("run_started", "tool_failed", "approval_requested", "run_parked", "run_finished"):
        assert by_event[name], f"no {name} log"
        assert all(e["run_id"] == run.id for e in by_event[name])
    assert by_event["tool_failed"][0]["kind"] == "exception"
    assert by_event["run_finished"][-1]["status"] == "completed"


# -- pure parts, with hypothesis -----------------------------------------------------

latencies = st.floats(min_value=0, max_value=1e4, allow_nan=False)


@given(st.lists(latencies, min_size=1, max_size=200), st.floats(0.01, 1.0))
def test_histogram_percentiles_fall_in_the_right_bucket(values: list[float], q: float) -> None:
    h = Histogram()
    for v in values:
        h = h.observe(v)
    assert h.count == len(values) and sum(h.counts) == len(values)
    assert (h.min, h.max) == (min(values), max(values))
    estimate = h.percentile(q)
    exact = sorted(values)[max(0, -(-int(q * len(values) * 1e9) // int(1e9)) - 1)]
    bounds = (0.0, *h.bounds, max(values))
    # the estimate lies in the bucket that holds the exact order statistic
    i = (
        next(k for k, b in enumerate(h.bounds) if exact <= b)
        if exact <= h.bounds[-1]
        else len(h.bounds)
    )
    assert bounds[i] - 1e-9 <= estimate <= max(bounds[i + 1], exact) + 1e-9
    assert h.min - 1e-9 <= estimate <= h.max + 1e-9
    assert h.percentile(0.5) <= h.percentile(0.99) + 1e-9


RUNS = ("r1", "r2", "r3")
CALLS = ("c1", "c2")
events = st.one_of(
    st.builds(RunStarted, agent=st.sampled_from(("a", "b")), input=st.just("x")),
    st.builds(ModelRequested, step=st.integers(1, 3), prompt_digest=st.just("d")),
    st.builds(ModelResponded, step=st.integers(1, 3)),
    st.builds(ModelFailed, step=st.integers(1, 3), error=st.just("e")),
    st.builds(
        ToolRequested,
        call_id=st.sampled_from(CALLS),
        tool=st.sampled_from(("t", "u")),
        args=st.just("{}"),
        step=st.integers(1, 3),
    ),
    st.builds(
        ToolCompleted,
        call_id=st.sampled_from(CALLS),
        result=st.just("1"),
        duration_ms=st.floats(0, 1e5),
    ),
    st.builds(ToolFailed, call_id=st.sampled_from(CALLS), error=st.just("e")),
    st.builds(
        ApprovalRequested,
        call_id=st.sampled_from(CALLS),
        gate=st.just("g"),
        token_digest=st.just("t"),
        expires_at=st.just(0),
    ),
    st.builds(ApprovalDecided, call_id=st.sampled_from(CALLS), approved=st.booleans()),
    st.builds(ApprovalExpired, call_id=st.sampled_from(CALLS)),
    st.builds(RunCompleted, output=st.just("o")),
    st.builds(RunFailed, error=st.just("e"), kind=st.sampled_from(("error", "model"))),
    st.builds(RunCancelled),
    st.builds(
        RunLimitReached, limit=st.just("max_steps"), value=st.just(1.0), ceiling=st.just(1.0)
    ),
    st.builds(RunResumed, owner=st.just("o")),
)
logs = st.lists(st.tuples(st.sampled_from(RUNS), events), max_size=60).map(
    lambda pairs: [
        fl.types.Recorded(run_id=run, seq=i, position=i, at=i * 1_000_000, event=event)
        for i, (run, event) in enumerate(pairs, start=1)
    ]
)


def fold_metrics(records: list[fl.types.Recorded], state: RunMetricsState | None = None) -> Any:
    p = RunMetrics()
    state = p.initial() if state is None else state
    for rec in records:
        state = p.apply(state, rec)
    return state


@given(logs, st.integers(0, 60))
def test_run_metrics_through_a_checkpoint_equals_one_fold(
    records: list[fl.types.Recorded], split: int
) -> None:
    p = RunMetrics()
    whole = fold_metrics(records)
    head = fold_metrics(records[:split])
    restored = p.decode_state(p.encode_state(head))
    assert restored == head
    assert fold_metrics(records[split:], restored) == whole


@given(logs)
def test_run_metrics_counts_agree_with_the_records(records: list[fl.types.Recorded]) -> None:
    state = fold_metrics(records)
    kinds = collections.Counter(type(r.event) for r in records)
    assert state.events == len(records)
    assert state.model_calls == kinds[ModelRequested]
    assert state.model_failures == kinds[ModelFailed]
    assert state.tool_calls == kinds[ToolRequested]
    assert sum(state.tool_failures.values()) == kinds[ToolFailed]
    assert state.runs_by_status == dict(
        collections.Counter(run.status for run in state.runs.values())
    )
    assert sum(state.runs_by_agent.values()) == kinds[RunStarted]
    finished = sum(h.count for h in state.tool_latency.values())
    assert finished <= kinds[ToolCompleted] + kinds[ToolFailed]
    assert finished + len(state.open_calls) <= kinds[ToolRequested]
    families = {f.name: f for f in text_string_to_metric_families(prometheus_text(state))}
    assert sum(s.value for s in families["foldloop_runs"].samples) == len(state.runs)


ends = st.one_of(
    st.builds(RunCompleted, output=st.just("o")),
    st.builds(RunCancelled),
    st.builds(RunFailed, error=st.just("e"), kind=st.sampled_from(("error", "model"))),
    st.builds(
        RunLimitReached, limit=st.just("max_steps"), value=st.just(1.0), ceiling=st.just(1.0)
    ),
)
ended_runs = st.lists(
    st.tuples(st.lists(events.filter(lambda e: not isinstance(e, RunStarted)), max_size=12), ends),
    min_size=1,
    max_size=len(RUNS),
).map(
    lambda runs: [
        fl.types.Recorded(run_id=RUNS[r], seq=i, position=i, at=i * 1_000_000, event=event)
        for i, (r, event) in enumerate(
            (
                (r, event)
                for r, (middle, end) in enumerate(runs)
                for event in (RunStarted(agent="a", input="x"), *middle, end)
            ),
            start=1,
        )
    ]
)


@given(ended_runs)
def test_run_metrics_keep_nothing_open_of_a_run_that_ended_for_good(
    records: list[fl.types.Recorded],
) -> None:
    state = fold_metrics(records)
    last = {rec.run_id: rec.event for rec in records}
    for run_id, end in last.items():
        left = [k for k in (*state.open_calls, *state.open_approvals) if k.startswith(run_id)]
        if isinstance(end, RunCompleted | RunCancelled) or (
            isinstance(end, RunFailed) and end.kind != "model"
        ):
            assert left == [], (run_id, end)


CLI = [sys.executable, "-m", "foldloop.cli"]


def test_serving_metrics_on_a_port_taken_or_out_of_range_is_a_config_error(tmp_path: Path) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    try:
        with pytest.raises(fl.ConfigError, match=f"cannot serve metrics on 127.0.0.1:{port}"):
            fl.projections.serve_prometheus(RunMetricsState, port=port)
        for bad in (-1, 70000, "9464", True):
            with pytest.raises(fl.ConfigError, match="port must be an int from 0 to 65535"):
                fl.projections.serve_prometheus(RunMetricsState, port=bad)  # type: ignore[arg-type]
        with fl.Runtime.open(tmp_path / "s"):
            pass
        done = subprocess.run(
            [*CLI, "--store", str(tmp_path / "s"), "metrics", "--serve", str(port)],
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        taken.close()
    assert done.returncode == 2, done.stderr
    assert "cannot serve metrics" in done.stderr and "Traceback" not in done.stderr


def test_an_attach_the_runtime_closes_under_is_closed_not_a_failure_of_apply(
    tmp_path: Path,
) -> None:
    """A close (a SIGTERM handler's, another thread's) while attach reads where to start:
    the attach ends as any call on a closed runtime, not with a projection that stopped
    on the closed store and blames its apply."""

    class ClosedWhileStarting(RunMetrics):
        def initial(self) -> RunMetricsState:
            closing_on_another_thread(rt)
            return super().initial()

    rt = fl.Runtime.open(tmp_path / "s")
    closed = pytest.raises(fl.ConfigError, match="this runtime is closed")
    with capture_logs(logging.ERROR) as logs, closed:
        rt.attach(ClosedWhileStarting(), reset=True)
    assert rt.closed
    assert not [e for e in logs if e.get("event") == "projection_stopped"]


def closing_on_another_thread(rt: fl.Runtime) -> None:
    """Close ``rt`` as a signal handler or another thread would, while a call is inside."""
    closing = threading.Thread(target=rt.close)
    closing.start()
    closing.join(30)


def test_an_attach_whose_checkpoint_read_the_close_cuts_is_closed_not_rebuilt(
    tmp_path: Path,
) -> None:
    """The checkpoint read fails because the store closed, not because the checkpoint is
    unreadable: no "rebuilt" warning, the closed runtime's error."""

    class ClosedBeforeItsCheckpoint(RunMetrics):
        @property
        def stored(self) -> bool:
            closing_on_another_thread(rt)
            return True

    rt = fl.Runtime.open(tmp_path / "s")
    closed = pytest.raises(fl.ConfigError, match="this runtime is closed")
    with capture_logs(logging.INFO) as logs, closed:
        rt.attach(ClosedBeforeItsCheckpoint())
    assert not [e for e in logs if e.get("event") == "projection_rebuilt"]


def test_a_subscribe_the_runtime_closes_under_is_closed_not_a_store_error(
    tmp_path: Path,
) -> None:
    rt = fl.Runtime.open(tmp_path / "s")

    def types_read_as_the_runtime_closes() -> Iterator[str]:
        closing_on_another_thread(rt)
        yield "run.started"

    with pytest.raises(fl.ConfigError, match="this runtime is closed"):
        rt.subscribe(lambda rec: None, types=types_read_as_the_runtime_closes())


def test_an_attach_right_after_a_detach_goes_on_from_where_the_detach_left_it(
    tmp_path: Path,
) -> None:
    """detach() returns once its checkpoint can be read back: the checkpoint of the last
    page was written without waiting, and a new attach read the one before it (and
    applied a page again)."""
    applied: list[int] = []

    class Slow(Positions):
        name = "slow-positions"

        def apply(self, state: tuple[int, ...], record: fl.types.Recorded) -> tuple[int, ...]:
            applied.append(record.position)
            return super().apply(state, record)

    with fl.Runtime.open(tmp_path / "s", agents=[agent()]) as rt:
        for handle in rt.spawn_many(agent(), ["go"] * 300):
            assert handle.wait(timeout=30).ok
        for _ in range(3):  # each round: detach as a page is done, attach at once
            first = rt.attach(Slow(), checkpoint_every=0.001)
            wait_until(lambda h=first: h.position > 0, 30, "a page to be applied")
            first.detach()
        last = rt.attach(Slow())
        last.catch_up(timeout=60)
        assert len(applied) == len(set(applied)), "records applied again after a detach"
        assert last.state == tuple(range(1, last.position + 1))


def test_the_prometheus_helpers_say_what_they_take(rt: fl.Runtime) -> None:
    handle = rt.attach(RunMetrics())
    with pytest.raises(fl.ConfigError, match="prometheus_text takes a RunMetricsState"):
        prometheus_text(handle)  # type: ignore[arg-type]
    for wrong in (handle.state, None, 5):
        with pytest.raises(fl.ConfigError, match="serve_prometheus takes an attached"):
            fl.projections.serve_prometheus(wrong, port=0)


def test_a_stopped_projection_logs_the_traceback_of_its_apply(rt: fl.Runtime) -> None:
    def apply(state: int, record: fl.types.Recorded) -> int:
        raise ValueError("no such field")

    with capture_logs() as logs:
        handle = rt.attach(fl.projections.Projection("breaks", initial=int, apply=apply))
        assert rt.spawn(agent(), "go").wait(timeout=30).ok
        wait_until(lambda: handle.error is not None, 30, "the projection to stop")
        wait_until(
            lambda: any(r.get("event") == "projection_stopped" for r in logs),
            10,
            "projection_stopped to be logged",
        )
    (record,) = [r for r in logs if r.get("event") == "projection_stopped"]
    assert record.get("exc_info"), record
