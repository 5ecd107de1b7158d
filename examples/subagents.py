"""Sub-agents: a lead agent fans out to three researchers at once and writes up what they
found; one researcher needs a person's approval before it emails anyone.

    python examples/subagents.py

Each researcher runs as a child run with its own log, started by the lead's call of it
(a tool named after the agent), its answer the call's result. The lead's limits bound the
whole tree: each child gets a share of what the lead has left, and returns what it does
not spend. The lead waits, holding no thread, while its children run or park.

Its store stays in ``.foldloop-examples/subagents`` (replaced on each run) for the
``foldloop`` command to read; the last line it prints is the command that draws the tree.
"""

from __future__ import annotations

import shlex
import shutil
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

import foldloop as fl

STORE = Path(".foldloop-examples/subagents")


def finds(source: str) -> fl.ScriptedLLM:
    """A researcher's model: reports what it found in ``source`` about its task."""

    def reply(messages: Sequence[fl.Message], tools: Sequence[object]) -> fl.Reply:
        task = next(m.content for m in messages if m.role == "user")
        return fl.Reply(text=f"{source} on {task}: three good leads")

    return fl.ScriptedLLM(reply)


@fl.tool
def email(to: str, question: str) -> str:
    """Email a person a question (it leaves the building: a person approves it first)."""
    return f"{to} replied: happy to talk"


def interviews(messages: Sequence[fl.Message], tools: Sequence[object]) -> fl.Reply:
    if not any(m.role == "tool" for m in messages):
        return fl.Reply(tool_calls=[fl.ToolCall("email", {"to": "dr.lee", "question": "a chat?"})])
    return fl.Reply(text=f"interviews: {messages[-1].content}")


asked = threading.Event()
web = fl.Agent(name="web", llm=finds("the web"), description="Searches the web.")
papers = fl.Agent(name="papers", llm=finds("the papers"), description="Reads papers.")
people = fl.Agent(
    name="people",
    llm=fl.ScriptedLLM(interviews),
    tools=[email],
    approvals=fl.RequireApproval({"email"}, notify=lambda pending: asked.set()),
    description="Asks experts.",
)


def lead_model(messages: Sequence[fl.Message], tools: Sequence[fl.types.ToolSpec]) -> fl.Reply:
    found = [m.content for m in messages if m.role == "tool"]
    if not found:  # all three at once: they run concurrently
        task = next(m.content for m in messages if m.role == "user")
        return fl.Reply(tool_calls=[fl.ToolCall(t.name, {"input": task}) for t in tools])
    return fl.Reply(text="Report:\n" + "\n".join(f"- {f}" for f in found))


lead = fl.Agent(
    name="lead",
    llm=fl.ScriptedLLM(lead_model),
    agents=[web, papers, people],
    limits=fl.Limits(max_steps=30),
)


def draw(tree: fl.RunTree, depth: int = 0) -> None:
    n = tree.spent_steps
    spent = f"{n} step{'s' * (n != 1)}"
    print(f"{'  ' * depth}{tree.agent} {tree.run_id} {tree.status.value} ({spent})")
    for child in tree.children:
        draw(child, depth + 1)


if __name__ == "__main__":
    shutil.rmtree(STORE, ignore_errors=True)
    with fl.Runtime.open(STORE, agents=[lead]) as rt:
        run = rt.spawn(lead, "solid-state batteries")
        assert asked.wait(30), "the people researcher never asked"
        (pending,) = rt.pending_approvals()  # deep in the tree, found from the host
        print("waiting for a person:", pending.tool, pending.args)
        rt.approve(run_id=pending.run_id, call_id=pending.call_id, by="alice")
        result = run.wait(timeout=60)
        print(result.status.value, "-", result.output)
        assert result.ok, result
        draw(rt.tree(run.id))
    print(f"\nthe store stays in {STORE}; draw the tree with:")
    command = [sys.executable, "-m", "foldloop.cli", "--store", str(STORE), "tree", run.id]
    print(" ", shlex.join(command))
