"""Agents a WorkerPool's worker processes import by path (``pool_agents:NAME``).

The tests dir is on the host's sys.path under pytest, and a pool hands its sys.path to
the workers, so these load in both.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import foldloop as fl

HOLD_IMPORT_ENV = "FOLDLOOP_TEST_HOLD_IMPORT"
"""A file path: while that file exists, a worker importing this module waits (a slow start)."""
if os.environ.get(HOLD_IMPORT_ENV):
    while Path(os.environ[HOLD_IMPORT_ENV]).exists():
        time.sleep(0.01)


@fl.tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


calc = fl.Agent(
    name="calc",
    llm=fl.ScriptedLLM(
        [fl.Reply(tool_calls=[fl.ToolCall("add", {"a": 2, "b": 3})]), fl.Reply(text="5")]
    ),
    tools=[add],
)


@fl.tool(timeout=60)
def wait_for(path: str) -> str:
    """Block until ``path`` exists (non-idempotent: a crash inside it leaves it unknown).

    Args:
        path: the file to wait for
    """
    while not Path(path).exists():
        time.sleep(0.01)
    return "appeared"


def _blocker_reply(messages: Sequence[fl.Message], tools: Sequence[fl.types.ToolSpec]) -> fl.Reply:
    """Ask to wait for the file the input names; then report what the tool said."""
    if messages[-1].role == "tool":
        return fl.Reply(text=f"tool said: {messages[-1].content}")
    return fl.Reply(tool_calls=[fl.ToolCall("wait_for", {"path": messages[-1].content})])


blocker = fl.Agent(name="blocker", llm=fl.ScriptedLLM(_blocker_reply), tools=[wait_for])


def _persistent_reply(
    messages: Sequence[fl.Message], tools: Sequence[fl.types.ToolSpec]
) -> fl.Reply:
    """Ask to wait for the file the input names until the tool says it appeared (a call a
    crash cut short is asked again)."""
    if messages[-1].role == "tool" and messages[-1].content == "appeared":
        return fl.Reply(text="done")
    path = next(m.content for m in messages if m.role == "user")
    return fl.Reply(tool_calls=[fl.ToolCall("wait_for", {"path": path})])


persistent = fl.Agent(name="persistent", llm=fl.ScriptedLLM(_persistent_reply), tools=[wait_for])

gated = fl.Agent(
    name="gated",
    llm=fl.ScriptedLLM(
        [fl.Reply(tool_calls=[fl.ToolCall("add", {"a": 1, "b": 1})]), fl.Reply(text="2")]
    ),
    tools=[add],
    approvals=fl.RequireApproval({"add"}),
)

short = fl.Agent(
    name="short",
    llm=fl.ScriptedLLM(
        [fl.Reply(tool_calls=[fl.ToolCall("add", {"a": i, "b": 1})]) for i in range(3)]
        + [fl.Reply(text="done")]
    ),
    tools=[add],
    limits=fl.Limits(max_steps=2),
)

wordy = fl.Agent(  # its run.started leaves an input under half an event
    name="wordy", llm=fl.ScriptedLLM(lambda m, t: fl.Reply(text="ok")), instructions="i" * 600_000
)


@fl.tool(idempotent=True)
def switch_interval() -> str:
    """This process's sys.getswitchinterval() (what a pool set in its worker)."""
    return repr(sys.getswitchinterval())


probe = fl.Agent(
    name="probe",
    llm=fl.ScriptedLLM(
        [fl.Reply(tool_calls=[fl.ToolCall("switch_interval", {})]), fl.Reply(text="seen")]
    ),
    tools=[switch_interval],
)


@fl.tool
def pay_once(tag: str) -> str:
    """Record a payment in the ledger file $FOLDLOOP_TEST_LEDGER (must never run twice)."""
    with open(os.environ["FOLDLOOP_TEST_LEDGER"], "a") as out:
        out.write(tag + "\n")
        out.flush()
        os.fsync(out.fileno())
    return f"paid {tag}"


def _pay_reply(messages: Sequence[fl.Message], tools: Sequence[fl.types.ToolSpec]) -> fl.Reply:
    if messages[-1].role == "tool":
        return fl.Reply(text=messages[-1].content)
    return fl.Reply(tool_calls=[fl.ToolCall("pay_once", {"tag": messages[-1].content})])


payer = fl.Agent(
    name="payer",
    llm=fl.ScriptedLLM(_pay_reply),
    tools=[pay_once],
    approvals=fl.RequireApproval({"pay_once"}),
)


def unconfigured() -> fl.Agent:
    """A factory that cannot make its agent (a key not set, say)."""
    raise RuntimeError("no API key configured")
