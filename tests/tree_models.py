"""Scripted models the run-tree tests share: a sub-agent that answers at once, a lead that
fans out to its sub-agents and joins their answers."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import foldloop as fl

Model = Callable[[Sequence[fl.Message], Sequence[object]], fl.Reply]


def answers(prefix: str, usage: fl.types.Usage | None = None) -> Model:
    """A model that answers its task at once: ``prefix: <task>``."""

    def reply(messages: Sequence[fl.Message], tools: Sequence[object]) -> fl.Reply:
        task = next(m.content for m in messages if m.role == "user")
        return fl.Reply(text=f"{prefix}: {task}", usage=usage)

    return reply


def fans_out(*calls: tuple[str, str], usage: fl.types.Usage | None = None) -> Model:
    """A lead's model: first asks each (agent, task) at once, then joins what came back."""

    def reply(messages: Sequence[fl.Message], tools: Sequence[object]) -> fl.Reply:
        if not any(m.role == "tool" for m in messages):
            asked = [fl.ToolCall(a, {"input": t}) for a, t in calls]
            return fl.Reply(tool_calls=asked, usage=usage)
        return fl.Reply(text=" | ".join(m.content for m in messages if m.role == "tool"))

    return reply
