"""Runs in flight hold no thread: async model calls and tools on the runtime's loop, runs on
a fixed set of shards; a cancel cancels what a run awaits."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from pathlib import Path

import foldloop as fl
from tests.waiting import wait_until


class Hanging:
    """An async model whose call never ends by itself; it says when it was cancelled."""

    model = "hanging"

    def __init__(self) -> None:
        self.started = threading.Event()
        self.cancelled = threading.Event()

    def complete(self, messages: Sequence[fl.Message], tools: object, **_: object) -> fl.Reply:
        raise AssertionError("a model with acomplete is awaited, not called on a thread")

    async def acomplete(
        self, messages: Sequence[fl.Message], tools: object, *, max_tokens: int | None = None
    ) -> fl.Reply:
        self.started.set()
        try:
            await asyncio.sleep(600)
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        return fl.Reply(text="never")


class Held:
    """An async model holding every call until released, counting the calls in flight."""

    model = "held"

    def __init__(self) -> None:
        self.release = threading.Event()
        self.lock = threading.Lock()
        self.now = 0

    def complete(self, messages: Sequence[fl.Message], tools: object, **_: object) -> fl.Reply:
        raise AssertionError("a model with acomplete is awaited, not called on a thread")

    async def acomplete(
        self, messages: Sequence[fl.Message], tools: object, *, max_tokens: int | None = None
    ) -> fl.Reply:
        with self.lock:
            self.now += 1
        while not self.release.is_set():
            await asyncio.sleep(0.02)
        return fl.Reply(text="ok")


def test_a_cancel_during_an_async_model_call_ends_the_call(tmp_path: Path) -> None:
    model = Hanging()
    agent = fl.Agent(name="hang", llm=model)
    with fl.Runtime.open(tmp_path / "s", agents=[agent]) as rt:
        run = rt.spawn(agent, "go")
        assert model.started.wait(10)
        run.cancel(reason="enough")
        assert run.wait(timeout=10).status is fl.RunStatus.CANCELLED
        assert model.cancelled.wait(10), "the model call in flight was not cancelled"
        assert [r.type for r in rt.events(run.id)][-2:] == ["model.requested", "run.cancelled"]


def test_a_cancel_during_an_async_tool_call_cancels_its_task(tmp_path: Path) -> None:
    started, cancelled = threading.Event(), threading.Event()

    @fl.tool
    async def fetch(url: str) -> str:
        """Fetch a page (forever)."""
        started.set()
        try:
            await asyncio.sleep(600)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return "page"

    llm = fl.ScriptedLLM([fl.Reply(tool_calls=[fl.ToolCall("fetch", {"url": "x"})])])
    agent = fl.Agent(name="fetcher", llm=llm, tools=[fetch])
    with fl.Runtime.open(tmp_path / "s", agents=[agent]) as rt:
        run = rt.spawn(agent, "go")
        assert started.wait(10)
        run.cancel(reason="enough")
        assert run.wait(timeout=10).status is fl.RunStatus.CANCELLED
        assert cancelled.wait(10), "the tool's task was not cancelled"


def test_runs_in_flight_hold_no_thread_each(tmp_path: Path) -> None:
    model = Held()
    agent = fl.Agent(name="many", llm=model)
    with fl.Runtime.open(tmp_path / "s", agents=[agent]) as rt:
        model.release.set()
        assert rt.spawn(agent, "warm").wait(timeout=30).ok  # shards, loop and writer started
        model.release.clear()
        model.now = 0
        before = threading.active_count()
        runs = [rt.spawn(agent, f"r{i}") for i in range(300)]
        try:
            wait_until(lambda: model.now == 300, 60, "300 model calls in flight at once")
            assert rt.system.active_count() == 300
            assert threading.active_count() <= before + 2  # a thread per run would be +300
        finally:
            model.release.set()
        assert all(run.wait(timeout=60).ok for run in runs)
