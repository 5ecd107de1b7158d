"""The types a host receives from foldloop rather than builds: handles, results, states, rows.

Import them for annotations (``from foldloop.types import RunResult``); the top level of
``foldloop`` holds what a host writes by name (``fl.Agent``, ``fl.tool``, ``fl.Limits``...).
README.md, "Types you will meet", says where each one comes from.
"""

from foldloop._approvals import PendingApproval
from foldloop.actors._projection_actor import ProjectionHandle
from foldloop.core._explain import DecidedApproval, Explanation
from foldloop.core._messages import ToolSpec
from foldloop.core._state import RunState
from foldloop.events._recorded import Recorded
from foldloop.events._values import Usage
from foldloop.runtime import RunHandle, RunResult, RunSummary, WorkerInfo
from foldloop.tools._command import CommandResult
from foldloop.tools._decorator import Tool

__all__ = [
    "CommandResult",
    "DecidedApproval",
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
