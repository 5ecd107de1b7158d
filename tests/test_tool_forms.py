"""What ``@fl.tool`` accepts: generators are refused; a coroutine returned by a plain
function is a clear failure; ``invoke`` runs an async tool."""

from __future__ import annotations

import asyncio
import gc
import signal
import warnings
from collections.abc import AsyncIterator, Iterator

import pytest

import foldloop as fl


def test_generator_tools_are_refused_when_decorated() -> None:
    def chunks(x: int) -> Iterator[str]:
        """Yield pieces."""
        yield "a"

    async def stream(x: int) -> AsyncIterator[str]:
        """Yield pieces, async."""
        yield "a"

    for fn in (chunks, stream):
        with pytest.raises(fl.ConfigError, match=r"is a generator: a tool returns one result"):
            fl.tool(fn)


def test_a_plain_function_returning_a_coroutine_fails_clearly_and_quietly() -> None:
    async def later(x: int) -> str:
        return str(x)

    @fl.tool
    def forgot(x: int) -> str:
        """Forgot to be async."""
        return later(x)  # type: ignore[return-value]

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        outcome = forgot.invoke('{"x": 1}')
        gc.collect()  # an unawaited coroutine warns when it is collected
    assert not outcome.ok and outcome.kind == "exception"
    assert outcome.text.startswith("the tool returned a coroutine instead of its result: await")
    assert not [w for w in seen if "never awaited" in str(w.message)]


def test_invoke_runs_an_async_tool_outside_an_event_loop_and_says_what_to_do_inside() -> None:
    @fl.tool
    async def double(x: int) -> int:
        """Twice x."""
        await asyncio.sleep(0)
        return 2 * x

    outcome = double.invoke('{"x": 21}')
    assert outcome.ok and outcome.text == "42"

    async def inside() -> None:
        with pytest.raises(fl.ConfigError, match=r"is async def and an event loop runs"):
            double.invoke('{"x": 1}')
        assert (await double.ainvoke('{"x": 2}')).text == "4"

    asyncio.run(inside())


def test_invoke_of_an_async_tool_that_raises_systemexit_is_an_outcome() -> None:
    @fl.tool
    async def quits(x: int) -> str:
        """Exit, as argparse does on bad input."""
        raise SystemExit(2)

    outcome = quits.invoke('{"x": 1}')
    assert not outcome.ok and outcome.kind == "exception"
    assert outcome.text == "SystemExit raised inside the tool"


def test_a_ctrl_c_of_the_script_during_invoke_of_an_async_tool_stops_the_script() -> None:
    @fl.tool
    async def waits() -> str:
        """Wait long."""
        signal.raise_signal(signal.SIGINT)  # as a Ctrl-C of the script now
        await asyncio.sleep(10)
        return "never"

    with pytest.raises(KeyboardInterrupt):  # before: an outcome, and the script went on
        waits.invoke("{}")


def test_arguments_that_are_not_valid_unicode_are_invalid_not_a_crash() -> None:
    @fl.tool
    def echo(s: str) -> str:
        """Echo."""
        return s

    outcome = echo.invoke('{"s": "x\ud800y"}')
    assert (outcome.ok, outcome.kind) == (False, "invalid_args"), outcome
    assert "not valid Unicode text" in outcome.text
    with pytest.raises(fl.ConfigError, match="valid Unicode"):
        fl.ToolCall("echo", {"s": "lone \ud800"})
