"""The agent the failover test's worker processes drive: one non-idempotent charge, which
writes the run's input to an external ledger (``FOLDLOOP_TEST_LEDGER``), then an answer."""

from __future__ import annotations

import os
from collections.abc import Sequence

import foldloop as fl


@fl.tool
def charge(who: str) -> str:
    """Charge ``who`` once (not idempotent)."""
    with open(os.environ["FOLDLOOP_TEST_LEDGER"], "a") as ledger:
        ledger.write(f"{who}\n")
    return f"charged {who}"


def _plan(messages: Sequence[fl.Message], tools: Sequence[object]) -> fl.Reply:
    if not any(m.role == "tool" for m in messages):
        return fl.Reply(tool_calls=[fl.ToolCall("charge", {"who": messages[0].content})])
    return fl.Reply(text=f"done: {messages[-1].content}")


payer = fl.Agent(name="payer", llm=fl.ScriptedLLM(_plan, latency_s=0.05), tools=[charge])
