"""The ``openai`` case's workload made with the OpenAI SDK alone: its reference.

No run, no log, no tool pool: ``runs`` conversations gathered on one event loop, each making
``steps`` chat completions against ``fleet_server.py`` through one ``AsyncOpenAI`` client set
up as ``fl.OpenAIChat`` sets up its own (aiohttp transport when installed, no SDK retries),
with the same request bodies (``OpenAIChat``'s own tool definition of ``ping``, compact JSON,
posted as bytes and the reply read as text), answering each tool call itself with its
``pong``. What the SDK's own CPU a request costs shows in its share of the latency bound.
"""

from __future__ import annotations

from typing import Any

import msgspec
import openai
from fleet_agents import ping
from fleet_tasks import Fleet, run_all

import foldloop.llm._sdk as sdk
from foldloop.llm._openai_chat import _tool

TOOLS = [_tool(ping.spec)]


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
        await run_all(out, [conversation() for _ in range(runs)], deadline, "conversations")
    return out
