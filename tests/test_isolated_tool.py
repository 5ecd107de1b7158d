"""@tool(subprocess=True): each call in a child process, killed with its group at the timeout."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import foldloop as fl
from tests.isolated_tools import (
    big_result,
    chatty,
    closes_stdout,
    crash,
    echo_size,
    hang,
    starts_background,
    whoami,
)
from tests.test_command import alive
from tests.waiting import wait_until


def test_a_call_runs_in_another_process_and_returns_its_value() -> None:
    outcome = whoami.invoke('{"tag": "x"}')
    assert outcome.ok, outcome
    value = json.loads(outcome.text)
    assert value["tag"] == "x"
    assert value["pid"] != os.getpid()
    bad = whoami.invoke('{"tag": 5}')
    assert (bad.ok, bad.kind) == (False, "invalid_args")  # refused before any process starts


def test_a_hung_tool_is_killed_at_its_timeout(tmp_path: Path, store_path: Path) -> None:
    pidfile = tmp_path / "pid"
    llm = fl.ScriptedLLM(
        [fl.Reply(tool_calls=[fl.ToolCall("hang", {"pidfile": str(pidfile)})]), fl.Reply(text="ok")]
    )
    agent = fl.Agent(name="iso", llm=llm, tools=[hang])
    with fl.Runtime.open(store_path) as rt:
        run = rt.spawn(agent, "go")
        assert run.wait(timeout=60).output == "ok"
        failed = [r.event for r in rt.events(run.id) if r.type == "tool.failed"]
        assert [f.kind for f in failed] == ["timeout"]
    child = int(pidfile.read_text())
    # the worker that ran it was freed, not left hanging
    wait_until(lambda: not alive(child), 10, "the hung tool's process to be killed")


def test_a_crashing_child_is_an_exception_outcome() -> None:
    outcome = crash.invoke("{}")
    assert (outcome.ok, outcome.kind) == (False, "exception")
    assert "exited with 7" in outcome.text


def test_a_subprocess_tool_must_be_importable() -> None:
    with pytest.raises(fl.ConfigError, match="defined at module level"):

        @fl.tool(subprocess=True)
        def local() -> str:
            """Not importable by name."""
            return "x"


def test_what_a_subprocess_tool_prints_does_not_spoil_its_result() -> None:
    outcome = chatty.invoke('{"n": 5}')
    assert (outcome.ok, outcome.text) == (True, "got 5"), outcome
    closed = closes_stdout.invoke("{}")
    assert (closed.ok, closed.text) == (True, "fine"), closed


def test_arguments_past_what_a_command_line_holds_reach_a_subprocess_tool() -> None:
    text = "y" * 300_000  # Linux refuses a single argv string past 128 KiB
    outcome = echo_size.invoke(json.dumps({"text": text}))
    assert (outcome.ok, outcome.text) == (True, "300000"), outcome


def test_a_subprocess_tools_long_result_is_cut_as_any_tools_is(tmp_path: Path) -> None:
    outcome = big_result.invoke('{"chars": 2000000}')
    assert outcome.ok, outcome
    assert len(outcome.text) == big_result.max_result_chars
    assert outcome.original_chars == 2_000_000


def test_a_subprocess_tool_that_leaves_a_process_behind_returns_when_it_does(
    tmp_path: Path,
) -> None:
    """The process it started holds the call's stdout and stderr: the call must not wait
    for them to close (it did, then recorded a timeout for a call that had returned)."""
    pidfile = tmp_path / "pid"
    outcome = starts_background.invoke(json.dumps({"pidfile": str(pidfile)}))
    assert (outcome.ok, outcome.text) == (True, "started"), outcome
    assert outcome.duration_ms < 20_000  # its timeout is 30 s
    left = int(pidfile.read_text())
    wait_until(lambda: not alive(left), 10, "the process it left in its group to be killed")


def test_a_subprocess_tool_without_a_timeout_runs() -> None:
    untimed = fl.tool(subprocess=True, timeout=None)(whoami.fn)
    outcome = untimed.invoke('{"tag": "x"}')
    assert outcome.ok, outcome
