"""Runtime: the host-facing facade (DESIGN.md section 6) and the handles it returns.

``facade`` holds ``Runtime``; ``results`` the handle, result and summary types;
``approval_desk`` how decisions reach runs; ``rules`` the argument checks and small policies;
``pool`` the WorkerPool that drives runs in several processes (``pool_worker`` is one
of them, ``pool_protocol`` what they say).
"""

from foldloop.runtime.facade import Runtime
from foldloop.runtime.pool import PooledRunHandle, WorkerInfo, WorkerPool
from foldloop.runtime.results import RunHandle, RunResult, RunSummary

__all__ = [
    "PooledRunHandle",
    "RunHandle",
    "RunResult",
    "RunSummary",
    "Runtime",
    "WorkerInfo",
    "WorkerPool",
]
