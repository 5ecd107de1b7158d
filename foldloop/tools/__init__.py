"""Tools: ``@tool``, argument schemas from type hints, validation and safe invocation."""

from foldloop.tools.decorator import DEFAULT_TIMEOUT, Tool, ToolOutcome, tool, tools_digest
from foldloop.tools.schema import ArgSchema, build_arg_schema, parse_docstring

__all__ = [
    "ArgSchema",
    "DEFAULT_TIMEOUT",
    "Tool",
    "ToolOutcome",
    "build_arg_schema",
    "parse_docstring",
    "tool",
    "tools_digest",
]
