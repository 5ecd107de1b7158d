"""Models written by host code as careless users write them: whatever they return or raise,
the run ends with a clear outcome and the log stays readable."""

from __future__ import annotations

import asyncio
from collections import namedtuple
from collections.abc import Sequence

import pytest

import foldloop as fl


class Text(str):
    """A str subclass, as numpy's str_ or markupsafe's Markup are."""


def run(rt: fl.Runtime, llm: object, *, name: str = "host") -> tuple[fl.RunResult, list[str]]:
    """The run's result and the keys its tool saved."""

    @fl.tool
    def save(key: str) -> str:
        """Save a key."""
        saved.append(key)
        return "saved"

    saved: list[str] = []
    agent = fl.Agent(name=name, llm=llm, tools=[save])  # type: ignore[arg-type]
    result = rt.spawn(agent, "go").wait(timeout=30)
    rt.verify(result.run_id)  # the log reads back, and replays as it was decided
    return result, saved


class Scripted:
    """A host model: ``first`` once, then the answer."""

    model = "host"

    def __init__(self, first: fl.Reply) -> None:
        self.first: fl.Reply | None = first

    def complete(self, messages: Sequence[fl.Message], tools: object, **_: object) -> fl.Reply:
        first, self.first = self.first, None
        return first if first is not None else fl.Reply(text="done")


def test_tool_calls_given_as_a_generator_are_all_made(rt: fl.Runtime) -> None:
    calls = (fl.ToolCall("save", {"key": k}) for k in ("a", "b"))
    result, saved = run(rt, Scripted(fl.Reply(tool_calls=calls)))  # type: ignore[arg-type]
    assert result.ok and result.output == "done", result
    assert saved == ["a", "b"]


def test_a_tool_call_look_alike_fails_the_call_and_writes_nothing_unreadable(
    rt: fl.Runtime,
) -> None:
    Call = namedtuple("Call", "name args id")
    result, _ = run(rt, Scripted(fl.Reply(tool_calls=[Call("save", '{"key": "a"}', "c1")])))
    assert result.status is fl.RunStatus.FAILED, result
    assert "tool_calls holds a Call, not an fl.ToolCall" in result.reason
    assert not [s for s in rt.runs() if s.damaged]


def test_text_of_a_str_subclass_is_recorded_as_text(rt: fl.Runtime) -> None:
    reply = fl.Reply(
        text=Text("thinking"),
        tool_calls=[fl.ToolCall(Text("save"), {"key": "a"}, id=Text("c1"))],
        model=Text("host-2"),
        stop_reason=Text(""),  # type: ignore[arg-type]
    )
    result, saved = run(rt, Scripted(reply))
    assert result.ok and saved == ["a"], result
    responded = [r.event for r in rt.events(result.run_id) if r.type == "model.responded"]
    assert type(responded[0].text) is str and responded[0].model == "host-2"


class Raises:
    model = "host"

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc

    def complete(self, messages: Sequence[fl.Message], tools: object, **_: object) -> fl.Reply:
        raise self.exc


class CancelsItself:
    model = "host"

    def complete(self, messages: Sequence[fl.Message], tools: object, **_: object) -> fl.Reply:
        raise AssertionError("acomplete is the form used")

    async def acomplete(
        self, messages: Sequence[fl.Message], tools: object, **_: object
    ) -> fl.Reply:
        task = asyncio.current_task()
        assert task is not None
        task.cancel()  # its own task: no cancel of foldloop's
        await asyncio.sleep(1)
        return fl.Reply(text="never")


def test_an_acomplete_that_cancels_its_own_task_fails_the_call_not_the_run_hangs(
    rt: fl.Runtime,
) -> None:
    result, _ = run(rt, CancelsItself())
    assert result.status is fl.RunStatus.FAILED, result
    assert "raised CancelledError without being cancelled" in result.reason


def test_an_async_tool_that_cancels_its_own_task_is_a_failed_call(rt: fl.Runtime) -> None:
    @fl.tool
    async def stubborn() -> str:
        """Cancel itself."""
        task = asyncio.current_task()
        assert task is not None
        task.cancel()
        await asyncio.sleep(1)
        return "never"

    failed = tool_failure(rt, stubborn)
    assert failed.kind == "exception" and "CancelledError" in failed.error


def tool_failure(rt: fl.Runtime, tool: fl.Tool) -> fl.events.ToolFailed:
    """The tool.failed of a run whose model calls ``tool`` once (the run itself completes)."""
    llm = fl.ScriptedLLM([fl.Reply(tool_calls=[fl.ToolCall(tool.name)]), fl.Reply(text="ok")])
    agent = fl.Agent(name=tool.name, llm=llm, tools=[tool])
    result = rt.spawn(agent, "go").wait(timeout=30)
    assert result.ok, result
    (failed,) = [r.event for r in rt.events(result.run_id) if r.type == "tool.failed"]
    assert isinstance(failed, fl.events.ToolFailed)
    return failed


class AsyncComplete:
    model = "host"

    async def complete(
        self, messages: Sequence[fl.Message], tools: object, **_: object
    ) -> fl.Reply:
        return fl.Reply(text="never")


def test_an_async_def_complete_is_told_to_be_acomplete(rt: fl.Runtime) -> None:
    result, _ = run(rt, AsyncComplete())
    assert result.status is fl.RunStatus.FAILED, result
    assert "its complete is an async def; name it acomplete" in result.reason


class AsyncRaises:
    model = "host"

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc

    def complete(self, messages: Sequence[fl.Message], tools: object, **_: object) -> fl.Reply:
        raise AssertionError("acomplete is the form used")

    async def acomplete(
        self, messages: Sequence[fl.Message], tools: object, **_: object
    ) -> fl.Reply:
        await asyncio.sleep(0)
        raise self.exc


@pytest.mark.parametrize("exc", [GeneratorExit(), SystemExit(3)], ids=lambda e: type(e).__name__)
@pytest.mark.parametrize(
    ("form", "said"),
    [(Raises, "complete raised"), (AsyncRaises, "acomplete of model 'host' raised")],
    ids=["complete", "acomplete"],
)
def test_a_model_that_raises_what_is_not_an_exception_fails_the_call(
    rt: fl.Runtime, exc: BaseException, form: type[Raises | AsyncRaises], said: str
) -> None:
    result, _ = run(rt, form(exc))
    assert result.status is fl.RunStatus.FAILED, result
    assert f"{said} {type(exc).__name__}" in result.reason


def test_an_async_tool_that_raises_generator_exit_is_a_failed_call(rt: fl.Runtime) -> None:
    @fl.tool(timeout=None)
    async def closes() -> str:
        """Raise GeneratorExit itself."""
        await asyncio.sleep(0)
        raise GeneratorExit

    failed = tool_failure(rt, closes)
    assert failed.kind == "exception" and "GeneratorExit" in failed.error
