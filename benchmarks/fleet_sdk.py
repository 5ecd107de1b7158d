"""The ``openai`` case's workload made with the OpenAI SDK alone: its reference.

No run, no log, no tool pool: ``runs`` conversations gathered on one event loop, each making
``steps`` chat completions against ``fleet_server.py`` through one ``AsyncOpenAI`` client set
up as ``fl.OpenAIChat`` sets up its own (aiohttp transport when installed, no SDK retries),
with the same request bodies (``OpenAIChat``'s own tool definition of ``ping``, compact JSON,
posted as bytes and the reply read as text), answering each tool call itself with its
``pong``. What the SDK's own CPU a request costs shows in its share of the latency bound.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import msgspec
import openai
from fleet_agents import ping

import foldloop.llm._sdk as sdk
from foldloop.llm._openai_chat import _tool

TOOLS = [_tool(ping.spec)]


@dataclass
class Fleet:
    """What the bare SDK got done before its deadline."""

    wall_s: float = 0.0
    steps_done: int = 0
    completed: int = 0
    timed_out: bool = False
    problem: str = ""


async def fleet(runs: int, steps: int, deadline: float, url: str) -> Fleet:
    """``runs`` conversations of ``steps`` completions at once, until ``deadline``."""
    out = Fleet()
    options = {"api_key": "x", "base_url": url, "timeout": 60.0, "max_retries": 0}
    client = openai.AsyncOpenAI(**sdk.async_options(openai, options))

    async def conversation() -> None:
        messages: list[dict[str, Any]] = [{"role": "user", "content": "go"}]
        for _ in range(steps):
            body = msgspec.json.encode({"model": "fleet", "messages": messages, "tools": TOOLS})
            text = await client.post("/chat/completions", content=body, cast_to=str)
            out.steps_done += 1
            message = msgspec.json.decode(text)["choices"][0]["message"]
            messages.append(message)
            for call in message.get("tool_calls") or []:
                i = msgspec.json.decode(call["function"]["arguments"])["i"]
                messages.append(
                    {"role": "tool", "tool_call_id": call["id"], "content": f"pong {i}"}
                )

    async with client:
        start = time.perf_counter()
        tasks = [asyncio.create_task(conversation()) for _ in range(runs)]
        finished, pending = await asyncio.wait(tasks, timeout=max(0.0, deadline - time.monotonic()))
        out.wall_s = time.perf_counter() - start
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
    out.completed = sum(1 for t in finished if t.exception() is None)
    out.timed_out = bool(pending)
    failed = [t for t in finished if t.exception() is not None]
    if failed:
        out.problem = f"{len(failed)} conversations raised: {failed[0].exception()!r:.200}"
    return out
