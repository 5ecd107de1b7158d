"""MCP tools: a real MCP server subprocess (written with the SDK) driven through foldloop."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

import foldloop as fl

SERVER = textwrap.dedent(
    '''
    from mcp.server.mcpserver import MCPServer
    from mcp.server.mcpserver.exceptions import ToolError

    server = MCPServer("calc")

    @server.tool()
    def multiply(a: int, b: int) -> int:
        """Multiply two integers."""
        return a * b

    @server.tool()
    def explode(reason: str) -> str:
        """Always fails, with a message meant for the model."""
        raise ToolError(f"boom: {reason}")

    server.run()
    '''
)


@pytest.fixture
def mcp_server(tmp_path: Path) -> Iterator[fl.McpServer]:
    script = tmp_path / "calc_server.py"
    script.write_text(SERVER)
    with fl.McpServer([sys.executable, str(script)], timeout=20) as server:
        yield server


def test_the_servers_tools_keep_their_schemas(mcp_server: fl.McpServer) -> None:
    tools = {t.name: t for t in mcp_server.tools}
    assert set(tools) == {"multiply", "explode"}
    spec = tools["multiply"].spec
    assert spec.description == "Multiply two integers."
    assert spec.parameters["properties"]["a"]["type"] == "integer"
    assert sorted(spec.parameters["required"]) == ["a", "b"]
    assert tools["multiply"](a=6, b=7) == "42"


def test_a_run_calls_mcp_tools_and_hears_their_errors(
    mcp_server: fl.McpServer, store_path: Path
) -> None:
    llm = fl.ScriptedLLM(
        [
            fl.Reply(
                tool_calls=[
                    fl.ToolCall("multiply", {"a": 6, "b": 7}),
                    fl.ToolCall("explode", {"reason": "test"}),
                    fl.ToolCall("multiply", '{"a": 1'),
                ]
            ),
            fl.Reply(text="done"),
        ]
    )
    agent = fl.Agent(name="mcp", llm=llm, tools=mcp_server.tools)
    with fl.Runtime.open(store_path) as rt:
        run = rt.spawn(agent, "go")
        assert run.wait(timeout=60).output == "done"
        outcomes = [
            (r.type, getattr(r.event, "kind", ""))
            for r in rt.events(run.id)
            if r.type in ("tool.completed", "tool.failed")
        ]
        assert sorted(outcomes) == [
            ("tool.completed", ""),
            ("tool.failed", "exception"),
            ("tool.failed", "invalid_args"),
        ]
        tool_messages = [m.content for m in rt.state(run.id).messages if m.role == "tool"]
        assert tool_messages[0] == "42"
        assert "boom: test" in tool_messages[1]
        assert "not valid JSON" in tool_messages[2]


def test_a_server_that_does_not_start_is_a_clear_error(tmp_path: Path) -> None:
    broken = tmp_path / "broken.py"
    broken.write_text("raise SystemExit(3)\n")
    with pytest.raises(fl.ConfigError, match="did not start"):
        fl.McpServer([sys.executable, str(broken)], startup_timeout=10)
    with pytest.raises(fl.ConfigError, match="non-empty argv list"):
        fl.McpServer("python server.py")  # type: ignore[arg-type]
