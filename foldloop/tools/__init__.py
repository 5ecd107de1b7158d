"""Tools: ``@tool``, argument schemas from type hints, validation and safe invocation."""

from foldloop.tools._command import CommandResult, run_command
from foldloop.tools._decorator import DEFAULT_TIMEOUT, Tool, ToolOutcome, tool, tools_digest
from foldloop.tools._schema import ArgSchema, build_arg_schema, parse_docstring

__all__ = [
    "ArgSchema",
    "CommandResult",
    "DEFAULT_TIMEOUT",
    "Tool",
    "ToolOutcome",
    "build_arg_schema",
    "parse_docstring",
    "run_command",
    "tool",
    "tools_digest",
]
