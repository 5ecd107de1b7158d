"""foldloop: AI agent loops as an event-sourced actor runtime.

Every run is the fold of its events in one LMDB log, so it survives SIGKILL and resumes
exactly where it was. Start at ``Runtime.open`` (see README.md).

The top level holds what a host writes by name. What it receives (handles, results,
states) is in ``foldloop.types``, every error in ``foldloop.errors``, the event catalogue
in ``foldloop.events``. ``tests/test_public_api.py`` pins ``__all__``.
"""

import typing as _typing

from foldloop import errors as errors
from foldloop import events as events
from foldloop import projections as projections
from foldloop import types as types
from foldloop._agent import Agent as Agent
from foldloop._approvals import RequireApproval as RequireApproval
from foldloop.core._messages import Message as Message
from foldloop.core._pricing import Pricing as Pricing
from foldloop.core._state import RunStatus as RunStatus
from foldloop.errors import (
    ApprovalError as ApprovalError,
)
from foldloop.errors import (
    ConcurrencyError as ConcurrencyError,
)
from foldloop.errors import (
    ConfigError as ConfigError,
)
from foldloop.errors import (
    FoldloopError as FoldloopError,
)
from foldloop.errors import (
    NondeterminismError as NondeterminismError,
)
from foldloop.errors import (
    RunLocked as RunLocked,
)
from foldloop.errors import (
    RunNotFound as RunNotFound,
)
from foldloop.errors import (
    SchemaChangedError as SchemaChangedError,
)
from foldloop.errors import (
    StoreError as StoreError,
)
from foldloop.errors import (
    ToolSchemaError as ToolSchemaError,
)
from foldloop.events._values import Limits as Limits
from foldloop.llm._anthropic_chat import AnthropicChat as AnthropicChat
from foldloop.llm._openai_chat import OpenAIChat as OpenAIChat
from foldloop.llm._protocol import LLM as LLM
from foldloop.llm._protocol import Reply as Reply
from foldloop.llm._protocol import ToolCall as ToolCall
from foldloop.llm._scripted import ScriptedLLM as ScriptedLLM
from foldloop.runtime import Runtime as Runtime
from foldloop.runtime import RunTree as RunTree
from foldloop.runtime import WorkerPool as WorkerPool
from foldloop.tools._command import run_command as run_command
from foldloop.tools._decorator import tool as tool
from foldloop.tools._mcp import McpServer as McpServer

__version__ = "0.1.0"

# The public API: changing this list is an API change; say so in README.md ("Types you will
# meet" and "Errors") and update tests/test_public_api.py, which pins it.
__all__ = [
    "LLM",
    "Agent",
    "AnthropicChat",
    "ApprovalError",
    "ConcurrencyError",
    "ConfigError",
    "FoldloopError",
    "Limits",
    "McpServer",
    "Message",
    "NondeterminismError",
    "OpenAIChat",
    "Pricing",
    "Reply",
    "RequireApproval",
    "RunLocked",
    "RunNotFound",
    "RunStatus",
    "RunTree",
    "Runtime",
    "SchemaChangedError",
    "ScriptedLLM",
    "StoreError",
    "ToolCall",
    "ToolSchemaError",
    "WorkerPool",
    "projections",
    "run_command",
    "tool",
]

_NAMESPACES = ("errors", "events", "types")
"""Public submodules, reached as ``foldloop.<name>`` but not star-imported."""

_MOVED = {
    **dict.fromkeys(types.__all__, "foldloop.types"),
    **dict.fromkeys(
        (
            "CorruptRecord",
            "ModelCallError",
            "ProjectionError",
            "WorkerError",
            "StoreNotFound",
            "StoreAccessError",
            "StoreCorrupted",
        ),
        "foldloop.errors",
    ),
    **dict.fromkeys(("Projection", "RunMetrics", "prometheus_text"), "foldloop.projections"),
}
"""Names once exported here, and the module that holds each now (for the error message)."""


def __dir__() -> list[str]:
    return sorted([*__all__, *_NAMESPACES, "__version__"])


if not _typing.TYPE_CHECKING:  # type checkers report an unknown name themselves

    def __getattr__(name: str) -> object:
        if name == "ModelToolCall":
            raise AttributeError(
                "foldloop.ModelToolCall is gone: a recorded tool call is a fl.ToolCall now",
                name=name,
            )
        home = _MOVED.get(name)
        if home is None:
            raise AttributeError(f"module 'foldloop' has no attribute {name!r}", name=name)
        raise AttributeError(
            f"foldloop.{name} is not at the top level: it lives in {home} "
            f"(from {home} import {name})",
            name=name,
        )
