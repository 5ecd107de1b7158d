"""What the projection tests and their worker process share: an agent and a projection."""

from __future__ import annotations

import functools

import foldloop as fl


@fl.tool(idempotent=True)
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@functools.cache
def agent(name: str = "calc") -> fl.Agent:
    """Two steps: one tool call, then an answer (one Agent object per name)."""
    llm = fl.ScriptedLLM(
        [fl.Reply(tool_calls=[fl.ToolCall("add", {"a": 2, "b": 3})]), fl.Reply(text="5")]
    )
    return fl.Agent(name=name, llm=llm, tools=[add])


class Positions(fl.projections.Projection[tuple[int, ...]]):
    """Every position applied, in order: a duplicate or a gap shows at once."""

    name = "positions"

    def initial(self) -> tuple[int, ...]:
        return ()

    def apply(self, state: tuple[int, ...], record: fl.types.Recorded) -> tuple[int, ...]:
        return (*state, record.position)
