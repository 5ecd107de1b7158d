"""Projections: fold the whole log into metrics, backfilled then live; Prometheus text.

python examples/projections.py

Its store stays in ``.foldloop-examples/projections`` (replaced on each run) for the
``foldloop`` command to read; the last line it prints is the command.
"""

from __future__ import annotations

import shlex
import shutil
import sys
from pathlib import Path

import foldloop as fl
from foldloop.projections import RunMetrics, prometheus_text

STORE = Path(".foldloop-examples/projections")


@fl.tool(idempotent=True)
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


llm = fl.ScriptedLLM(
    [fl.Reply(tool_calls=[fl.ToolCall("add", {"a": 2, "b": 3})]), fl.Reply(text="5")]
)
agent = fl.Agent(name="calc", llm=llm, tools=[add])


class ToolsUsed(fl.projections.Projection[dict[str, int]]):
    """A projection of your own: how often each tool was asked for."""

    name = "tools_used"
    types = frozenset({"tool.requested"})  # apply sees only these

    def initial(self) -> dict[str, int]:
        return {}

    def apply(self, state: dict[str, int], record: fl.types.Recorded) -> dict[str, int]:
        tool = record.event.tool  # type: ignore[union-attr]
        return {**state, tool: state.get(tool, 0) + 1}  # pure: a new dict


if __name__ == "__main__":
    shutil.rmtree(STORE, ignore_errors=True)
    with fl.Runtime.open(STORE, agents=[agent]) as rt:
        for i in range(3):
            rt.spawn(agent, f"sum {i}").wait(timeout=60)
        metrics = rt.attach(RunMetrics())  # backfills the three runs above...
        tools = rt.attach(ToolsUsed())
        seen: list[str] = []
        live = rt.subscribe(lambda rec: seen.append(rec.type), types={"run.completed"})
        rt.spawn(agent, "one more").wait(timeout=60)  # ...then follows live
        metrics.catch_up()
        tools.catch_up()
        live.catch_up()
        state = metrics.state
        print("runs:", dict(state.runs_by_status), "tool calls:", state.tool_calls)
        print("latency:", state.tool_percentiles()["add"])
        print("tools used:", tools.state, "live completions seen:", len(seen))
        print(prometheus_text(state).splitlines()[2])
        assert state.runs_by_status == {"completed": 4}
        assert tools.state == {"add": 4}
        assert seen == ["run.completed"]
    print(f"\nthe store stays in {STORE}; list its runs with:")
    print(" ", shlex.join([sys.executable, "-m", "foldloop.cli", "--store", str(STORE), "runs"]))
