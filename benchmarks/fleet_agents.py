"""The agent of ``bench_fleet.py``, importable by module path (a WorkerPool's workers import it).

Each run makes ``steps`` model calls: every reply but the last asks for one call of the
trivial idempotent tool ``ping``; the last one is text. The model decides from the run's
own history (the assistant messages in it), so a resumed run gets the same replies.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import foldloop as fl

STEPS_ENV = "FOLDLOOP_FLEET_STEPS"
LATENCY_ENV = "FOLDLOOP_FLEET_LATENCY_S"
"""How ``pool_agent`` learns the workload in a worker process (set by the host)."""


@fl.tool(idempotent=True)
def ping(i: int) -> str:
    """Answer at once: the trivial tool of every step but the last."""
    return f"pong {i}"


def script(steps: int) -> Callable[[Sequence[fl.Message], Sequence[object]], fl.Reply]:
    """The model's replies as a function of the conversation: a ``ping`` call per turn until
    the run has made ``steps - 1`` of them, then the final text."""

    def reply(messages: Sequence[fl.Message], tools: Sequence[object]) -> fl.Reply:
        turns = sum(1 for m in messages if m.role == "assistant")
        if turns < steps - 1:
            return fl.Reply(tool_calls=[fl.ToolCall("ping", {"i": turns})])
        return fl.Reply(text="done")

    return reply


def fleet_agent(llm: fl.LLM, steps: int) -> fl.Agent:
    """The fleet's agent over any model (``steps`` model calls a run)."""
    return fl.Agent(name="fleet", llm=llm, tools=[ping], limits=fl.Limits(max_steps=steps + 1))


def scripted_agent(steps: int, latency_s: float) -> fl.Agent:
    """The fleet's agent over a scripted model that answers after ``latency_s`` seconds."""
    return fleet_agent(fl.ScriptedLLM(script(steps), latency_s=latency_s), steps)


def pool_agent() -> fl.Agent:
    """``fleet_agents:pool_agent`` for a WorkerPool: the workload from the environment."""
    return scripted_agent(int(os.environ[STEPS_ENV]), float(os.environ[LATENCY_ENV]))
