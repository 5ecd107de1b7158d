"""foldloop: AI agent loops as an event-sourced actor runtime.

Every run is the fold of its events in one LMDB log, so it survives SIGKILL and resumes
exactly where it was. Start at ``Runtime.open`` (see README.md).
"""

from foldloop import events as events
from foldloop import projections as projections
from foldloop.actors.projection_actor import ProjectionHandle as ProjectionHandle
from foldloop.agent import Agent as Agent
from foldloop.approvals import PendingApproval as PendingApproval
from foldloop.approvals import RequireApproval as RequireApproval
from foldloop.core.messages import Message as Message
from foldloop.core.messages import ToolSpec as ToolSpec
from foldloop.core.pricing import Pricing as Pricing
from foldloop.core.state import RunState as RunState
from foldloop.core.state import RunStatus as RunStatus
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
    CorruptRecord as CorruptRecord,
)
from foldloop.errors import (
    FoldloopError as FoldloopError,
)
from foldloop.errors import (
    ModelCallError as ModelCallError,
)
from foldloop.errors import (
    NondeterminismError as NondeterminismError,
)
from foldloop.errors import (
    ProjectionError as ProjectionError,
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
from foldloop.errors import (
    WorkerError as WorkerError,
)
from foldloop.events.recorded import Recorded as Recorded
from foldloop.events.values import Limits as Limits
from foldloop.events.values import Usage as Usage
from foldloop.llm.anthropic_chat import AnthropicChat as AnthropicChat
from foldloop.llm.openai_chat import OpenAIChat as OpenAIChat
from foldloop.llm.protocol import LLM as LLM
from foldloop.llm.protocol import Reply as Reply
from foldloop.llm.protocol import ToolCall as ToolCall
from foldloop.llm.scripted import ScriptedLLM as ScriptedLLM
from foldloop.projections.base import Projection as Projection
from foldloop.runtime import RunHandle as RunHandle
from foldloop.runtime import RunResult as RunResult
from foldloop.runtime import RunSummary as RunSummary
from foldloop.runtime import Runtime as Runtime
from foldloop.runtime import WorkerPool as WorkerPool
from foldloop.tools.command import CommandResult as CommandResult
from foldloop.tools.command import run_command as run_command
from foldloop.tools.decorator import Tool as Tool
from foldloop.tools.decorator import tool as tool
from foldloop.tools.mcp import McpServer as McpServer

__version__ = "0.1.0"

__all__ = [
    "Agent",
    "AnthropicChat",
    "ApprovalError",
    "CommandResult",
    "ConcurrencyError",
    "ConfigError",
    "CorruptRecord",
    "FoldloopError",
    "LLM",
    "Limits",
    "McpServer",
    "Message",
    "ModelCallError",
    "NondeterminismError",
    "OpenAIChat",
    "PendingApproval",
    "Pricing",
    "Projection",
    "ProjectionError",
    "ProjectionHandle",
    "Recorded",
    "Reply",
    "RequireApproval",
    "RunHandle",
    "RunLocked",
    "RunNotFound",
    "RunResult",
    "RunState",
    "RunStatus",
    "RunSummary",
    "Runtime",
    "SchemaChangedError",
    "ScriptedLLM",
    "StoreError",
    "Tool",
    "ToolCall",
    "ToolSchemaError",
    "ToolSpec",
    "Usage",
    "WorkerError",
    "WorkerPool",
    "events",
    "projections",
    "run_command",
    "tool",
]
