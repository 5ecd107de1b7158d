"""A WorkerPool: runs driven by two worker processes on one store, one per core.

    python examples/worker_pool.py

Each worker imports the agent by its path (``worker_pool:agent``: this file, found on the
host's sys.path) and drives the runs the host hands it; the host waits and reads through
the log, as for any run another process drives.

Its store stays in ``.foldloop-examples/worker_pool`` (replaced on each run) for the
``foldloop`` command to read; the last line it prints is the command.
"""

from __future__ import annotations

import shlex
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

import foldloop as fl

STORE = Path(".foldloop-examples/worker_pool")


@fl.tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


def _reply(messages: Sequence[fl.Message], tools: Sequence[fl.types.ToolSpec]) -> fl.Reply:
    """Add the two numbers of the question with the tool, then say the sum."""
    if messages[-1].role == "tool":
        return fl.Reply(text=f"the sum is {messages[-1].content}")
    a, b = (int(x) for x in messages[-1].content.split("+"))
    return fl.Reply(tool_calls=[fl.ToolCall("add", {"a": a, "b": b})])


agent = fl.Agent(name="adder", llm=fl.ScriptedLLM(_reply), tools=[add])

if __name__ == "__main__":
    shutil.rmtree(STORE, ignore_errors=True)
    with fl.WorkerPool(STORE, agents=["worker_pool:agent"], processes=2) as pool:
        handles = [pool.spawn("adder", f"{i}+{i}") for i in range(20)]
        results = [h.wait(timeout=60) for h in handles]
        assert all(r.ok for r in results)
        print("outputs:", results[0].output, "...", results[-1].output)
        print("runs per worker:", [w.spawned for w in pool.workers])
        print("runs completed:", len(pool.runtime.runs(status=fl.RunStatus.COMPLETED)))
    print(f"\nthe store stays in {STORE}; list its runs with:")
    print(" ", shlex.join([sys.executable, "-m", "foldloop.cli", "--store", str(STORE), "runs"]))
