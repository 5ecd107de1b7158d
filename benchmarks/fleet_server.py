"""A local OpenAI-compatible chat server for ``bench_fleet.py`` (stdlib asyncio, no dependency).

    python benchmarks/fleet_server.py --steps 10 --latency-s 1.0 [--port 0]

``POST /v1/chat/completions`` answers after ``latency_s`` seconds: a call of the request's
first tool while the conversation has fewer than ``steps - 1`` assistant messages, then
text, so a run makes ``steps`` model calls. It prints ``listening on http://127.0.0.1:PORT/v1``
once it accepts connections, keeps connections alive, and exits when its stdin closes
(so it never outlives the benchmark that started it, even one killed by SIGKILL).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import sys
import threading
from typing import Any

_ids = itertools.count(1)


def completion(request: dict[str, Any], steps: int) -> dict[str, Any]:
    """The chat completion for ``request``: a tool call, or text once it is the last step."""
    messages = request.get("messages") or []
    turns = sum(1 for m in messages if m.get("role") == "assistant")
    tools = request.get("tools") or []
    message: dict[str, Any]
    if turns < steps - 1 and tools:
        name = tools[0]["function"]["name"]
        call = {
            "id": f"call_{next(_ids)}",
            "type": "function",
            "function": {"name": name, "arguments": json.dumps({"i": turns})},
        }
        message, finish = {"role": "assistant", "content": None, "tool_calls": [call]}, "tool_calls"
    else:
        message, finish = {"role": "assistant", "content": "done"}, "stop"
    prompt = 16 * len(messages)
    return {
        "id": f"chatcmpl-{next(_ids)}",
        "object": "chat.completion",
        "created": 0,
        "model": request.get("model", "fleet"),
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        "usage": {"prompt_tokens": prompt, "completion_tokens": 8, "total_tokens": prompt + 8},
    }


def _response(status: str, body: bytes, keep_alive: bool) -> bytes:
    connection = "keep-alive" if keep_alive else "close"
    head = (
        f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: {connection}\r\n\r\n"
    )
    return head.encode() + body


async def _serve(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, steps: int, latency_s: float
) -> None:
    """One connection: requests one after another until the client closes it."""
    try:
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            lines = head.decode("latin-1").split("\r\n")
            method, path, _version = lines[0].split(" ", 2)
            headers = {
                k.strip().lower(): v.strip()
                for k, _, v in (line.partition(":") for line in lines[1:] if line)
            }
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            keep_alive = headers.get("connection", "").lower() != "close"
            if method == "POST" and path.rstrip("/").endswith("/chat/completions"):
                await asyncio.sleep(latency_s)
                answer = json.dumps(completion(json.loads(body), steps)).encode()
                writer.write(_response("200 OK", answer, keep_alive))
            else:
                error = {"error": {"message": f"no route {method} {path}", "type": "not_found"}}
                writer.write(_response("404 Not Found", json.dumps(error).encode(), keep_alive))
            await writer.drain()
            if not keep_alive:
                return
    finally:
        writer.close()


def _exit_when_stdin_closes() -> None:
    sys.stdin.buffer.read()
    os._exit(0)


async def main(port: int, steps: int, latency_s: float) -> None:
    server = await asyncio.start_server(
        lambda r, w: _serve(r, w, steps, latency_s), "127.0.0.1", port, backlog=4096
    )
    bound = server.sockets[0].getsockname()[1]
    print(f"listening on http://127.0.0.1:{bound}/v1", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--port", type=int, default=0, help="0: any free port (printed)")
    parser.add_argument("--steps", type=int, default=10, help="model calls a conversation")
    parser.add_argument("--latency-s", type=float, default=1.0, help="seconds before each answer")
    args = parser.parse_args()
    threading.Thread(target=_exit_when_stdin_closes, daemon=True).start()
    asyncio.run(main(args.port, args.steps, args.latency_s))
