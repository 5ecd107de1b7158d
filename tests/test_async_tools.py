"""``async def`` tools: awaited on the runtime's event loop, bounded, timed out by cancelling."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

import foldloop as fl
from foldloop.events import ToolCompleted, ToolFailed


def one_reply(*calls: fl.ToolCall) -> fl.ScriptedLLM:
    return fl.ScriptedLLM([fl.Reply(tool_calls=list(calls)), fl.Reply(text="done")])


def outcomes(rt: fl.Runtime, run_id: str) -> list[object]:
    return [r.event for r in rt.events(run_id) if r.type in ("tool.completed", "tool.failed")]


def test_an_async_tool_is_awaited_and_its_result_recorded(tmp_path: Path) -> None:
    @fl.tool(idempotent=True)
    async def double(x: int) -> int:
        """Double x, after a wait."""
        await asyncio.sleep(0.01)
        return 2 * x

    agent = fl.Agent(name="a", llm=one_reply(fl.ToolCall("double", {"x": 21})), tools=[double])
    with fl.Runtime.open(tmp_path / "s", agents=[agent]) as rt:
        run = rt.spawn(agent, "go")
        assert run.wait(timeout=30).ok
        (done,) = outcomes(rt, run.id)
        assert isinstance(done, ToolCompleted) and done.result == "42"
        rt.verify(run.id)


def test_an_async_tool_past_its_timeout_is_cancelled_and_fails_as_timeout(tmp_path: Path) -> None:
    cancelled = threading.Event()

    @fl.tool(timeout=0.2)
    async def hang() -> str:
        """Wait far longer than allowed."""
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return "never"

    agent = fl.Agent(name="a", llm=one_reply(fl.ToolCall("hang", {})), tools=[hang])
    with fl.Runtime.open(tmp_path / "s", agents=[agent]) as rt:
        run = rt.spawn(agent, "go")
        assert run.wait(timeout=30).ok
        (failed,) = outcomes(rt, run.id)
        assert isinstance(failed, ToolFailed) and failed.kind == "timeout", failed
        assert cancelled.wait(5), "the timed-out call's task was not cancelled"


def test_an_async_tools_concurrency_bound_holds_on_the_loop(tmp_path: Path) -> None:
    lock = threading.Lock()
    running = {"now": 0, "most": 0}

    @fl.tool(idempotent=True, concurrency=2)
    async def slow(i: int) -> int:
        """Take a moment."""
        with lock:
            running["now"] += 1
            running["most"] = max(running["most"], running["now"])
        await asyncio.sleep(0.05)
        with lock:
            running["now"] -= 1
        return i

    calls = [fl.ToolCall("slow", {"i": i}) for i in range(6)]
    agent = fl.Agent(name="a", llm=one_reply(*calls), tools=[slow])
    with fl.Runtime.open(tmp_path / "s", agents=[agent]) as rt:
        run = rt.spawn(agent, "go")
        assert run.wait(timeout=30).ok
        done = outcomes(rt, run.id)
        assert sorted(int(d.result) for d in done if isinstance(d, ToolCompleted)) == list(range(6))
    assert running["most"] == 2  # two at once, never more


def test_an_async_tool_cannot_also_be_a_subprocess_tool() -> None:
    async def fetch() -> str:
        """Fetch."""
        return ""

    with pytest.raises(fl.ConfigError, match="async def tool runs on the runtime's event loop"):
        fl.tool(subprocess=True)(fetch)


def test_async_calls_in_flight_hold_no_thread_each(tmp_path: Path) -> None:
    from tests.waiting import wait_until

    release = threading.Event()
    lock = threading.Lock()
    running = {"now": 0}

    @fl.tool(idempotent=True, concurrency=100)
    async def wait_for_release(i: int) -> int:
        """Wait until the test lets go."""
        with lock:
            running["now"] += 1
        while not release.is_set():
            await asyncio.sleep(0.01)
        return i

    calls = [fl.ToolCall("wait_for_release", {"i": i}) for i in range(50)]
    agent = fl.Agent(name="a", llm=one_reply(*calls), tools=[wait_for_release])
    with fl.Runtime.open(tmp_path / "s", agents=[agent]) as rt:
        before = threading.active_count()
        run = rt.spawn(agent, "go")
        try:
            wait_until(lambda: running["now"] == 50, 30, "all 50 calls in flight at once")
            assert threading.active_count() - before < 10  # one loop thread, not 50
        finally:
            release.set()
        assert run.wait(timeout=30).ok
