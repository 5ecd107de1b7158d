"""Limits: a run stops at its step ceiling, says why, and is resumed with more room.

python examples/limits_and_resume.py

Its store stays in ``.foldloop-examples/limits_and_resume`` (replaced on each run) for the
``foldloop`` command to read; the last line it prints is the command.
"""

from __future__ import annotations

import shlex
import shutil
import sys
from pathlib import Path

import foldloop as fl


@fl.tool(idempotent=True)
def lookup(page: int) -> str:
    """Read one page of a long document."""
    return f"page {page}: ..."


STORE = Path(".foldloop-examples/limits_and_resume")


llm = fl.ScriptedLLM(
    [fl.Reply(tool_calls=[fl.ToolCall("lookup", {"page": i})]) for i in range(1, 6)]
    + [fl.Reply(text="read all five pages")]
)
agent = fl.Agent(name="reader", llm=llm, tools=[lookup], limits=fl.Limits(max_steps=3))

if __name__ == "__main__":
    shutil.rmtree(STORE, ignore_errors=True)
    with fl.Runtime.open(STORE, agents=[agent]) as rt:
        run = rt.spawn(agent, "Read the document.")
        result = run.wait(timeout=60)
        print(result.status.value, "-", result.reason)
        assert result.status is fl.RunStatus.LIMIT_REACHED
        assert result.resumable
        print(rt.explain(run.id))
        result = rt.resume(run.id, extend=fl.Limits(max_steps=10)).wait(timeout=60)
        print(result.status.value, "after", result.steps, "steps:", result.output)
        assert result.status is fl.RunStatus.COMPLETED
        assert result.steps == 6
    print(f"\nthe store stays in {STORE}; list its runs with:")
    print(" ", shlex.join([sys.executable, "-m", "foldloop.cli", "--store", str(STORE), "runs"]))
