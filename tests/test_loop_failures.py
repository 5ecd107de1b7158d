"""Calls on the runtime's event loop that misbehave: a ``SystemExit`` or ``KeyboardInterrupt``
(which asyncio lets out of its loop), a ``CancelledError`` nobody asked for, a cancel
swallowed past the call's timeout. Each fails its own call; the loop serves on. A call is
cancelled once only: its clean-up in ``finally`` may await without being cut short."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any

import pytest

import foldloop as fl
from foldloop.actors._event_loop import EventLoop, in_step_of
from foldloop.events import ModelFailed, ToolCompleted, ToolFailed
from foldloop.types import ToolSpec
from tests.log_capture import capture_logs
from tests.waiting import logged, wait_until

ESCAPES = [
    pytest.param(lambda: SystemExit(2), "SystemExit", id="SystemExit"),
    pytest.param(KeyboardInterrupt, "KeyboardInterrupt", id="KeyboardInterrupt"),
]


class AsyncModel:
    """A model the runtime awaits (``acomplete``); ``answer`` says what each call does."""

    model = "async"

    def complete(
        self,
        messages: Sequence[fl.Message],
        tools: Sequence[ToolSpec],
        *,
        max_tokens: int | None = None,
    ) -> fl.Reply:
        raise AssertionError("the runtime awaits acomplete")

    async def acomplete(
        self,
        messages: Sequence[fl.Message],
        tools: Sequence[ToolSpec],
        *,
        max_tokens: int | None = None,
    ) -> fl.Reply:
        return await self.answer()

    async def answer(self) -> fl.Reply:
        raise NotImplementedError


class Raising(AsyncModel):
    """An async model whose ``acomplete`` raises what it is given."""

    model = "raising"

    def __init__(self, error: BaseException) -> None:
        self.error = error

    async def answer(self) -> fl.Reply:
        raise self.error


def one_reply(*calls: fl.ToolCall) -> fl.ScriptedLLM:
    return fl.ScriptedLLM([fl.Reply(tool_calls=list(calls)), fl.Reply(text="done")])


def tool_outcomes(rt: fl.Runtime, run_id: str) -> list[object]:
    return [r.event for r in rt.events(run_id) if r.type in ("tool.completed", "tool.failed")]


def later_agent() -> fl.Agent:
    """An agent whose model is awaited on the loop: it answers only if the loop still runs."""
    return fl.Agent(name="later", llm=fl.ScriptedLLM([fl.Reply(text="fine")], latency_s=0.01))


@pytest.mark.parametrize(("make", "name"), ESCAPES)
def test_an_async_tool_raising_systemexit_fails_its_call_and_the_loop_serves_on(
    tmp_path: Path, make: type[BaseException], name: str
) -> None:
    @fl.tool(idempotent=True, timeout=30)
    async def quits() -> str:
        """Parse a command line that is not there (argparse exits)."""
        raise make()

    agent = fl.Agent(name="a", llm=one_reply(fl.ToolCall("quits", {})), tools=[quits])
    later = later_agent()
    with fl.Runtime.open(tmp_path / "s", agents=[agent, later]) as rt:
        run = rt.spawn(agent, "go")
        assert run.wait(timeout=10).ok
        (failed,) = tool_outcomes(rt, run.id)
        assert isinstance(failed, ToolFailed) and failed.kind == "exception", failed
        assert failed.error == f"{name} raised inside the tool"
        assert rt.spawn(later, "x").wait(timeout=10).ok


@pytest.mark.parametrize(("make", "name"), ESCAPES)
def test_an_acomplete_raising_systemexit_fails_the_model_call_and_the_loop_serves_on(
    tmp_path: Path, make: type[BaseException], name: str
) -> None:
    agent = fl.Agent(name="m", llm=Raising(make()))
    later = later_agent()
    with fl.Runtime.open(tmp_path / "s", agents=[agent, later]) as rt:
        run = rt.spawn(agent, "go")
        assert run.wait(timeout=10).status == "failed"
        (failed,) = [r.event for r in rt.events(run.id) if isinstance(r.event, ModelFailed)]
        assert failed.error == f"acomplete of model 'raising' raised {name}"
        assert not failed.retryable
        assert rt.spawn(later, "x").wait(timeout=10).ok


def test_an_acomplete_raising_cancelled_error_of_its_own_fails_the_model_call(
    tmp_path: Path,
) -> None:
    agent = fl.Agent(name="m", llm=Raising(asyncio.CancelledError()))
    with fl.Runtime.open(tmp_path / "s", agents=[agent]) as rt:
        run = rt.spawn(agent, "go")
        assert run.wait(timeout=10).status == "failed"
        (failed,) = [r.event for r in rt.events(run.id) if isinstance(r.event, ModelFailed)]
        assert failed.error == (
            "acomplete of model 'raising' raised CancelledError without being cancelled"
        )
        assert not failed.retryable


def test_an_async_tool_raising_cancelled_error_of_its_own_fails_its_call(tmp_path: Path) -> None:
    @fl.tool(idempotent=True, timeout=30)
    async def gives_up() -> str:
        """Raise a cancellation nobody asked for."""
        raise asyncio.CancelledError

    agent = fl.Agent(name="a", llm=one_reply(fl.ToolCall("gives_up", {})), tools=[gives_up])
    with fl.Runtime.open(tmp_path / "s", agents=[agent]) as rt:
        run = rt.spawn(agent, "go")
        assert run.wait(timeout=10).ok
        (failed,) = tool_outcomes(rt, run.id)
        assert isinstance(failed, ToolFailed) and failed.kind == "exception", failed
        assert "CancelledError raised inside the tool without its call being cancelled" in (
            failed.error
        )


def test_an_async_tool_that_ignores_its_cancel_times_out_and_gives_its_slot_back(
    tmp_path: Path,
) -> None:
    let_go = threading.Event()

    @fl.tool(idempotent=True, timeout=0.2, concurrency=1)
    async def stubborn(i: int) -> str:
        """Retry through every cancel (a naive retry loop) until the test lets go."""
        while not let_go.is_set():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(0.01)
        return "late"

    calls = [fl.ToolCall("stubborn", {"i": i}) for i in range(2)]  # the second waits for the slot
    agent = fl.Agent(name="a", llm=one_reply(*calls), tools=[stubborn])
    try:
        with capture_logs() as logs:
            rt = fl.Runtime.open(tmp_path / "s", agents=[agent])
            try:
                run = rt.spawn(agent, "go")
                assert run.wait(timeout=10).ok
                failed = tool_outcomes(rt, run.id)
                assert [f.kind for f in failed if isinstance(f, ToolFailed)] == ["timeout"] * 2
            finally:
                began = time.monotonic()
                rt.close(timeout=30)  # the calls it gave up on are not waited for at all
                closed_in = time.monotonic() - began
            let_go.set()
            wait_until(lambda: logged(logs, "tool_result_late"), 10, "the late outcomes logged")
    finally:
        let_go.set()
    assert closed_in < 4, f"close waited {closed_in:.1f} s on calls it gave up on"  # else 5 s


def test_an_async_tool_that_returns_after_its_timeout_is_recorded_as_timed_out(
    tmp_path: Path,
) -> None:
    @fl.tool(idempotent=True, timeout=0.2)
    async def finishes_anyway() -> str:
        """Catch the cancel once, then finish."""
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(60)
        return "finished anyway"

    agent = fl.Agent(
        name="a", llm=one_reply(fl.ToolCall("finishes_anyway", {})), tools=[finishes_anyway]
    )
    with capture_logs() as logs, fl.Runtime.open(tmp_path / "s", agents=[agent]) as rt:
        run = rt.spawn(agent, "go")
        assert run.wait(timeout=10).ok
        (outcome,) = tool_outcomes(rt, run.id)
        assert not isinstance(outcome, ToolCompleted)
        assert isinstance(outcome, ToolFailed) and outcome.kind == "timeout", outcome
        wait_until(lambda: logged(logs, "tool_result_late"), 10, "the late outcome logged")


def test_the_loop_serves_on_after_a_call_lets_systemexit_out() -> None:
    loop = EventLoop()
    answered = threading.Event()

    async def exits() -> None:
        raise SystemExit(1)

    async def answer() -> int:
        return 42

    try:
        with capture_logs() as logs:
            loop.start(exits())
            wait_until(lambda: logged(logs, "event_loop_callback_raised"), 10, "the log line")
            loop.start(answer(), lambda value: answered.set() if value == 42 else None)
            assert answered.wait(10), "the loop stopped serving calls"
    finally:
        loop.close()


def test_a_close_keeps_to_its_timeout_with_an_async_tool_that_ignores_its_cancel(
    tmp_path: Path,
) -> None:
    # The tool's own timeout (60 s) is far off when the close comes: the close waits its
    # timeout for the call, then cancels the task, which goes on: close(timeout=2) must not
    # wait the loop's own 5 s for it, nor another 2 s.
    let_go, running = threading.Event(), threading.Event()

    @fl.tool(idempotent=True, timeout=60)
    async def stubborn() -> str:
        """Retry through every cancel until the test lets go."""
        running.set()
        while not let_go.is_set():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(0.01)
        return "late"

    agent = fl.Agent(name="a", llm=one_reply(fl.ToolCall("stubborn", {})), tools=[stubborn])
    rt = fl.Runtime.open(tmp_path / "s", agents=[agent])
    try:
        rt.spawn(agent, "go")
        assert running.wait(10)
        began = time.monotonic()
        rt.close(timeout=2)
        closed_in = time.monotonic() - began
    finally:
        let_go.set()
        rt.close()
    assert closed_in < 3.5, f"close(timeout=2) took {closed_in:.1f} s"  # before: 4 s, then 7


def test_a_loop_closed_with_a_task_ignoring_its_cancel_is_closed_once_the_task_ends() -> None:
    # Its selector and sockets would stay open until garbage collection otherwise.
    loop = EventLoop()
    let_go, running = threading.Event(), threading.Event()

    async def stubborn() -> None:
        running.set()
        while not let_go.is_set():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(0.01)

    loop.start(stubborn())
    assert running.wait(10)
    with capture_logs() as logs:
        loop.close(timeout=0.2)
    assert logged(logs, "loop_tasks_ignore_cancel")
    inner = loop._loop  # the asyncio loop whose resources must go
    assert inner is not None and not inner.is_closed()  # its thread still runs the task
    let_go.set()
    wait_until(inner.is_closed, 10, "the loop closed once the task ended")


class SlowToClose(AsyncModel):
    """An async model whose ``aclose`` (its connections) takes 0.7 s."""

    model = "slow-to-close"

    def __init__(self) -> None:
        self.closed = threading.Event()

    async def answer(self) -> fl.Reply:
        return fl.Reply(tool_calls=[fl.ToolCall("hangs", {})])

    async def aclose(self) -> None:
        await asyncio.sleep(0.7)
        self.closed.set()


def test_a_close_whose_tool_calls_took_its_time_still_lets_models_close_their_connections(
    tmp_path: Path,
) -> None:
    let_go, running = threading.Event(), threading.Event()

    @fl.tool(timeout=60)
    def hangs() -> str:
        """A sync call that outlasts the close's timeout."""
        running.set()
        let_go.wait(30)
        return "late"

    model = SlowToClose()
    agent = fl.Agent(name="a", llm=model, tools=[hangs])
    try:
        with fl.Runtime.open(tmp_path / "s", agents=[agent]) as rt:
            rt.spawn(agent, "go")
            assert running.wait(10)
            rt.close(timeout=1)  # the tool call takes all of it
        assert model.closed.is_set()  # before: cut at the loop's 0.5 s
    finally:
        let_go.set()


class CleansUp(AsyncModel):
    """An async model whose call waits until cancelled, then cleans up awaiting (closing a
    response stream, say) in ``finally``."""

    model = "cleans-up"

    def __init__(self) -> None:
        self.started, self.cleaned = threading.Event(), threading.Event()

    async def answer(self) -> fl.Reply:
        self.started.set()
        try:
            await asyncio.sleep(60)
            return fl.Reply(text="never")
        finally:
            await asyncio.sleep(0.1)  # a second cancel would land here
            self.cleaned.set()


def test_a_close_cancels_an_async_model_call_once_and_its_clean_up_finishes(
    tmp_path: Path,
) -> None:
    model = CleansUp()
    agent = fl.Agent(name="a", llm=model)
    with fl.Runtime.open(tmp_path / "s", agents=[agent]) as rt:
        rt.spawn(agent, "go")
        assert model.started.wait(10)
    # the run's stop cancels the call, then the loop's close: once only (before: twice)
    assert model.cleaned.wait(5), "the call's clean-up was cut short by a second cancel"


def test_an_async_tool_past_its_timeout_is_not_cancelled_again_as_its_run_ends(
    tmp_path: Path,
) -> None:
    run_ended, cleaned = threading.Event(), threading.Event()

    @fl.tool(idempotent=True, timeout=0.2)
    async def fetch() -> str:
        """Wait until cancelled, then clean up awaiting, until after its run ended."""
        try:
            await asyncio.sleep(60)
            return "never"
        finally:
            while not run_ended.is_set():  # a second cancel would land here
                await asyncio.sleep(0.01)
            cleaned.set()

    llm = fl.ScriptedLLM(
        [fl.Reply(tool_calls=[fl.ToolCall("fetch", {})]), fl.Reply(text="done")], latency_s=0.01
    )
    agent = fl.Agent(name="a", llm=llm, tools=[fetch])
    with fl.Runtime.open(tmp_path / "s", agents=[agent]) as rt:
        run = rt.spawn(agent, "go")
        assert run.wait(timeout=10).ok
        run_ended.set()
        (outcome,) = tool_outcomes(rt, run.id)
        assert isinstance(outcome, ToolFailed) and outcome.kind == "timeout", outcome
        assert cleaned.wait(5), "the timed-out call's clean-up was cut short as its run ended"


def test_a_loop_call_cancelled_before_it_starts_still_says_it_ended() -> None:
    # What counts calls in flight (max_model_calls' places) hears of every call's end, one
    # never begun included: a place lost so would never serve again.
    loop = EventLoop()
    started, hold, ended = threading.Event(), threading.Event(), threading.Event()
    ends: list[str] = []

    async def blocks() -> None:
        started.set()
        hold.wait(10)  # holds the loop's thread on purpose: the next call cannot begin

    async def never() -> None:
        raise AssertionError("a call cancelled before it began ran")

    try:
        loop.start(blocks())
        assert started.wait(10)
        call = loop.start(never(), on_end=lambda: (ends.append("ended"), ended.set()))
        call.cancel()
        hold.set()
        assert ended.wait(10), "the call's end was never told"
    finally:
        hold.set()
        loop.close()
    assert ends == ["ended"]


class SwallowsOnce(AsyncModel):
    """An async model whose call swallows its first cancel and goes on (as a library's race
    can), ending only when cancelled again."""

    model = "swallows-once"

    def __init__(self) -> None:
        self.started, self.ended = threading.Event(), threading.Event()

    async def answer(self) -> fl.Reply:
        self.started.set()
        try:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(60)
            await asyncio.sleep(60)
            return fl.Reply(text="late")
        finally:
            self.ended.set()


def test_a_close_cancels_once_more_a_call_that_swallowed_its_runs_cancel(tmp_path: Path) -> None:
    model = SwallowsOnce()
    agent = fl.Agent(name="a", llm=model)
    rt = fl.Runtime.open(tmp_path / "s", agents=[agent])
    try:
        run = rt.spawn(agent, "go")
        assert model.started.wait(10)
        run.cancel("stop")
        assert run.wait(timeout=10).status is fl.RunStatus.CANCELLED
    finally:
        rt.close(timeout=1)  # cancelled once more 0.5 s in
    assert model.ended.wait(10), "the close left the call running on the loop's thread"


def test_in_step_of_tells_a_task_s_own_step_from_a_close_of_its_coroutine() -> None:
    """A coroutine closed by the garbage collector is told GeneratorExit outside any step of
    its task (during another task's, or with no loop running): a failure path run then
    would report for a call nobody waits on."""
    seen: list[tuple[str, bool]] = []

    def waiter() -> Coroutine[Any, Any, None]:
        async def body() -> None:
            task = asyncio.current_task()
            seen.append(("own step", in_step_of(task)))
            try:
                await asyncio.Event().wait()
            except GeneratorExit:
                seen.append(("closed", in_step_of(task)))
                raise

        return body()

    loop = asyncio.new_event_loop()
    held: list[asyncio.Task[None]] = []
    try:
        in_loop, outside = waiter(), waiter()
        held += [loop.create_task(in_loop), loop.create_task(outside)]
        loop.run_until_complete(asyncio.sleep(0))  # both run up to their wait

        async def closer() -> None:  # as the collector would, in another task's step
            in_loop.close()

        loop.run_until_complete(closer())
        outside.close()  # as the collector would, on a thread with no loop running
    finally:
        for task in held:
            task._log_destroy_pending = False  # type: ignore[attr-defined]
        loop.close()
    assert seen == [("own step", True), ("own step", True), ("closed", False), ("closed", False)]
    assert not in_step_of(None)
