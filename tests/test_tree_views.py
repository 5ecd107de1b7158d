"""Seeing a run tree: approvals found from their root, RunMetrics by root, OpenTelemetry
spans of a child under its parent's call, and verify over a whole tree."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import foldloop as fl
from foldloop.cli import app
from foldloop.events import ChildEnded, RunStarted, Usage
from tests.tree_models import answers, fans_out
from tests.waiting import wait_until

USAGE = Usage(input_tokens=7, output_tokens=3, cost_usd=0.1)
"""Every model call's usage: a dollar figure whose sums are not exact in binary."""


def two_level_lead() -> fl.Agent:
    """lead -> (editor -> 2 researchers), researcher: four child runs, depth 2."""
    researcher = fl.Agent(name="researcher", llm=fl.ScriptedLLM(answers("found", USAGE)))
    editor = fl.Agent(
        name="editor",
        llm=fl.ScriptedLLM(fans_out(("researcher", "cats"), ("researcher", "dogs"), usage=USAGE)),
        agents=[researcher],
    )
    return fl.Agent(
        name="lead",
        llm=fl.ScriptedLLM(fans_out(("editor", "pets"), ("researcher", "birds"), usage=USAGE)),
        agents=[editor, researcher],
        limits=fl.Limits(max_steps=40),
    )


def test_an_approval_deep_in_a_tree_names_its_root(store_path: Path) -> None:
    @fl.tool
    def publish(text: str) -> str:
        """Publish the text."""
        return f"published {text}"

    def publishes(messages: Sequence[fl.Message], tools: Sequence[object]) -> fl.Reply:
        if not any(m.role == "tool" for m in messages):
            return fl.Reply(tool_calls=[fl.ToolCall("publish", {"text": "it"})])
        return fl.Reply(text="done")

    notified: list[fl.types.PendingApproval] = []
    publisher = fl.Agent(
        name="publisher",
        llm=fl.ScriptedLLM(publishes),
        tools=[publish],
        approvals=fl.RequireApproval({"publish"}, notify=notified.append),
    )
    editor = fl.Agent(
        name="editor",
        llm=fl.ScriptedLLM(fans_out(("publisher", "go"), usage=USAGE)),
        agents=[publisher],
    )
    lead = fl.Agent(
        name="lead",
        llm=fl.ScriptedLLM(fans_out(("editor", "go"), usage=USAGE)),
        agents=[editor],
        limits=fl.Limits(max_steps=30),
    )
    with fl.Runtime.open(store_path, agents=[lead]) as rt:
        tree = rt.spawn(lead, "go")
        solo = rt.spawn(publisher, "alone")  # a root with its own request
        wait_until(lambda: len(rt.pending_approvals()) == 2, 30, "two pending approvals")
        rows = {p.run_id: p for p in rt.pending_approvals()}
        assert rows[solo.id].root_run_id == solo.id
        (deep,) = [p for run_id, p in rows.items() if run_id != solo.id]
        assert rt.state(deep.run_id).depth == 2
        assert deep.root_run_id == tree.id
        assert deep.run_id in [node.run_id for node in rt.tree(deep.root_run_id).walk()]
        # the root's explain says where a person is needed, below it
        step = f"decide the pending approvals of {deep.run_id} below it (foldloop approvals)"
        assert rt.explain(tree.id).next_steps[0] == step
        shown = CliRunner().invoke(app, ["--store", str(store_path), "explain", tree.id])
        assert f"next: {step}" in " ".join(shown.output.split()), shown.output
        wait_until(lambda: len(notified) == 2, 10, "both requests handed to notify")
        assert {p.run_id: p.root_run_id for p in notified} == {
            p.run_id: p.root_run_id for p in rows.values()
        }

        rt.approve(run_id=deep.run_id, call_id=deep.call_id, by="test")
        assert tree.wait(timeout=30).ok


def test_a_request_below_a_cancelled_run_is_no_ones_to_decide(store_path: Path) -> None:
    """The root is cancelled where nothing drives its tree (its cascade waits for a runtime
    with the agents): approving the request below it is refused, not recorded for a tool
    that must not run."""
    ran: list[str] = []

    @fl.tool
    def publish(text: str) -> str:
        """Publish the text."""
        ran.append(text)
        return f"published {text}"

    def publishes(messages: Sequence[fl.Message], tools: Sequence[object]) -> fl.Reply:
        if not any(m.role == "tool" for m in messages):
            return fl.Reply(tool_calls=[fl.ToolCall("publish", {"text": "it"})])
        return fl.Reply(text="done")

    publisher = fl.Agent(
        name="publisher",
        llm=fl.ScriptedLLM(publishes),
        tools=[publish],
        approvals=fl.RequireApproval({"publish"}),
    )
    lead = fl.Agent(
        name="lead", llm=fl.ScriptedLLM(fans_out(("publisher", "go"))), agents=[publisher]
    )
    with fl.Runtime.open(store_path, agents=[lead]) as rt:
        root = rt.spawn(lead, "go")
        wait_until(lambda: len(rt.pending_approvals()) == 1, 30, "the child's request")
        (pending,) = rt.pending_approvals()
    with fl.Runtime.open(store_path) as elsewhere:
        elsewhere.handle(root.id).cancel(reason="stop")
        assert elsewhere.state(root.id).status is fl.RunStatus.CANCELLED
        assert elsewhere.pending_approvals() == []  # not listed for anyone to decide
        # refused as below an ended tree, or, once the cascade got there, as ended itself
        ended = "in a tree that ended above it|the run ended before anyone decided"
        with pytest.raises(fl.ApprovalError, match=ended):
            elsewhere.approve(run_id=pending.run_id, call_id=pending.call_id, by="late")
    with fl.Runtime.open(store_path, agents=[lead]) as rt:
        rt.recover()
        wait_until(
            lambda: rt.state(pending.run_id).status is fl.RunStatus.CANCELLED, 20, "the cascade"
        )
    assert ran == []


def test_run_metrics_add_up_each_tree_under_its_root(store_path: Path) -> None:
    lead = two_level_lead()
    plain = fl.Agent(name="plain", llm=fl.ScriptedLLM(answers("plain", USAGE)))
    with fl.Runtime.open(store_path, agents=[lead, plain]) as rt:
        runs = [rt.spawn(lead, "go"), rt.spawn(plain, "alone"), rt.spawn(lead, "again")]
        assert all(run.wait(timeout=30).ok for run in runs)
        metrics = rt.attach(fl.projections.RunMetrics())
        metrics.catch_up(timeout=30)
        state: fl.projections.RunMetricsState = metrics.state
        assert sorted(state.by_root) == sorted(run.id for run in runs)
        for run in runs:
            nodes = rt.tree(run.id).walk()
            totals = state.by_root[run.id]
            assert totals.runs == len(nodes)
            assert totals.model_calls == sum(node.steps for node in nodes)
            records = [r for n in nodes for r in rt.events(n.run_id)]
            assert totals.tool_calls == [r.type for r in records].count("tool.requested")
            assert totals.tokens_in == sum(node.usage.input_tokens for node in nodes)
            assert totals.tokens_out == sum(node.usage.output_tokens for node in nodes)
            assert totals.cost_usd == pytest.approx(rt.tree(run.id).spent.cost_usd)
            for node in nodes:
                assert state.root_of(node.run_id) == run.id
        assert state.by_root[runs[0].id].runs == 5  # lead, editor, 3 researchers
        assert sum(t.model_calls for t in state.by_root.values()) == state.model_calls
        assert "foldloop_model_calls" in fl.projections.prometheus_text(state)

        # the checkpoint keeps the trees: a re-attach continues from it, folding nothing new
        metrics.detach()
        again = rt.attach(fl.projections.RunMetrics())
        again.catch_up(timeout=30)
        assert again.state.by_root == state.by_root
        assert again.state.runs == state.runs
        projection = fl.projections.RunMetrics()
        assert projection.decode_state(projection.encode_state(state)) == state


def test_a_child_runs_span_nests_under_its_parents_call(store_path: Path) -> None:
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    lead = two_level_lead()
    with fl.Runtime.open(store_path, agents=[lead]) as rt:
        follow = rt.subscribe(fl.projections.OtelSpans(provider))
        run = rt.spawn(lead, "go")
        assert run.wait(timeout=30).ok
        follow.catch_up()
        nodes = rt.tree(run.id).walk()
        parents = {n.run_id: rt.state(n.run_id) for n in nodes}
    spans = exporter.get_finished_spans()

    def attr(span: ReadableSpan, key: str) -> Any:
        assert span.attributes is not None
        return span.attributes.get(key)

    run_spans = {attr(s, "foldloop.run_id"): s for s in spans if s.name == "foldloop.run"}
    call_spans = {
        (attr(s, "foldloop.run_id"), attr(s, "foldloop.call_id")): s
        for s in spans
        if s.name == "foldloop.tool_call"
    }
    assert sorted(run_spans) == sorted(n.run_id for n in nodes)
    root = run_spans[run.id]
    assert root.parent is None
    assert attr(root, "foldloop.agent") == "lead"
    for node in nodes[1:]:
        state = parents[node.run_id]
        span = run_spans[node.run_id]
        call = call_spans[(state.parent_run_id, state.parent_call_id)]
        assert span.parent is not None and span.parent.span_id == call.context.span_id
        assert span.context.trace_id == root.context.trace_id  # the tree is one trace
        times = (call.start_time, span.start_time, span.end_time, call.end_time)
        assert all(t is not None for t in times)
        assert list(times) == sorted(times)  # type: ignore[type-var]
        assert attr(span, "foldloop.parent_run_id") == state.parent_run_id
        assert attr(span, "foldloop.agent") == node.agent


CLI_LEAD = "tests.test_tree_views:cli_lead"


def cli_lead() -> fl.Agent:
    """The tree's lead, for ``foldloop verify --agent tests.test_tree_views:cli_lead``."""
    return two_level_lead()


def test_verify_checks_a_whole_tree_and_the_links_between_its_runs(
    store_path: Path, tmp_path: Path
) -> None:
    lead = two_level_lead()
    with fl.Runtime.open(store_path, agents=[lead]) as rt:
        run = rt.spawn(lead, "go")
        assert run.wait(timeout=30).ok
        nodes = rt.tree(run.id).walk()
        states = rt.verify(run.id, tree=True)
        assert list(states) == [n.run_id for n in nodes]  # depth first, in start order
        assert all(states[n.run_id] == rt.state(n.run_id) for n in nodes)
        with pytest.raises(fl.errors.ConfigError, match="tree must be True or False"):
            rt.verify(run.id, tree="yes")  # type: ignore[call-overload]
        exports = {n.run_id: list(rt.export(n.run_id)) for n in nodes}
    result = CliRunner().invoke(
        app,
        ["--store", str(store_path), "verify", run.id, "--tree", "--agent", CLI_LEAD],
    )
    assert result.exit_code == 0, result.output
    assert f"in 5 runs of {run.id} replay identically" in result.stdout

    # A researcher's log that says it spent more than its parent recorded: each log
    # replays on its own, the tree does not.
    leaf = nodes[-1].run_id

    def costlier(line: str) -> str:
        record = json.loads(line)
        event = record.get("event", {})
        if event.get("type") == "model.responded":
            event["usage"]["input_tokens"] += 1
        return json.dumps(record)

    other = tmp_path / "tampered"
    with fl.Runtime.open(other, agents=[lead]) as rt:
        for run_id, lines in exports.items():
            rt.import_jsonl(map(costlier, lines) if run_id == leaf else lines)
        for run_id in exports:
            rt.verify(run_id)
        with pytest.raises(fl.errors.NondeterminismError) as caught:
            rt.verify(run.id, tree=True)
        assert caught.value.run_id == run.id  # the parent's record of its child is off
        recorded, new = caught.value.recorded, caught.value.new
        assert isinstance(recorded, ChildEnded) and isinstance(new, ChildEnded)
        assert (recorded.run_id, recorded.steps) == (leaf, new.steps)
        assert recorded.usage.input_tokens + 1 == new.usage.input_tokens

    # A child whose run.started names another call of its parent than the one that started it.
    def moved(line: str) -> str:
        record = json.loads(line)
        event = record.get("event", {})
        if event.get("type") == "run.started":
            event["parent_call_id"] = "call_elsewhere"
        return json.dumps(record)

    third = tmp_path / "relinked"
    with fl.Runtime.open(third, agents=[lead]) as rt:
        for run_id, lines in exports.items():
            rt.import_jsonl(map(moved, lines) if run_id == leaf else lines)
        rt.verify(leaf)
        with pytest.raises(fl.errors.NondeterminismError) as caught:
            rt.verify(run.id, tree=True)
        assert (caught.value.run_id, caught.value.seq) == (leaf, 1)
        assert isinstance(caught.value.new, RunStarted)
        assert caught.value.new.parent_call_id == nodes[-1].call_id


def test_a_roots_explain_says_a_lapsed_request_below_it_is_asked_again_by_resume(
    store_path: Path,
) -> None:
    @fl.tool
    def publish(text: str) -> str:
        """Publish text."""
        return f"published {text}"

    now = [1_000_000_000_000]
    publisher = fl.Agent(
        name="publisher",
        llm=fl.ScriptedLLM(
            [fl.Reply(tool_calls=[fl.ToolCall("publish", {"text": "x"})]), fl.Reply(text="ok")]
        ),
        tools=[publish],
        approvals=fl.RequireApproval({"publish"}, ttl=60),
    )
    lead = fl.Agent(
        name="lead", llm=fl.ScriptedLLM(fans_out(("publisher", "go"))), agents=[publisher]
    )
    with fl.Runtime.open(store_path, agents=[lead], clock=lambda: now[0]) as rt:
        tree = rt.spawn(lead, "go")
        wait_until(lambda: len(rt.pending_approvals()) == 1, 30, "the request below the root")
        (request,) = rt.pending_approvals()
        now[0] += 61 * 10**9
        wait_until(
            lambda: any(r.type == "approval.expired" for r in rt.events(request.run_id)),
            10,
            "the request to lapse",
        )
        first = rt.explain(tree.id).next_steps[0]
        assert first == (
            f"the approval requests of {request.run_id} below it expired: rt.resume(<that run>) "
            "asks again with new tokens"
        )
        rt.resume(request.run_id)
        wait_until(lambda: len(rt.pending_approvals()) == 1, 30, "the request asked again")
        rt.approve(rt.pending_approvals()[0].token, by="test")
        assert tree.wait(timeout=30).ok
