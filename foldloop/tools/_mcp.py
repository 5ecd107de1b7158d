"""The tools of an MCP server (stdio) as foldloop tools, through the official ``mcp`` SDK.

Install with ``pip install 'foldloop[mcp]'``. The SDK is asyncio; foldloop's tools run on
worker threads. So one event loop runs on a thread of its own, holding the session to the
server process, and each tool call is handed to it and waited for with the tool's
timeout. Schemas are the server's own (``input_schema``), preserved as the model sees them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

import msgspec

from foldloop._closing import ClosedOnExit
from foldloop.core._messages import ToolSpec
from foldloop.errors import ConfigError
from foldloop.events._values import ToolInfo
from foldloop.tools._decorator import DEFAULT_TIMEOUT, Tool, ToolOutcome

if TYPE_CHECKING:
    import asyncio

__all__ = ["McpServer", "McpTool"]

_JSON = msgspec.json.Encoder(order="sorted")


class McpTool(Tool):
    """One tool of an MCP server."""

    def __init__(
        self,
        server: McpServer,
        name: str,
        description: str,
        input_schema: dict[str, Any],
        *,
        timeout: float | None,
        idempotent: bool,
    ) -> None:
        # Not Tool.__init__: the schema comes from the server, not from Python type hints.
        self.server = server
        self.name = name
        self.description = description
        self.timeout = timeout
        self.idempotent = idempotent
        self.concurrency = 4
        digest = hashlib.sha256(_JSON.encode([name, input_schema, idempotent])).hexdigest()[:16]
        self.info = ToolInfo(name=name, idempotent=idempotent, schema_digest=digest)
        self.spec = ToolSpec(name=name, description=description, parameters=input_schema)

    def __repr__(self) -> str:
        return f"McpTool({self.name!r})"

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Call the server's tool directly with keyword arguments."""
        outcome = self.invoke(json.dumps(kwargs))
        return outcome.text

    def invoke(self, args: str) -> ToolOutcome:
        """Call the tool on the server; a server-side error becomes a failed outcome."""
        start = time.perf_counter()
        try:
            arguments = json.loads(args or "{}")
        except json.JSONDecodeError as exc:
            return ToolOutcome(
                False, f"arguments for {self.name!r} are not valid JSON ({exc})", "invalid_args"
            )
        if not isinstance(arguments, dict):
            return ToolOutcome(
                False, f"arguments for {self.name!r} must be an object", "invalid_args"
            )
        try:
            text, is_error = self.server.call(self.name, arguments, self.timeout)
        except Exception as exc:
            ms = (time.perf_counter() - start) * 1000
            return ToolOutcome(False, f"{type(exc).__name__}: {exc}", "exception", ms)
        ms = (time.perf_counter() - start) * 1000
        return ToolOutcome(not is_error, text, "exception" if is_error else "", ms)


class McpServer(ClosedOnExit):
    """A running MCP server process and its tools (``with fl.McpServer([...]) as server``)."""

    def __init__(
        self,
        command: Sequence[str],
        *,
        env: dict[str, str] | None = None,
        cwd: str | None = None,
        timeout: float | None = DEFAULT_TIMEOUT,
        idempotent: bool = False,
        startup_timeout: float = 30.0,
    ) -> None:
        if isinstance(command, str) or not command:
            raise ConfigError(f"command must be a non-empty argv list; got {command!r}")
        try:
            import mcp  # noqa: F401, PLC0415 - an optional extra, imported when used
        except ImportError:
            raise ConfigError("McpServer needs the mcp SDK: pip install 'foldloop[mcp]'") from None
        import asyncio  # noqa: PLC0415 - only MCP users pay for importing asyncio

        self._asyncio = asyncio
        self._command = list(command)
        self._env, self._cwd = env, cwd
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="foldloop-mcp", daemon=True
        )
        self._thread.start()
        self._session: Any = None
        self._closing: asyncio.Event | None = None
        self._done: Future[None] = Future()
        ready: Future[list[Any]] = Future()
        asyncio.run_coroutine_threadsafe(self._serve(ready), self._loop)
        try:
            listed = ready.result(timeout=startup_timeout)
        except Exception as exc:
            self.close()
            raise ConfigError(f"MCP server {self._command!r} did not start: {exc}") from None
        self.tools: list[McpTool] = [
            McpTool(
                self,
                t.name,
                t.description or "",
                dict(t.input_schema),
                timeout=timeout,
                idempotent=idempotent,
            )
            for t in listed
        ]

    async def _serve(self, ready: Future[list[Any]]) -> None:
        from mcp import ClientSession, StdioServerParameters  # noqa: PLC0415
        from mcp.client.stdio import stdio_client  # noqa: PLC0415

        params = StdioServerParameters(
            command=self._command[0], args=self._command[1:], env=self._env, cwd=self._cwd
        )
        self._closing = self._asyncio.Event()
        try:
            async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
                await session.initialize()
                listed = await session.list_tools()
                self._session = session
                ready.set_result(list(listed.tools))
                await self._closing.wait()
        except Exception as exc:
            if not ready.done():
                ready.set_exception(exc)
        finally:
            self._session = None
            self._done.set_result(None)

    def call(self, name: str, arguments: dict[str, Any], timeout: float | None) -> tuple[str, bool]:
        """Call a tool; returns (text, is_error). Thread-safe."""
        session = self._session
        if session is None:
            raise ConfigError("the MCP server is not running (closed, or it exited)")
        call = session.call_tool(name, arguments)
        future = self._asyncio.run_coroutine_threadsafe(call, self._loop)
        result = future.result(timeout=timeout)
        parts = [c.text for c in result.content if getattr(c, "type", "") == "text"]
        if not parts and result.structured_content is not None:
            parts = [json.dumps(result.structured_content, sort_keys=True)]
        return "\n".join(parts), bool(result.is_error)

    def close(self) -> None:
        """Stop the server process and the loop thread."""
        if self._closing is not None:
            self._loop.call_soon_threadsafe(self._closing.set)
            with contextlib.suppress(Exception):  # closing is best effort
                self._done.result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
