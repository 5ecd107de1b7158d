"""The Runtime through its public API: tools, limits, cancel, resume, verify, locks."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import lmdb
import msgspec
import pytest

import foldloop as fl
from foldloop.actors import _tool_actor
from foldloop.core import fold
from tests.log_capture import capture_logs
from tests.peak import Peak
from tests.waiting import logged, wait_until


@fl.tool(idempotent=True)
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


def types(rt: fl.Runtime, run_id: str) -> list[str]:
    return [r.type for r in rt.events(run_id)]


def test_a_run_completes_and_its_log_tells_the_story(rt: fl.Runtime) -> None:
    llm = fl.ScriptedLLM(
        [fl.Reply(tool_calls=[fl.ToolCall("add", {"a": 2, "b": 3})]), fl.Reply(text="5")]
    )
    agent = fl.Agent(name="calc", llm=llm, tools=[add], instructions="Be exact.")
    run = rt.spawn(agent, "What is 2+3?", metadata={"user": "u1"})
    result = run.wait(timeout=30)
    assert (result.status, result.output, result.steps, result.resumable) == (
        fl.RunStatus.COMPLETED,
        "5",
        2,
        False,
    )
    assert result.usage.input_tokens > 0 and result.usage.output_tokens > 0
    assert types(rt, run.id) == [
        "run.started",
        "model.requested",
        "model.responded",
        "tool.requested",
        "tool.completed",
        "model.requested",
        "model.responded",
        "run.completed",
    ]
    state = rt.state(run.id)
    assert [m.role for m in state.messages] == ["system", "user", "assistant", "tool", "assistant"]
    assert state.messages[3].content == "5"
    assert [s.run_id for s in rt.runs(status=fl.RunStatus.COMPLETED)] == [run.id]
    assert rt.runs(agent="other") == []
    assert [r.run_id for r in rt.read_all()] == [run.id] * 8
    assert rt.verify(run.id).status is fl.RunStatus.COMPLETED


def test_tool_calls_of_one_reply_run_concurrently_and_answer_in_order(rt: fl.Runtime) -> None:
    barrier = threading.Barrier(3, timeout=10)

    def recorded(name: str) -> bool:
        return any(
            r.type == "tool.completed" and r.event.result == f"hello {name}"
            for r in rt.events("meet")
        )

    @fl.tool
    def meet(name: str, after: str) -> str:
        """Wait for the other calls (only possible if they run at the same time), then
        for the outcome of ``after`` to be in the log: they finish in the reverse order."""
        barrier.wait()
        if after:
            wait_until(lambda: recorded(after), 10, f"call {after!r} recorded before {name!r}")
        return f"hello {name}"

    calls = [
        fl.ToolCall("meet", {"name": n, "after": after})
        for n, after in (("a", "b"), ("b", "c"), ("c", ""))
    ]
    agent = fl.Agent(
        name="meet",
        llm=fl.ScriptedLLM([fl.Reply(tool_calls=calls), fl.Reply(text="ok")]),
        tools=[meet],
    )
    run = rt.spawn(agent, "go", run_id="meet")
    assert run.wait(timeout=30).status is fl.RunStatus.COMPLETED
    completed = [r.event.call_id for r in rt.events(run.id) if r.type == "tool.completed"]
    assert completed == ["call_1_3", "call_1_2", "call_1_1"]  # finished in reverse
    tool_msgs = [m for m in rt.state(run.id).messages if m.role == "tool"]
    assert [m.content for m in tool_msgs] == ["hello a", "hello b", "hello c"]  # asked order


def test_a_tool_past_its_timeout_fails_with_kind_timeout_and_the_run_goes_on(
    rt: fl.Runtime,
) -> None:
    release, returned = threading.Event(), threading.Event()

    @fl.tool(timeout=0.2)
    def slow() -> str:
        """Take too long."""
        release.wait(10)
        returned.set()
        return "late"

    llm = fl.ScriptedLLM([fl.Reply(tool_calls=[fl.ToolCall("slow")]), fl.Reply(text="gave up")])
    with capture_logs() as logs:
        run = rt.spawn(fl.Agent(name="slow", llm=llm, tools=[slow]), "go")
        try:
            assert run.wait(timeout=30).output == "gave up"
        finally:
            release.set()
        failed = [r.event for r in rt.events(run.id) if r.type == "tool.failed"]
        assert [(f.kind, f.error) for f in failed] == [
            ("timeout", "tool 'slow' did not finish within 0.2 s")
        ]
        # The late outcome comes back after its timeout was reported: dropped.
        assert returned.wait(10)
        wait_until(lambda: logged(logs, "tool_result_late", run_id=run.id), 10, "the drop")
    assert "tool.completed" not in types(rt, run.id)


def test_the_call_behind_a_timed_out_one_starts_before_the_timeout_is_logged(
    rt: fl.Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The first log record of a process may take long (its logging set up then): the
    # call's place is handed on first.
    release, second = threading.Event(), threading.Event()

    @fl.tool(timeout=0.2, concurrency=1, idempotent=True)
    def one_at_a_time(n: int) -> str:
        """Hang on the first call."""
        if n == 1:
            release.wait(30)  # past the log's wait below: only the timeout frees its place
        else:
            second.set()
        return str(n)

    seen_at_log: list[bool] = []

    class SlowLog:
        def warning(self, event: str, **fields: object) -> None:
            if event == "tool_timed_out":
                seen_at_log.append(second.wait(5))

    monkeypatch.setattr(_tool_actor, "log", SlowLog())
    calls = [fl.ToolCall("one_at_a_time", {"n": 1}), fl.ToolCall("one_at_a_time", {"n": 2})]
    llm = fl.ScriptedLLM([fl.Reply(tool_calls=calls), fl.Reply(text="ok")])
    try:
        run = rt.spawn(fl.Agent(name="queued", llm=llm, tools=[one_at_a_time]), "go")
        assert run.wait(timeout=30).ok
    finally:
        release.set()
    assert seen_at_log == [True], "the queued call waited for the timeout's log record"


def stuck_agent() -> tuple[fl.Agent, threading.Event, threading.Event]:
    """An agent whose one tool call blocks (on the tool's pool) until ``release`` is set;
    ``started`` says it is running."""
    started, release = threading.Event(), threading.Event()

    @fl.tool(timeout=60)
    def stuck() -> str:
        """Block until released."""
        started.set()
        release.wait(20)
        return "late"

    llm = fl.ScriptedLLM([fl.Reply(tool_calls=[fl.ToolCall("stuck")]), fl.Reply(text="no")])
    return fl.Agent(name="stuck", llm=llm, tools=[stuck]), started, release


def calls_with_input(tool: str) -> fl.ScriptedLLM:
    """A model that calls ``tool`` once with ``n``, the run's input as an int, then says ok."""

    def model(messages: Sequence[fl.Message], tools: Sequence[fl.types.ToolSpec]) -> fl.Reply:
        if any(m.role == "tool" for m in messages):
            return fl.Reply(text="ok")
        return fl.Reply(tool_calls=[fl.ToolCall(tool, {"n": int(messages[-1].content)})])

    return fl.ScriptedLLM(model)


def narrow_agent() -> tuple[fl.Agent, threading.Event, threading.Event, list[int]]:
    """An agent whose runs each call one tool of ``concurrency=1`` with the run's input as
    ``n``: call 1 holds the tool's only thread until ``release``; ``ran`` lists the calls
    that started; ``started`` says call 1 did."""
    started, release = threading.Event(), threading.Event()
    ran: list[int] = []

    @fl.tool(concurrency=1)
    def one_at_a_time(n: int) -> str:
        """Block the first call until released."""
        ran.append(n)
        if n == 1:
            started.set()
            release.wait(20)
        return f"done {n}"

    agent = fl.Agent(name="narrow", llm=calls_with_input("one_at_a_time"), tools=[one_at_a_time])
    return agent, started, release, ran


def test_cancel_is_immediate_while_a_tool_runs(rt: fl.Runtime) -> None:
    agent, started, release = stuck_agent()
    with capture_logs() as logs:
        run = rt.spawn(agent, "go")
        try:
            assert started.wait(10)
            run.cancel(reason="enough")
            result = run.wait(timeout=5)
            assert not release.is_set()  # settled while the tool was still running
        finally:
            release.set()
        assert result.status is fl.RunStatus.CANCELLED
        assert types(rt, run.id)[-2:] == ["tool.requested", "run.cancelled"]
        # A sync tool cannot be stopped: its effect happened, and its outcome, come after
        # the run's end, is recorded after it (acted on by nothing)
        wait_until(lambda: logged(logs, "late_tool_outcome_recorded", run_id=run.id), 10, "it")
    assert types(rt, run.id)[-2:] == ["run.cancelled", "tool.completed"]
    state = rt.state(run.id)
    assert state.status is fl.RunStatus.CANCELLED and state.calls[0].status == "completed"
    assert rt.verify(run.id).status is fl.RunStatus.CANCELLED  # as decide records it


def test_a_close_right_after_a_cancel_waits_for_the_tool_and_records_its_outcome(
    store_path: Path,
) -> None:
    """The run is cancelled while its sync tool runs, and the runtime closed at once: the
    close waits for the call (as for a run still going) and its outcome lands after the
    cancel, not lost with the runtime."""
    agent, started, release = stuck_agent()
    rt = fl.Runtime.open(store_path, agents=[agent])
    run = rt.spawn(agent, "go")
    assert started.wait(10)
    run.cancel(reason="enough")
    assert run.wait(timeout=5).status is fl.RunStatus.CANCELLED
    closing = threading.Thread(target=rt.close)
    with capture_logs() as logs:
        closing.start()
        wait_until(lambda: logged(logs, "close_waits_for_tool_calls"), 10, "the close to wait")
        release.set()
        closing.join(30)
    assert not closing.is_alive()
    with fl.Runtime.open(store_path, agents=[agent]) as again:
        assert types(again, run.id)[-2:] == ["run.cancelled", "tool.completed"]


def test_cancels_racing_tools_lose_nothing(rt: fl.Runtime) -> None:
    # Cancels land before, during and after tool calls: every run must settle, cancelled
    # ones with nothing after run.cancelled but the outcomes of the calls under way then.
    in_tool, cancelled = threading.Event(), threading.Event()

    @fl.tool(timeout=5)
    def nap(ms: int) -> str:
        """Sleep a few milliseconds (ms < 0: until the test has cancelled the run)."""
        if ms < 0:
            in_tool.set()
            assert cancelled.wait(10)
            ms = 10
        time.sleep(ms / 1000)
        return f"slept {ms}"

    # Eight runs. The first run's first call holds until it is cancelled, so one cancel at
    # least is sure to land while a tool runs; the others land where they fall.
    replies = [fl.Reply(tool_calls=[fl.ToolCall("nap", {"ms": 10 + i % 7})]) for i in range(6)]
    agent = fl.Agent(name="nap", llm=fl.ScriptedLLM([*replies, fl.Reply(text="ok")]), tools=[nap])
    held_first = [fl.Reply(tool_calls=[fl.ToolCall("nap", {"ms": -1})]), *replies[1:]]
    held = fl.Agent(
        name="nap_held", llm=fl.ScriptedLLM([*held_first, fl.Reply(text="ok")]), tools=[nap]
    )
    try:
        runs = [rt.spawn(held if i == 0 else agent, "go") for i in range(8)]
        for i, run in enumerate(runs[2::2]):
            time.sleep(0.004 * (i % 4))  # spreads the racing cancels over the steps
            run.cancel(reason="race")
        assert in_tool.wait(10)
        runs[0].cancel(reason="race")
        cancelled.set()
        results = [run.wait(timeout=30) for run in runs]
    finally:
        cancelled.set()
    # Cancelled while its tool ran: the late outcome recorded after the cancel.
    assert results[0].status is fl.RunStatus.CANCELLED
    wait_until(lambda: types(rt, runs[0].id)[-1] == "tool.completed", 10, "the late outcome")
    assert types(rt, runs[0].id)[-2:] == ["run.cancelled", "tool.completed"]
    for run, result in zip(runs, results, strict=True):
        assert result.status in (fl.RunStatus.COMPLETED, fl.RunStatus.CANCELLED), result
        kinds = types(rt, run.id)
        end = kinds.index("run.completed" if result.ok else "run.cancelled")
        assert set(kinds[end + 1 :]) <= {"tool.completed"}, kinds  # late outcomes only
        asked, done = kinds.count("tool.requested"), kinds.count("tool.completed")
        # a call cancelled while it waited for a thread never ran: no outcome to come
        assert (asked, done) == (6, 6) if result.ok else done <= asked <= done + 1
    assert all(r.ok for r in results[1::2])  # the ones nobody cancelled


def test_a_tool_concurrency_bound_holds_across_runs(rt: fl.Runtime) -> None:
    peak = Peak()

    @fl.tool(concurrency=1)
    def narrow(i: int) -> str:
        """One at a time."""
        with peak:
            time.sleep(0.02)
        return str(i)

    replies = [fl.Reply(tool_calls=[fl.ToolCall("narrow", {"i": i})]) for i in range(3)]
    agent = fl.Agent(
        name="narrow", llm=fl.ScriptedLLM([*replies, fl.Reply(text="ok")]), tools=[narrow]
    )
    runs = [rt.spawn(agent, "go") for _ in range(4)]
    assert all(r.wait(timeout=30).status is fl.RunStatus.COMPLETED for r in runs)
    assert peak.most == 1
    assert sum(types(rt, r.id).count("tool.completed") for r in runs) == 12


def test_a_tool_concurrency_bound_holds_across_the_agents_that_share_the_tool(
    rt: fl.Runtime,
) -> None:
    # The bound is the tool's (one rate-limited API, say), not one per agent listing it.
    peak = Peak()

    @fl.tool(concurrency=1)
    def narrow(i: int) -> str:
        """One at a time, whoever calls."""
        with peak:
            time.sleep(0.02)
        return str(i)

    @fl.tool(concurrency=1)
    async def narrow_async(i: int) -> str:
        """One at a time on the loop too."""
        with peak:
            await asyncio.sleep(0.02)
        return str(i)

    for tool in (narrow, narrow_async):
        peak.most = 0
        replies = [fl.Reply(tool_calls=[fl.ToolCall(tool.name, {"i": i})]) for i in range(3)]
        agents = [
            fl.Agent(
                name=f"{tool.name}-{n}",
                llm=fl.ScriptedLLM([*replies, fl.Reply(text="ok")]),
                tools=[tool],
            )
            for n in range(3)
        ]
        runs = [rt.spawn(agent, "go") for agent in agents for _ in range(2)]
        assert all(r.wait(timeout=30).status is fl.RunStatus.COMPLETED for r in runs)
        assert peak.most == 1, tool.name  # before: one call at a time per agent, 3 at once


def test_closing_records_a_tool_call_that_returns_within_its_timeout(store_path: Path) -> None:
    """A sync tool cannot be stopped: its effect happens whatever the runtime does, so
    close() waits for it and records its outcome (no interrupted failure, nothing run twice),
    and starts no model call meanwhile."""
    agent, started, release = stuck_agent()
    rt = fl.Runtime.open(store_path, agents=[agent])
    run = rt.spawn(agent, "go")
    assert started.wait(10)
    closing = threading.Thread(target=rt.close)
    with capture_logs() as logs:
        closing.start()
        wait_until(lambda: logged(logs, "close_waits_for_tool_calls", calls=1), 10, "close to wait")
        release.set()
        closing.join(30)
    assert not closing.is_alive()
    with fl.Runtime.open(store_path, agents=[agent]) as again:
        kinds = types(again, run.id)
        assert (
            "tool.completed" in kinds
            and "model.responded" not in kinds[kinds.index("tool.completed") :]
        )
        again.recover()
        assert again.handle(run.id).wait(timeout=10).output == "no"
        kinds = types(again, run.id)
        assert kinds.count("tool.completed") == 1 and "tool.failed" not in kinds


class GatedLLM(fl.ScriptedLLM):
    """A scripted model whose first call is awaited on the loop and answers once ``answer``
    is set; ``called`` is set as the call begins."""

    def __init__(self, replies: Sequence[fl.Reply]) -> None:
        super().__init__(replies, latency_s=0.001)  # a latency: awaited on the loop
        self.called = threading.Event()
        self.answer = threading.Event()

    async def acomplete(
        self,
        messages: Sequence[fl.Message],
        tools: Sequence[fl.types.ToolSpec],
        *,
        max_tokens: int | None = None,
    ) -> fl.Reply:
        if not self.called.is_set():
            self.called.set()
            while not self.answer.is_set():
                await asyncio.sleep(0.005)
        return await super().acomplete(messages, tools, max_tokens=max_tokens)


def test_a_model_reply_that_comes_while_closing_starts_no_tool(store_path: Path) -> None:
    """While close() waits for one run's tool, another run's model reply arrives: it is not
    recorded and its tool call never starts (the drain would not wait for it); the resumed
    run asks the model again and pays once."""
    agent, started, release = stuck_agent()
    paid: list[str] = []

    @fl.tool
    def pay(to: str) -> str:
        """Pay someone."""
        paid.append(to)
        return f"paid {to}"

    llm = GatedLLM(
        [fl.Reply(tool_calls=[fl.ToolCall("pay", {"to": "bob"})]), fl.Reply(text="paid")]
    )
    payer = fl.Agent(name="payer", llm=llm, tools=[pay])
    rt = fl.Runtime.open(store_path, agents=[agent, payer])
    rt.spawn(agent, "go")
    assert started.wait(10)
    run = rt.spawn(payer, "pay bob")
    # the call made (model.requested is in the log before it is: the call follows the append)
    assert llm.called.wait(10)
    closing = threading.Thread(target=rt.close)
    with capture_logs() as logs:
        closing.start()
        wait_until(lambda: logged(logs, "close_waits_for_tool_calls"), 10, "the close to begin")
        llm.answer.set()
        wait_until(lambda: logged(logs, "command_dropped_at_close", run_id=run.id), 10, "the reply")
        release.set()
        closing.join(30)
    assert not closing.is_alive() and paid == []
    with fl.Runtime.open(store_path, agents=[agent, payer]) as again:
        assert "tool.requested" not in types(again, run.id)
        again.recover()
        assert again.handle(run.id).wait(timeout=10).output == "paid"
    assert paid == ["bob"]


def test_a_call_waiting_for_its_tools_thread_does_not_start_while_closing(
    store_path: Path,
) -> None:
    """One call holds the tool's only thread as close() begins; the other run's call waits
    for it: it never starts, and its outcome says it did not run (not 'interrupted' with
    the outcome unknown)."""
    agent, started, release, ran = narrow_agent()
    rt = fl.Runtime.open(store_path, agents=[agent])
    holding = rt.spawn(agent, "1")
    assert started.wait(10)
    waiting = rt.spawn(agent, "2")
    wait_until(lambda: "tool.requested" in types(rt, waiting.id), 10, "the second call")
    closing = threading.Thread(target=rt.close)
    with capture_logs() as logs:
        closing.start()
        wait_until(lambda: logged(logs, "close_waits_for_tool_calls"), 10, "close to wait")
        release.set()
        closing.join(30)
    assert not closing.is_alive() and ran == [1]
    with fl.Runtime.open(store_path, agents=[agent]) as again:
        assert "tool.completed" in types(again, holding.id)
        (failed,) = [r.event for r in again.events(waiting.id) if r.type == "tool.failed"]
        assert failed.kind == "interrupted" and "did not run" in failed.error


def test_closing_does_not_wait_for_a_call_past_its_timeout(store_path: Path) -> None:
    """A hung call that timed out has its outcome recorded (timeout): close() has nothing
    to wait for, though the call's thread still runs."""
    release = threading.Event()

    @fl.tool(timeout=0.2)
    def hang() -> str:
        """Hang until released."""
        release.wait(30)
        return "late"

    llm = fl.ScriptedLLM([fl.Reply(tool_calls=[fl.ToolCall("hang")]), fl.Reply(text="gave up")])
    agent = fl.Agent(name="hang", llm=llm, tools=[hang])
    try:
        rt = fl.Runtime.open(store_path, agents=[agent])
        assert rt.spawn(agent, "go").wait(timeout=10).output == "gave up"
        closing = threading.Thread(target=rt.close)  # its default timeout is 10 s
        closing.start()
        closing.join(5)
        assert not closing.is_alive()
    finally:
        release.set()


def test_closing_waits_for_a_running_tool_only_its_timeout(store_path: Path) -> None:
    agent, started, release = stuck_agent()
    with capture_logs() as logs:
        try:
            with fl.Runtime.open(store_path, agents=[agent]) as rt:
                run = rt.spawn(agent, "go")
                assert started.wait(10)
                rt.close(timeout=0.2)
            assert not release.is_set()  # closed while the tool still ran
            assert logged(logs, "tool_calls_unfinished_at_close", run_ids=[run.id], calls=1)
        finally:
            release.set()
        # The tool's outcome comes back to a closed runtime: dropped, nothing written.
        wait_until(lambda: logged(logs, "tool_result_unclaimed", run_id=run.id), 10, "the drop")
    with fl.Runtime.open(store_path, agents=[agent]) as rt:
        assert types(rt, run.id)[-1] == "tool.requested"  # the late outcome was not written
        rt.recover()
        assert rt.handle(run.id).wait(timeout=10).output == "no"
        failed = [r.event.kind for r in rt.events(run.id) if r.type == "tool.failed"]
        assert failed == ["interrupted"]  # not run twice: its outcome is unknown


def test_a_timed_out_call_late_outcome_never_reaches_a_later_call_with_its_id(
    rt: fl.Runtime,
) -> None:
    # Some providers reuse call ids across steps. The first call times out and returns
    # while the second step's call (same id) is still running: the late "first" result
    # must be dropped, not recorded as the second call's outcome.
    first_back, second_started, second_go = (threading.Event() for _ in range(3))

    @fl.tool(timeout=0.2)
    def work(n: int) -> str:
        """Block in ways the test controls."""
        if n == 1:
            second_started.wait(10)
            first_back.set()
            return "first"
        second_started.set()
        second_go.wait(10)
        return "second"

    llm = fl.ScriptedLLM(
        [
            fl.Reply(tool_calls=[fl.ToolCall("work", {"n": 1}, id="same")]),
            fl.Reply(tool_calls=[fl.ToolCall("work", {"n": 2}, id="same")]),
            fl.Reply(text="done"),
        ]
    )
    with capture_logs() as logs:
        run = rt.spawn(fl.Agent(name="reuse", llm=llm, tools=[work]), "go")
        try:
            assert first_back.wait(10)
            # The first call's late outcome is dropped while the second call still runs.
            wait_until(lambda: logged(logs, "tool_result_late", run_id=run.id), 10, "the drop")
        finally:
            second_go.set()
    assert run.wait(timeout=30).output == "done"
    outcomes = [
        (r.type, getattr(r.event, "result", getattr(r.event, "kind", "")))
        for r in rt.events(run.id)
        if r.type in ("tool.completed", "tool.failed")
    ]
    assert outcomes == [("tool.failed", "timeout"), ("tool.completed", "second")]


def test_a_tool_that_raises_is_fed_back_to_the_model(rt: fl.Runtime) -> None:
    @fl.tool
    def boom(x: int) -> int:
        """Fail."""
        raise ValueError(f"bad {x}")

    seen: list[str] = []

    def model(messages: Sequence[fl.Message], tools: Sequence[fl.types.ToolSpec]) -> fl.Reply:
        if len(messages) == 1:
            return fl.Reply(tool_calls=[fl.ToolCall("boom", {"x": 7})])
        seen.append(messages[-1].content)
        return fl.Reply(text="sorry")

    run = rt.spawn(fl.Agent(name="boom", llm=fl.ScriptedLLM(model), tools=[boom]), "go")
    assert run.wait(timeout=30).status is fl.RunStatus.COMPLETED
    assert seen == ["error (exception): ValueError: bad 7"]
    assert [r.event.kind for r in rt.events(run.id) if r.type == "tool.failed"] == ["exception"]


def test_invalid_arguments_are_fed_back_then_three_in_a_step_fail_the_run(rt: fl.Runtime) -> None:
    llm = fl.ScriptedLLM(
        [
            fl.Reply(tool_calls=[fl.ToolCall("add", {"a": "two", "b": 3})]),
            fl.Reply(
                tool_calls=[
                    fl.ToolCall("add", '{"a": 1'),
                    fl.ToolCall("add", {"a": 1}),
                    fl.ToolCall("add", {"a": 1, "b": 2, "c": 3}),
                ]
            ),
        ]
    )
    run = rt.spawn(fl.Agent(name="bad", llm=llm, tools=[add]), "go")
    result = run.wait(timeout=30)
    assert result.status is fl.RunStatus.FAILED
    assert "invalid tool arguments 3 times in step 2" in result.reason
    failures = [r.event.error for r in rt.events(run.id) if r.type == "tool.failed"]
    assert "Expected `int`, got `str` - at `$.a`" in failures[0]
    assert "not valid JSON" in failures[1] and "missing required field `b`" in failures[2]
    assert "unknown field `c`" in failures[3]
    assert not result.resumable


def test_cancel_is_immediate_while_the_model_is_thinking(rt: fl.Runtime) -> None:
    llm = fl.ScriptedLLM([fl.Reply(text="too late")], latency_s=3)
    run = rt.spawn(fl.Agent(name="slowmodel", llm=llm), "go")
    wait_until(lambda: "model.requested" in types(rt, run.id), 10, "the model call to start")
    run.cancel(reason="user left")
    result = run.wait(timeout=2)
    assert result.status is fl.RunStatus.CANCELLED
    assert result.reason == "cancelled by the host: user left"
    assert types(rt, run.id)[-1] == "run.cancelled"


def test_a_limit_parks_the_run_and_resume_extends_it(rt: fl.Runtime) -> None:
    replies = [fl.Reply(tool_calls=[fl.ToolCall("add", {"a": i, "b": 1})]) for i in range(3)]
    agent = fl.Agent(
        name="lim",
        llm=fl.ScriptedLLM([*replies, fl.Reply(text="done")]),
        tools=[add],
        limits=fl.Limits(max_steps=2),
    )
    run = rt.spawn(agent, "count")
    parked = run.wait(timeout=30)
    assert (parked.status, parked.resumable, parked.steps) == (fl.RunStatus.LIMIT_REACHED, True, 2)
    assert "max_steps" in parked.reason and parked.resumable
    resumed = rt.resume(run.id, extend=fl.Limits(max_steps=10)).wait(timeout=30)
    assert (resumed.status, resumed.output, resumed.steps) == (fl.RunStatus.COMPLETED, "done", 4)
    assert "run.resumed" in types(rt, run.id)
    assert rt.verify(run.id).status is fl.RunStatus.COMPLETED
    with pytest.raises(fl.ConfigError, match="completed and cannot be resumed"):
        rt.resume(run.id)


def test_no_progress_stops_a_looping_run(rt: fl.Runtime) -> None:
    llm = fl.ScriptedLLM(lambda m, t: fl.Reply(tool_calls=[fl.ToolCall("add", {"a": 1, "b": 1})]))
    run = rt.spawn(fl.Agent(name="loop", llm=llm, tools=[add]), "go")
    result = run.wait(timeout=30)
    assert result.status is fl.RunStatus.NO_PROGRESS
    assert "same result 3 times" in result.reason and result.resumable
    (step,) = rt.explain(run.id).next_steps  # a resume keeps the recorded instructions
    assert step.startswith("start a new run with other tools or instructions"), step
    assert "extend=fl.Limits(no_progress=N)" in step


def test_max_seconds_uses_the_injected_clock(store_path: Path) -> None:
    ticks = itertools.count(0, 400_000_000)  # every reading is 0.4 s later
    with fl.Runtime.open(store_path, clock=lambda: next(ticks)) as rt:
        llm = fl.ScriptedLLM(
            lambda m, t: fl.Reply(tool_calls=[fl.ToolCall("add", {"a": len(m), "b": 0})])
        )
        agent = fl.Agent(
            name="timed", llm=llm, tools=[add], limits=fl.Limits(max_seconds=2, max_steps=100)
        )
        result = rt.spawn(agent, "go").wait(timeout=30)
        assert result.status is fl.RunStatus.LIMIT_REACHED
        assert "max_seconds ceiling 2" in result.reason


def test_retryable_model_errors_are_retried_and_recorded(rt: fl.Runtime) -> None:
    attempts = []

    def flaky(messages: Sequence[fl.Message], tools: Sequence[fl.types.ToolSpec]) -> fl.Reply:
        attempts.append(1)
        if len(attempts) < 3:
            raise fl.errors.ModelCallError("429 rate limited", retryable=True)
        return fl.Reply(
            text="finally",
            model="gpt-4o-mini",
            usage=fl.types.Usage(input_tokens=1000, output_tokens=1000),
        )

    result = rt.spawn(fl.Agent(name="flaky", llm=fl.ScriptedLLM(flaky)), "go").wait(timeout=30)
    assert result.output == "finally"
    assert result.usage.cost_usd == pytest.approx((1000 * 0.15 + 1000 * 0.60) / 1e6)
    events = list(rt.events(rt.runs()[0].run_id))
    assert [e.event.retryable for e in events if e.type == "model.failed"] == [True, True]


def test_verify_catches_changed_code_and_changed_tools(rt: fl.Runtime, store_path: Path) -> None:
    script = [fl.Reply(tool_calls=[fl.ToolCall("add", {"a": 1, "b": 2})]), fl.Reply(text="3")]
    agent = fl.Agent(name="v", llm=fl.ScriptedLLM(script), tools=[add], instructions="v1")
    run = rt.spawn(agent, "go")
    run.wait(timeout=30)
    rt.close()

    changed = fl.Agent(name="v", llm=fl.ScriptedLLM(script), tools=[add], instructions="v2")
    with fl.Runtime.open(store_path, agents=[changed]) as rt2:
        with pytest.raises(fl.NondeterminismError, match="seq 1") as info:
            rt2.verify(run.id)
        assert info.value.run_id == run.id and info.value.seq == 1

    @fl.tool(idempotent=True)
    def mul(a: int, b: int) -> int:
        """Multiply."""
        return a * b

    other_tools = fl.Agent(name="v", llm=fl.ScriptedLLM(script), tools=[add, mul])
    with (
        fl.Runtime.open(store_path, agents=[other_tools]) as rt3,
        pytest.raises(fl.SchemaChangedError, match="added: mul"),
    ):
        rt3.verify(run.id)


def test_spawn_refuses_bad_or_taken_run_ids(rt: fl.Runtime) -> None:
    agent = fl.Agent(name="ids", llm=fl.ScriptedLLM([fl.Reply(text="x")]))
    rt.spawn(agent, "go", run_id="fixed-1").wait(timeout=30)
    with pytest.raises(fl.ConfigError, match="already exists"):
        rt.spawn(agent, "again", run_id="fixed-1")
    for bad in ("", "a/b", "x" * 129, "nul\0", "new\nline"):
        with pytest.raises(fl.ConfigError, match="run_id must be"):
            rt.spawn(agent, "go", run_id=bad)
    with pytest.raises(fl.RunNotFound):
        rt.state("nope")


def test_spawn_under_the_id_of_a_run_being_driven_here_says_it_exists(rt: fl.Runtime) -> None:
    """Not RunLocked's "wait() for it first": a wait, then the spawn again, would still fail."""
    agent, started, release = stuck_agent()
    run = rt.spawn(agent, "go", run_id="busy")
    try:
        assert started.wait(10)
        with pytest.raises(fl.ConfigError, match="run 'busy' already exists"):
            rt.spawn(agent, "again", run_id="busy")
    finally:
        release.set()
    assert run.wait(timeout=30).output == "no"
    with pytest.raises(fl.RunNotFound):
        rt.resume("nope")
    assert len(rt.runs()) == 1


def test_subscribers_get_live_events_and_a_raising_one_is_isolated(rt: fl.Runtime) -> None:
    got: list[str] = []
    bad = rt.subscribe(lambda rec: (_ for _ in ()).throw(RuntimeError("bad subscriber")))
    good = rt.subscribe(lambda rec: got.append(rec.type), types={"run.completed", "run.started"})
    agent = fl.Agent(name="sub", llm=fl.ScriptedLLM([fl.Reply(text="x")]))
    result = rt.spawn(agent, "go").wait(timeout=30)
    assert result.status is fl.RunStatus.COMPLETED
    good.catch_up(timeout=10)
    assert got == ["run.started", "run.completed"]
    # the raising one stopped itself at the first record, saying which and why
    with pytest.raises(fl.errors.ProjectionError, match="bad subscriber") as info:
        bad.catch_up(timeout=10)
    assert info.value.position == 1 and info.value.event_type == "run.started"
    assert not bad.live and good.live
    good.detach()
    assert not good.live
    witness: list[str] = []
    later = rt.subscribe(lambda rec: witness.append(rec.type), types={"run.completed"})
    rt.spawn(agent, "again").wait(timeout=30)
    later.catch_up(timeout=10)  # the second run's records have been handed out ...
    assert witness == ["run.completed"]
    assert got == ["run.started", "run.completed"]  # ... and not to the detached one


def test_state_from_a_snapshot_equals_the_full_fold(store_path: Path) -> None:
    with fl.Runtime.open(store_path, snapshot_every=5) as rt:
        replies = [fl.Reply(tool_calls=[fl.ToolCall("add", {"a": i, "b": i})]) for i in range(8)]
        agent = fl.Agent(
            name="snap", llm=fl.ScriptedLLM([*replies, fl.Reply(text="end")]), tools=[add]
        )
        run = rt.spawn(agent, "go")
        run.wait(timeout=30)
        # Snapshots are written behind the appends, without being waited for.
        wait_until(lambda: rt.store.snapshot(run.id) is not None, 10, "a snapshot of the run")
        snap = rt.store.snapshot(run.id)
        assert snap is not None and 0 < snap[1] <= rt.store.head(run.id)
        assert rt.state(run.id) == fold(rt.events(run.id))


def test_snapshots_store_each_full_history_chunk_once(store_path: Path) -> None:
    steps = 70  # 2 + 2 * 70 messages: two full chunks of 64 and a partial one
    with fl.Runtime.open(store_path, snapshot_every=40) as rt:
        replies = [
            fl.Reply(tool_calls=[fl.ToolCall("add", {"a": i, "b": 1})]) for i in range(steps)
        ]
        agent = fl.Agent(
            name="chunks",
            llm=fl.ScriptedLLM([*replies, fl.Reply(text="end")]),
            tools=[add],
            limits=fl.Limits(max_steps=steps + 1),
        )
        run = rt.spawn(agent, "go")
        assert run.wait(timeout=60).ok

        def two_chunks() -> bool:
            snap = rt.store.snapshot(run.id)
            return snap is not None and len(snap[3]) == 2

        wait_until(two_chunks, 10, "a snapshot holding two full history chunks")
        snap = rt.store.snapshot(run.id)
        assert snap is not None and len(snap[3]) == 2
        full = fold(rt.events(run.id))
        assert rt.state(run.id) == full
        assert len(full.messages) > 128
        # the snapshot's own state holds only the partial chunk
        assert len(snap[2]) < len(msgspec.msgpack.encode(full)) / 2
    # Closed (every snapshot written): the file itself holds two chunks, stored once each
    # though ~8 snapshots were taken.
    env = lmdb.open(str(store_path), readonly=True, max_dbs=16, lock=False)
    try:
        chunks = env.open_db(b"history_chunks", create=False)
        with env.begin() as txn:
            assert txn.stat(chunks)["entries"] == 2
    finally:
        env.close()


def test_second_runtime_cannot_resume_a_run_driven_elsewhere(store_path: Path) -> None:
    code = textwrap.dedent(
        f"""
        import sys, time, foldloop as fl
        agent = fl.Agent(name="slow", llm=fl.ScriptedLLM([fl.Reply(text="x")], latency_s=60))
        rt = fl.Runtime.open({str(store_path)!r}, agents=[agent])
        run = rt.spawn(agent, "go", run_id="held")
        print("SPAWNED", flush=True)
        time.sleep(60)
        """
    )
    child = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, stderr=subprocess.DEVNULL
    )
    try:
        assert child.stdout is not None
        while (line := child.stdout.readline()) and line.strip() != "SPAWNED":
            pass  # structlog, unconfigured by the library, prints its own lines first
        assert line.strip() == "SPAWNED"
        agent = fl.Agent(name="slow", llm=fl.ScriptedLLM([fl.Reply(text="mine")]))
        with fl.Runtime.open(store_path, agents=[agent]) as rt:
            with pytest.raises(fl.RunLocked, match="driven by a live runtime"):
                rt.resume("held")
            assert rt.recover() == []
            assert rt.runs()[0].status is fl.RunStatus.RUNNING
            child.kill()
            child.wait()
            assert rt.runs()[0].status is fl.RunStatus.INTERRUPTED  # the lease died with it
            done = fl.Agent(name="done", llm=fl.ScriptedLLM([fl.Reply(text="ok")]))
            assert rt.spawn(done, "go").wait(timeout=30).ok  # ended: nothing of it is left
            stranger = fl.Agent(name="other", llm=fl.ScriptedLLM([fl.Reply(text="no")]))
            with capture_logs() as logs, fl.Runtime.open(store_path, agents=[stranger]) as other:
                assert other.recover() == []  # not its agent's run: left, and said so
                assert other.recover() == []  # said once, not at each recover
            said = [e for e in logs if e["event"] == "recover_left_runs_of_unknown_agents"]
            assert [e["agents"] for e in said] == [{"slow": 1}]
            (handle,) = rt.recover()
            assert handle.wait(timeout=30).output == "mine"
    finally:
        if child.poll() is None:
            child.kill()
        child.wait()


def test_two_runtimes_in_one_process_share_one_log(store_path: Path) -> None:
    agent = fl.Agent(name="two", llm=fl.ScriptedLLM([fl.Reply(text="x")]))
    with (
        fl.Runtime.open(store_path, agents=[agent]) as a,
        fl.Runtime.open(store_path, agents=[agent]) as b,
    ):
        ra = a.spawn(agent, "one")
        rb = b.spawn(agent, "two")
        assert ra.wait(timeout=30).ok and rb.wait(timeout=30).ok
        assert {r.run_id for r in a.read_all()} == {ra.id, rb.id}
        assert a.owner != b.owner
    assert os.path.isdir(store_path)


def test_closed_runtime_says_so(store_path: Path) -> None:
    rt = fl.Runtime.open(store_path)
    rt.close()
    with pytest.raises(fl.ConfigError, match="closed"):
        rt.spawn(fl.Agent(name="x", llm=fl.ScriptedLLM([])), "go")


def test_tool_schema_errors_happen_at_decoration() -> None:
    with pytest.raises(fl.ToolSchemaError, match="has no type hint"):

        @fl.tool
        def untyped(x):  # type: ignore[no-untyped-def]
            return x

    with pytest.raises(fl.ToolSchemaError, match="not supported"):

        @fl.tool
        def weird(x: threading.Lock) -> None:
            """Nope."""

    with pytest.raises(fl.ConfigError, match="timeout must be"):
        fl.tool(timeout=float("nan"), name="nan_timeout")(lambda: None)
    with pytest.raises(fl.ConfigError, match="registered twice"):
        fl.Agent(name="dup", llm=fl.ScriptedLLM([]), tools=[add, add])


def test_explain_says_why_and_what_next(rt: fl.Runtime) -> None:
    llm = fl.ScriptedLLM(
        [fl.Reply(tool_calls=[fl.ToolCall("add", {"a": i, "b": 1})]) for i in range(5)]
    )
    agent = fl.Agent(name="why", llm=llm, tools=[add], limits=fl.Limits(max_steps=2))
    run = rt.spawn(agent, "go")
    run.wait(timeout=30)
    why = rt.explain(run.id)
    assert why.status is fl.RunStatus.LIMIT_REACHED
    assert why.limit == "max_steps = 2 of 2"
    assert "extend=fl.Limits(max_steps=...)" in why.next_steps[0]
    assert "run.limit_reached" in why.last_decision
    assert str(why).startswith(f"run {run.id} is limit_reached after 2 steps")

    done = rt.spawn(fl.Agent(name="done", llm=fl.ScriptedLLM([fl.Reply(text="ok")])), "go")
    done.wait(timeout=30)
    assert "final text" in rt.explain(done.id).last_decision
    assert rt.explain(done.id).next_steps[0].startswith("nothing")


def test_export_then_import_gives_the_same_fold(rt: fl.Runtime, tmp_path: Path) -> None:
    script = [
        fl.Reply(tool_calls=[fl.ToolCall("add", {"a": 1, "b": 2}), fl.ToolCall("add", {"a": "x"})]),
        fl.Reply(text="3", usage=fl.types.Usage(input_tokens=5, output_tokens=1, cost_usd=0.25)),
    ]
    agent = fl.Agent(name="exp", llm=fl.ScriptedLLM(script), tools=[add])
    run = rt.spawn(agent, "go", metadata={"user": "ü\u202e"})
    run.wait(timeout=30)
    lines = list(rt.export(run.id))
    assert lines[0].startswith('{"foldloop":"run","format":1')
    assert len(lines) == 1 + len(list(rt.events(run.id)))

    with fl.Runtime.open(tmp_path / "other", agents=[agent]) as other:
        imported = other.import_jsonl(lines)
        assert imported == run.id
        assert other.state(run.id) == rt.state(run.id)
        assert [r.event for r in other.events(run.id)] == [r.event for r in rt.events(run.id)]
        assert other.verify(run.id).status is fl.RunStatus.COMPLETED
        copy = other.import_jsonl(lines, run_id="copy-1")
        assert other.state(copy).output == "3"
        with pytest.raises(fl.ConfigError, match="already exists"):
            other.import_jsonl(lines)
        with pytest.raises(fl.ConfigError, match="truncated"):
            other.import_jsonl(lines[:-1], run_id="cut")
        with pytest.raises(fl.ConfigError, match="line 1 is not a foldloop run header"):
            other.import_jsonl(["{}"], run_id="bad")
        with pytest.raises(fl.ConfigError, match="line 3"):
            other.import_jsonl(
                [lines[0], lines[1], '{"seq": 2, "at": 1, "event": {"type": "nope"}}'],
                run_id="bad2",
            )
        # a field this foldloop does not know (a newer one's) is refused, not dropped
        newer = json.loads(lines[3])
        newer["event"]["future_field"] = 42
        with pytest.raises(fl.ConfigError, match="line 4: field `future_field` is none"):
            other.import_jsonl([*lines[:3], json.dumps(newer), *lines[4:]], run_id="bad3")
        replied = json.loads(lines[3])  # model.responded: its tool calls, by name
        assert replied["event"]["type"] == "model.responded", replied
        replied["event"]["tool_calls"][1]["future"] = 1
        with pytest.raises(fl.ConfigError, match=r"field `tool_calls\[1\]\.future` is none"):
            other.import_jsonl([*lines[:3], json.dumps(replied), *lines[4:]], run_id="bad4")
        assert sorted(other.store.run_ids()) == sorted([run.id, "copy-1"])


def test_an_imported_unfinished_run_can_be_resumed(rt: fl.Runtime, tmp_path: Path) -> None:
    llm = fl.ScriptedLLM(
        [fl.Reply(tool_calls=[fl.ToolCall("add", {"a": 1, "b": 1})]), fl.Reply(text="2")]
    )
    agent = fl.Agent(name="move", llm=llm, tools=[add], limits=fl.Limits(max_steps=1))
    run = rt.spawn(agent, "go")
    assert run.wait(timeout=30).status is fl.RunStatus.LIMIT_REACHED
    with fl.Runtime.open(tmp_path / "elsewhere", agents=[agent]) as other:
        other.import_jsonl(rt.export(run.id))
        result = other.resume(run.id, extend=fl.Limits(max_steps=3)).wait(timeout=30)
        assert (result.status, result.output) == (fl.RunStatus.COMPLETED, "2")


@pytest.mark.parametrize("policy", ["warn", "tokens_only", "refuse"])
def test_a_stale_price_table_is_handled_as_configured(store_path: Path, policy: str) -> None:
    import datetime

    old = fl.Pricing(as_of="2026-01-01", stale=policy)  # type: ignore[arg-type]
    later = int(datetime.datetime(2026, 6, 1, tzinfo=datetime.UTC).timestamp() * 1e9)
    agent = fl.Agent(
        name=f"priced-{policy}",
        llm=fl.ScriptedLLM([fl.Reply(text="x")]),
        limits=fl.Limits(max_cost_usd=1.0),
        pricing=old,
    )
    with fl.Runtime.open(store_path, clock=lambda: later) as rt:
        if policy == "refuse":
            with pytest.raises(fl.ConfigError, match="151 days old"):
                rt.spawn(agent, "go")
            assert rt.runs() == []
            return
        with capture_logs() as logs:
            run = rt.spawn(agent, "go")
        assert run.wait(timeout=30).ok
        started = next(rt.events(run.id)).event
        expected = 1.0 if policy == "warn" else None
        assert started.limits.max_cost_usd == expected
        assert any(e["event"].startswith("pricing_stale") for e in logs)

    fresh = fl.Agent(
        name="fresh", llm=fl.ScriptedLLM([fl.Reply(text="x")]), limits=fl.Limits(max_cost_usd=1.0)
    )
    with fl.Runtime.open(store_path) as rt, capture_logs() as logs:
        run = rt.spawn(fresh, "go")
        assert next(rt.events(run.id)).event.limits.max_cost_usd == 1.0
        assert not any(e["event"].startswith("pricing_stale") for e in logs)


def test_a_huge_tool_result_is_cut_not_fatal(rt: fl.Runtime) -> None:
    @fl.tool(idempotent=True)
    def dump() -> str:
        """Return far too much."""
        return "x" * 3_000_000

    llm = fl.ScriptedLLM([fl.Reply(tool_calls=[fl.ToolCall("dump")]), fl.Reply(text="ok")])
    run = rt.spawn(fl.Agent(name="big", llm=llm, tools=[dump]), "go")
    assert run.wait(timeout=30).output == "ok"
    (done,) = [r.event for r in rt.events(run.id) if r.type == "tool.completed"]
    assert (len(done.result), done.original_chars) == (262_144, 3_000_000)  # see test_tool_results


def test_an_oversized_event_is_refused_before_any_write(store_path: Path) -> None:
    from foldloop.events import RunCompleted
    from foldloop.store import append_events, open_store

    store = open_store(store_path)
    try:
        with pytest.raises(fl.ConfigError, match="over the 1,048,576-byte limit"):
            append_events(store, "r", [RunCompleted(output="y" * 2_000_000)], expected_seq=0, at=1)
        assert store.last_position() == 0
    finally:
        store.close()


def test_a_run_that_settles_releases_its_lease_in_the_same_transaction(rt: fl.Runtime) -> None:
    """Whoever reads a run as settled (finished or parked at a gate) finds its lease free:
    the release is written with the settling events, not by a later commit a wait in
    another process, or a resume right after it, would have to wait for."""
    done = fl.Agent(name="done", llm=fl.ScriptedLLM([fl.Reply(text="ok")]))
    gated = fl.Agent(
        name="gated",
        llm=fl.ScriptedLLM([fl.Reply(tool_calls=[fl.ToolCall("add", {"a": 1, "b": 2})])]),
        tools=[add],
        approvals=fl.RequireApproval({"add"}),
    )
    ids = [f"settle-{i}" for i in range(30)]
    seen_held: list[tuple[str, str]] = []
    settled_reads = passes = 0
    stop = threading.Event()

    def watch() -> None:
        nonlocal settled_reads, passes
        while not stop.is_set():
            for run_id in ids:
                if not rt.store.head(run_id):
                    continue
                state = rt.state(run_id)  # read first: the lease read after it is newer
                lease = rt.store.lease(run_id)
                if state.settled:
                    settled_reads += 1
                    if lease is not None and lease.owner:
                        seen_held.append((run_id, state.status.value))
            passes += 1

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        handles = [
            rt.spawn(gated if i % 3 == 0 else done, "go", run_id=run_id)
            for i, run_id in enumerate(ids)
        ]
        results = [h.wait(timeout=30) for h in handles]
        # Two more whole passes: the second began after every run had settled.
        target = passes + 2
        wait_until(lambda: passes >= target, 30, "the watcher to read every settled run")
    finally:
        stop.set()
        watcher.join()
    assert {r.status for r in results} == {
        fl.RunStatus.COMPLETED,
        fl.RunStatus.AWAITING_APPROVAL,
    }
    assert settled_reads > len(ids)  # the watcher did look at settled runs
    assert seen_held == []
    assert all(not rt.store.lease(run_id).owner for run_id in ids)  # type: ignore[union-attr]


def test_cancelling_a_parked_run_frees_its_lease_with_the_cancel(rt: fl.Runtime) -> None:
    """A host's cancel of a run no actor drives (parked at a gate, or at a limit) takes the
    run's lease, appends run.cancelled and releases the lease in that same transaction:
    when cancel returns, the run is cancelled and free, not held until a later commit."""
    gated = fl.Agent(
        name="gated",
        llm=fl.ScriptedLLM([fl.Reply(tool_calls=[fl.ToolCall("add", {"a": 1, "b": 2})])]),
        tools=[add],
        approvals=fl.RequireApproval({"add"}),
    )
    limited = fl.Agent(
        name="limited",
        llm=fl.ScriptedLLM([fl.Reply(tool_calls=[fl.ToolCall("add", {"a": 1, "b": 2})])] * 3),
        tools=[add],
        limits=fl.Limits(max_steps=1),
    )
    for agent, parked in (
        (gated, fl.RunStatus.AWAITING_APPROVAL),
        (limited, fl.RunStatus.LIMIT_REACHED),
    ):
        for _ in range(5):
            run = rt.spawn(agent, "go")
            assert run.wait(timeout=30).status is parked
            run.cancel("not needed")
            lease = rt.store.lease(run.id)
            assert lease is not None and lease.owner == "", lease
            assert rt.state(run.id).status is fl.RunStatus.CANCELLED
            assert types(rt, run.id)[-1] == "run.cancelled"


def test_a_host_decision_that_parks_a_run_again_frees_its_lease_with_it(rt: fl.Runtime) -> None:
    """Denying one of two gated calls of a parked run: the runtime takes the lease, appends
    the denial and the failed call, and the run parks again for the other call. The lease
    goes in that same transaction, so it is free when ``deny`` returns; approving the other
    call then finishes the run."""
    two = fl.Agent(
        name="two_gated",
        llm=fl.ScriptedLLM(
            [
                fl.Reply(
                    tool_calls=[
                        fl.ToolCall("add", {"a": 1, "b": 2}),
                        fl.ToolCall("add", {"a": 3, "b": 4}),
                    ]
                ),
                fl.Reply(text="done"),
            ]
        ),
        tools=[add],
        approvals=fl.RequireApproval({"add"}),
    )
    for _ in range(5):
        run = rt.spawn(two, "go")
        assert run.wait(timeout=30).status is fl.RunStatus.AWAITING_APPROVAL
        first, second = sorted(
            (p for p in rt.pending_approvals() if p.run_id == run.id), key=lambda p: p.call_id
        )
        rt.deny(first.token, note="not this one")
        lease = rt.store.lease(run.id)
        assert lease is not None and lease.owner == "", lease
        state = rt.state(run.id)
        assert state.status is fl.RunStatus.AWAITING_APPROVAL
        assert [c.status for c in state.calls] == ["failed", "awaiting_approval"]
        rt.approve(second.token)
        assert run.wait(timeout=30).output == "done"


@pytest.mark.parametrize("timeout", [-1, float("nan"), float("inf"), 1e10, "10", True, None])
def test_close_refuses_a_timeout_that_is_no_number_of_seconds(
    store_path: Path, timeout: object
) -> None:
    with fl.Runtime.open(store_path) as rt:
        with pytest.raises(fl.ConfigError, match="timeout must be a number of seconds from 0"):
            rt.close(timeout=timeout)  # type: ignore[arg-type]
        assert not rt.closed  # still open: the with closes it


def test_a_second_close_returns_only_once_the_first_is_done(store_path: Path) -> None:
    """Two threads close one runtime while a tool call runs: the second close returns no
    sooner than the first, the call's outcome stored (a daemon's shutdown can rely on it)."""
    agent, started, release = stuck_agent()
    rt = fl.Runtime.open(store_path, agents=[agent])
    run = rt.spawn(agent, "go")
    assert started.wait(10)
    first = threading.Thread(target=rt.close)
    entered = threading.Event()
    seen: list[list[str]] = []

    def second() -> None:
        entered.set()
        rt.close()
        with fl.Runtime.open(store_path) as reader:
            seen.append(types(reader, run.id))

    with capture_logs() as logs:
        first.start()
        wait_until(lambda: logged(logs, "close_waits_for_tool_calls"), 10, "close to wait")
        later = threading.Thread(target=second)
        later.start()
        assert entered.wait(10)
        release.set()
        first.join(30)
        later.join(30)
    assert seen and "tool.completed" in seen[0]


def test_a_call_requested_as_close_begins_is_waited_for_too(store_path: Path) -> None:
    """Run B's model reply is being handled (its approval predicate, user code, takes a
    while) when close() begins, while run A's tool keeps close waiting: B's call, requested
    after close began, is waited for and recorded, not left to resume as interrupted."""
    a_started, entered = threading.Event(), threading.Event()
    done: list[str] = []

    def slow_predicate(tool: str, args: dict[str, object]) -> bool:
        entered.set()
        time.sleep(0.3)  # the reply is still being handled as close() lists what it waits for
        return False

    @fl.tool
    def slow() -> str:
        """Work a while."""
        a_started.set()
        time.sleep(0.6)
        done.append("slow")
        return "ok"

    @fl.tool
    def pay(to: str) -> str:
        """Pay someone."""
        time.sleep(0.6)
        done.append("pay")
        return f"paid {to}"

    a = fl.Agent(
        name="a",
        llm=fl.ScriptedLLM([fl.Reply(tool_calls=[fl.ToolCall("slow")]), fl.Reply(text="a")]),
        tools=[slow],
    )
    b = fl.Agent(
        name="b",
        llm=fl.ScriptedLLM(
            [fl.Reply(tool_calls=[fl.ToolCall("pay", {"to": "bob"})]), fl.Reply(text="b")],
            latency_s=0.2,
        ),
        tools=[pay],
        approvals=fl.RequireApproval(tools=slow_predicate),
    )
    rt = fl.Runtime.open(store_path, agents=[a, b])
    rt.spawn(a, "go")
    paying = rt.spawn(b, "pay bob")
    assert a_started.wait(10) and entered.wait(10)
    rt.close()
    assert sorted(done) == ["pay", "slow"]
    with fl.Runtime.open(store_path, agents=[a, b]) as again:
        assert "tool.completed" in types(again, paying.id)


def test_a_held_call_is_recorded_as_not_run_even_if_the_call_before_it_outlasts_close(
    store_path: Path,
) -> None:
    """The call holding the tool's only thread outlives close(timeout): the call behind it
    is recorded as not run at once (not left 'outcome unknown'), and never starts."""
    agent, started, release, ran = narrow_agent()
    try:
        with fl.Runtime.open(store_path, agents=[agent]) as rt:
            rt.spawn(agent, "1")
            assert started.wait(10)
            waiting = rt.spawn(agent, "2")
            wait_until(lambda: "tool.requested" in types(rt, waiting.id), 10, "the 2nd call")
            rt.close(timeout=0.3)
        with fl.Runtime.open(store_path, agents=[agent]) as again:
            (failed,) = [r.event for r in again.events(waiting.id) if r.type == "tool.failed"]
            assert failed.kind == "interrupted" and "did not run" in failed.error
    finally:
        release.set()
    assert ran == [1]


def test_a_queued_async_call_does_not_start_while_closing(store_path: Path) -> None:
    """The same for an async tool's call waiting for its place (concurrency 1)."""
    started, release = threading.Event(), threading.Event()
    ran: list[int] = []

    @fl.tool(concurrency=1)
    async def one_at_a_time(n: int) -> str:
        """The first call lasts until the close has told the runs it is closing."""
        ran.append(n)
        if n == 1:
            started.set()
            while not release.is_set():
                await asyncio.sleep(0.01)
        return f"done {n}"

    agent = fl.Agent(
        name="narrow-async", llm=calls_with_input("one_at_a_time"), tools=[one_at_a_time]
    )
    with capture_logs() as logs, fl.Runtime.open(store_path, agents=[agent]) as rt:
        first = rt.spawn(agent, "1")
        assert started.wait(10)
        waiting = rt.spawn(agent, "2")
        wait_until(lambda: "tool.requested" in types(rt, waiting.id), 10, "the 2nd call")

        def release_once_closing() -> None:  # its place frees only once the runs know
            wait_until(lambda: logged(logs, "close_waits_for_tool_calls"), 10, "the drain")
            release.set()

        threading.Thread(target=release_once_closing).start()
        rt.close()
    assert ran == [1]
    with fl.Runtime.open(store_path, agents=[agent]) as again:
        assert "tool.completed" in types(again, first.id)
        (failed,) = [r.event for r in again.events(waiting.id) if r.type == "tool.failed"]
        assert "did not run" in failed.error


def test_a_tool_that_closes_its_own_runtime_does_not_hold_up_the_close(
    store_path: Path,
) -> None:
    """A tool calls close() while the host closes too: the tool's close returns at once (the
    host's close waits for that very call), and the call's outcome is recorded."""
    started, go = threading.Event(), threading.Event()
    runtimes: list[fl.Runtime] = []

    @fl.tool
    def shut_down() -> str:
        """Close the runtime from inside a tool."""
        started.set()
        go.wait(10)
        runtimes[0].close()
        return "closed it"

    llm = fl.ScriptedLLM([fl.Reply(tool_calls=[fl.ToolCall("shut_down")]), fl.Reply(text="ok")])
    agent = fl.Agent(name="closer", llm=llm, tools=[shut_down])
    rt = fl.Runtime.open(store_path, agents=[agent])
    runtimes.append(rt)
    run = rt.spawn(agent, "go")
    assert started.wait(10)
    host = threading.Thread(target=rt.close, kwargs={"timeout": 30})
    with capture_logs() as logs:
        host.start()
        wait_until(lambda: logged(logs, "close_waits_for_tool_calls"), 10, "close to wait")
        go.set()
        host.join(20)  # far less than its timeout: it was not held up
        assert not host.is_alive()
    with fl.Runtime.open(store_path, agents=[agent]) as again:
        assert "tool.completed" in types(again, run.id)


@pytest.mark.parametrize("where", ["tool", "on_state"])
def test_a_close_from_the_runtimes_own_thread_returns_at_once_and_records_the_calls(
    store_path: Path, where: str
) -> None:
    """A tool (or on_state, on the shard) calls close() first: the close goes on without
    that thread, which returns at once, and the tool calls' outcomes are recorded."""
    runtimes: list[fl.Runtime] = []
    returned = threading.Event()

    def shut() -> None:
        if not runtimes[0].closed:
            runtimes[0].close(timeout=30)
            returned.set()

    @fl.tool
    def work() -> str:
        """Work, and close the runtime from here when asked."""
        if where == "tool":
            shut()
        return "worked"

    def on_state(state: fl.RunState) -> None:
        if where == "on_state" and state.calls and state.calls[0].status == "requested":
            shut()

    llm = fl.ScriptedLLM([fl.Reply(tool_calls=[fl.ToolCall("work")]), fl.Reply(text="ok")])
    agent = fl.Agent(name="closes-itself", llm=llm, tools=[work])
    rt = fl.Runtime.open(store_path, agents=[agent], on_state=on_state)
    runtimes.append(rt)
    run = rt.spawn(agent, "go")
    assert returned.wait(10)  # not after close's timeout of 30 s
    wait_until(
        lambda: not any(t.name == "foldloop-close" for t in threading.enumerate()), 30, "the close"
    )
    with fl.Runtime.open(store_path, agents=[agent]) as again:
        assert "tool.completed" in types(again, run.id)


@pytest.mark.parametrize("when", ["every state", "the last state"])
def test_an_on_state_that_raises_is_logged_and_its_run_goes_on(store_path: Path, when: str) -> None:
    """on_state observes: when it raises (on the state that ends the run too, whose events
    are on their way to the log already) the failure is logged and the run ends as its log
    says, not interrupted with a reason the log contradicts."""
    seen: list[int] = []

    def on_state(state: fl.RunState) -> None:
        seen.append(state.seq)
        if when == "every state" or state.status is fl.RunStatus.COMPLETED:
            raise RuntimeError(f"observer broke at {state.seq}")

    llm = fl.ScriptedLLM(
        [fl.Reply(tool_calls=[fl.ToolCall("add", {"a": 1, "b": 2})]), fl.Reply(text="3")]
    )
    agent = fl.Agent(name="observed", llm=llm, tools=[add])
    with (
        capture_logs() as logs,
        fl.Runtime.open(store_path, agents=[agent], on_state=on_state) as rt,
    ):
        run = rt.spawn(agent, "add")
        result = run.wait(timeout=30)
        assert (result.status, result.output) == (fl.RunStatus.COMPLETED, "3")
        stored = rt.state(run.id)
        assert stored.status is fl.RunStatus.COMPLETED
    failures = [e for e in logs if e.get("event") == "on_state_failed"]
    assert failures and all(e["run_id"] == run.id for e in failures)
    assert failures[-1]["seq"] == seen[-1] == stored.seq


def test_recover_asks_once_per_owner_whether_it_lives(
    store_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Twenty runs another live runtime drives: recover() leaves them, asking once whether
    their owner lives (on JetStream each asking is a request), not once a run."""
    release = threading.Event()

    @fl.tool(idempotent=True, concurrency=20, timeout=60)
    def hold(x: str) -> str:
        """Hold until released."""
        release.wait(30)
        return "held"

    llm = fl.ScriptedLLM(
        lambda messages, tools: (
            fl.Reply(text="done")
            if messages[-1].role == "tool"
            else fl.Reply(tool_calls=[fl.ToolCall("hold", {"x": "1"})])
        )
    )
    agent = fl.Agent(name="holder", llm=llm, tools=[hold])
    try:
        with fl.Runtime.open(store_path, agents=[agent]) as driver:
            runs = driver.spawn_many(agent, ["go"] * 20)
            with fl.Runtime.open(store_path, agents=[agent]) as other:
                asked: list[str] = []
                real = other.store.owner_alive  # type: ignore[attr-defined]

                def counted(owner: str) -> bool:
                    asked.append(owner)
                    return bool(real(owner))

                monkeypatch.setattr(other.store, "owner_alive", counted)
                assert other.recover() == []
                assert asked == [driver.owner]
            release.set()
            assert all(run.wait(timeout=30).ok for run in runs)
    finally:
        release.set()
