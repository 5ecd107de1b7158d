"""Run one tool call in this (child) process: ``python -m foldloop.tools._isolated M Q``.

The parent (``Tool.invoke`` of a ``@tool(subprocess=True)`` tool) starts this module in a
new process group, so a hung tool is killed with its whole group at the timeout. The tool
is found by module and qualified name (so it must be defined at module level); arguments
arrive as JSON text on stdin and the outcome leaves on stdout as one JSON object, cut to
the tool's bound: nothing is pickled. What the tool itself prints goes to stderr.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
import sys
from typing import Any

import msgspec

from foldloop.tools._decorator import Tool, ToolOutcome


def _load(module: str) -> Any:
    """Import ``module``, or load ``file:/path/script.py`` under a name that is not __main__."""
    if not module.startswith("file:"):
        return importlib.import_module(module)
    path = module.removeprefix("file:")
    spec = importlib.util.spec_from_file_location("foldloop_isolated_script", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path!r}")
    loaded = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = loaded
    spec.loader.exec_module(loaded)
    return loaded


def _find(module: str, qualname: str) -> Any:
    obj: Any = _load(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def main(argv: list[str]) -> int:
    """Entry point of the child."""
    module, qualname = argv[1], argv[2]
    args = sys.stdin.buffer.read().decode()
    answer = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # the tool's prints (and its libraries', at any level) are not its outcome
    try:
        found = _find(module, qualname)
    except Exception as exc:
        outcome = ToolOutcome(False, f"cannot load tool {module}:{qualname}: {exc!r}", "exception")
    else:
        tool = found if isinstance(found, Tool) else Tool(found)
        outcome = tool.bounded(tool.invoke_here(args))
    with contextlib.suppress(ValueError, OSError):  # the tool may have closed sys.stdout
        sys.stdout.flush()
    answer.write(msgspec.json.encode(outcome))
    answer.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
