"""Tools: schemas from type hints, bad arguments fed back, timeouts, a subprocess tool.

python examples/tools.py

Its store stays in ``.foldloop-examples/tools`` (replaced on each run) for the
``foldloop`` command to read; the last line it prints is the command.
"""

from __future__ import annotations

import shlex
import shutil
import sys
import time
from pathlib import Path

import foldloop as fl

STORE = Path(".foldloop-examples/tools")


@fl.tool(idempotent=True)
def add(a: int, b: int) -> int:
    """Add two integers.

    Args:
        a: the first term
        b: the second term
    """
    return a + b


@fl.tool(timeout=0.5)
def slow() -> str:
    """Takes longer than its timeout allows."""
    time.sleep(2)
    return "too late"


@fl.tool(subprocess=True, timeout=10)
def git_version() -> str:
    """The version line of git (run in a child process, killed with its group at the timeout)."""
    result = fl.run_command(["git", "--version"], timeout=5)
    return result.stdout.strip() or f"git unavailable ({result.returncode})"


llm = fl.ScriptedLLM(
    [
        # one reply, three calls: they run concurrently, results come back in this order
        fl.Reply(
            tool_calls=[
                fl.ToolCall("add", {"a": "two", "b": 3}),  # wrong type: fed back to the model
                fl.ToolCall("slow", {}),
                fl.ToolCall("git_version", {}),
            ]
        ),
        fl.Reply(tool_calls=[fl.ToolCall("add", {"a": 2, "b": 3})]),
        fl.Reply(text="2 + 3 = 5"),
    ]
)
agent = fl.Agent(name="tools-example", llm=llm, tools=[add, slow, git_version])

if __name__ == "__main__":
    print(add.spec.parameters["properties"]["a"])  # the schema the model sees
    shutil.rmtree(STORE, ignore_errors=True)
    with fl.Runtime.open(STORE, agents=[agent]) as rt:
        run = rt.spawn(agent, "What is 2+3?")
        result = run.wait(timeout=60)
        failures = []
        for rec in rt.events(run.id):
            if isinstance(rec.event, fl.events.ToolFailed):
                failures.append(rec.event.kind)
                print(rec.seq, "tool.failed", rec.event.kind, rec.event.error)
            elif isinstance(rec.event, fl.events.ToolCompleted):
                print(rec.seq, "tool.completed", rec.event.result)
        assert sorted(failures) == ["invalid_args", "timeout"], failures
        print(result.status.value, result.output)
        assert result.status is fl.RunStatus.COMPLETED
    print(f"\nthe store stays in {STORE}; list its runs with:")
    print(" ", shlex.join([sys.executable, "-m", "foldloop.cli", "--store", str(STORE), "runs"]))
