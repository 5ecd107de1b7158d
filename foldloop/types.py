"""The types a host receives from foldloop rather than builds: handles, results, states, rows.

Import them for annotations (``from foldloop.types import RunResult``); the top level of
``foldloop`` holds what a host writes by name (``fl.Agent``, ``fl.tool``, ``fl.Limits``...).
README.md, "Types you will meet", says where each one comes from.
"""

from foldloop.actors.projection_actor import ProjectionHandle
from foldloop.approvals import PendingApproval
from foldloop.core.explain import Explanation
from foldloop.core.messages import ToolSpec
from foldloop.core.state import RunState
from foldloop.events.recorded import Recorded
from foldloop.events.values import Usage
from foldloop.runtime import RunHandle, RunResult, RunSummary, WorkerInfo
from foldloop.tools.command import CommandResult
from foldloop.tools.decorator import Tool

__all__ = [
    "CommandResult",
    "Explanation",
    "PendingApproval",
    "ProjectionHandle",
    "Recorded",
    "RunHandle",
    "RunResult",
    "RunState",
    "RunSummary",
    "Tool",
    "ToolSpec",
    "Usage",
    "WorkerInfo",
]


def __dir__() -> list[str]:
    return list(__all__)
