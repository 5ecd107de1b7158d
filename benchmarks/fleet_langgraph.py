"""The fleet workload of ``bench_fleet.py`` in LangGraph: the reference it prints foldloop against.

An agent loop as LangGraph writes one: a StateGraph over ``MessagesState`` with a model node
(waits ``latency_s`` asynchronously, then asks for one ``ping`` call per turn until the run
has made ``steps - 1`` of them, then answers text) and a tool node; compiled with
``AsyncSqliteSaver`` on one SQLite file, every run a ``graph.ainvoke`` with its own
``thread_id``, all of them gathered on one event loop. Needs ``pip install langgraph
langgraph-checkpoint-sqlite aiosqlite`` (not a foldloop dependency).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from fleet_tasks import Fleet, run_all

# Module-level imports: LangGraph evaluates the nodes' type hints in this module's globals.
from langchain_core.messages import (  # type: ignore[import-not-found, unused-ignore]
    AIMessage,
    HumanMessage,
    ToolMessage,
)
from langgraph.checkpoint.sqlite.aio import (  # type: ignore[import-not-found, unused-ignore]
    AsyncSqliteSaver,
)
from langgraph.graph import (  # type: ignore[import-not-found, unused-ignore]
    END,
    START,
    MessagesState,
    StateGraph,
)


async def fleet(runs: int, steps: int, latency_s: float, deadline: float, db: Path) -> Fleet:
    """``runs`` runs of ``steps`` model calls at once, until ``deadline`` (time.monotonic)."""
    out = Fleet()

    async def model(state: MessagesState) -> dict[str, Any]:
        await asyncio.sleep(latency_s)
        out.steps_done += 1
        turns = sum(1 for m in state["messages"] if isinstance(m, AIMessage))
        if turns < steps - 1:
            call = {"id": f"c{turns}", "name": "ping", "args": {"i": turns}}
            return {"messages": [AIMessage(content="", tool_calls=[call])]}
        return {"messages": [AIMessage(content="done")]}

    async def tools(state: MessagesState) -> dict[str, Any]:
        last = state["messages"][-1]
        assert isinstance(last, AIMessage)
        call = last.tool_calls[0]
        reply = ToolMessage(content=f"pong {call['args']['i']}", tool_call_id=call["id"] or "")
        return {"messages": [reply]}

    def route(state: MessagesState) -> str:
        last = state["messages"][-1]
        return "tools" if isinstance(last, AIMessage) and last.tool_calls else END

    builder = StateGraph(MessagesState)
    builder.add_node("model", model)
    builder.add_node("tools", tools)
    builder.add_edge(START, "model")
    builder.add_conditional_edges("model", route, ["tools", END])
    builder.add_edge("tools", "model")
    async with AsyncSqliteSaver.from_conn_string(str(db)) as saver:
        graph = builder.compile(checkpointer=saver)
        invocations = [
            graph.ainvoke(
                {"messages": [HumanMessage(content="go")]},
                config={"configurable": {"thread_id": f"run-{i}"}, "recursion_limit": 4 * steps},
            )
            for i in range(runs)
        ]
        await run_all(out, invocations, deadline, "runs")
    return out
