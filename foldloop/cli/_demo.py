"""The demo agent behind ``foldloop demo``: offline, scripted, and shows the whole loop.

It adds numbers, looks up a (fake) exchange rate, asks a person before writing a note (a
non-idempotent tool behind an approval gate, which the demo answers itself), hits its step
ceiling on purpose, and is resumed with an extended limit.
"""

from __future__ import annotations

from collections.abc import Sequence

from foldloop._agent import Agent
from foldloop._approvals import RequireApproval
from foldloop.core._messages import Message, ToolSpec
from foldloop.events._values import Limits
from foldloop.llm._protocol import Reply, ToolCall
from foldloop.llm._scripted import ScriptedLLM
from foldloop.tools._decorator import tool

__all__ = ["DEMO_INPUT", "demo_agent"]

DEMO_INPUT = "What do 120 EUR and 80 EUR come to in USD? Keep a note of the answer."

_RATES = {("EUR", "USD"): 1.08, ("USD", "EUR"): 0.93}


@tool(idempotent=True)
def add(a: float, b: float) -> float:
    """Add two numbers.

    Args:
        a: the first number
        b: the second number
    """
    return a + b


@tool(idempotent=True, timeout=5)
def exchange_rate(source: str, target: str) -> float:
    """Look up the exchange rate from one currency to another (a fixed demo table).

    Args:
        source: ISO code of the currency you have, e.g. EUR
        target: ISO code of the currency you want, e.g. USD
    """
    return _RATES[(source.upper(), target.upper())]


@tool(timeout=5)
def write_note(text: str) -> str:
    """Record a note (an effect on the world: never run twice after a crash).

    Args:
        text: what to note down
    """
    return f"noted: {text}"


def _script(messages: Sequence[Message], tools: Sequence[ToolSpec]) -> Reply:
    """The demo model: a function of the conversation so far, so it survives resume."""
    step = sum(1 for m in messages if m.role == "assistant")
    results = [m.content for m in messages if m.role == "tool"]
    if step == 0:
        return Reply(
            text="Adding the amounts and fetching the rate.",
            tool_calls=[
                ToolCall("add", {"a": 120, "b": 80}),
                ToolCall("exchange_rate", {"source": "EUR", "target": "USD"}),
            ],
        )
    if step == 1:
        total, rate = float(results[0]), float(results[1])
        return Reply(
            text="Writing the note.",
            tool_calls=[ToolCall("write_note", {"text": f"200 EUR = {total * rate:.2f} USD"})],
        )
    total, rate = float(results[0]), float(results[1])
    return Reply(text=f"120 EUR + 80 EUR = 200 EUR, which is {total * rate:.2f} USD. Noted.")


def demo_agent() -> Agent:
    """A fresh demo agent (two steps allowed, so the third needs an extension)."""
    return Agent(
        name="demo",
        llm=ScriptedLLM(_script),
        tools=[add, exchange_rate, write_note],
        instructions="You are a careful bookkeeper. Use the tools; never guess a rate.",
        limits=Limits(max_steps=2),
        approvals=RequireApproval({"write_note"}, ttl=600),
    )
