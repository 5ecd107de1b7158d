"""Runtime: the host-facing facade (DESIGN.md section 6) and the handles it returns.

``facade`` holds ``Runtime``, which wires the parts below and hands each call to one:
``commands`` (spawn, resume, cancel, recover), ``waiting`` (``RunHandle.wait``),
``queries`` (state, runs, events, explain, verify), ``transfer`` (export, import),
``approval_desk`` (how decisions reach runs). ``writes`` holds every write the runtime makes
itself, ``driving`` how a taken run goes on to an actor, ``registry`` the agents known by
name, ``lifecycle`` the one closed-check, ``results`` the handle, result and summary types,
``rules`` the argument checks and small policies. ``pool`` is the WorkerPool that drives
runs in several processes (``pool_worker`` is one of them, ``pool_protocol`` what they say).
"""

from foldloop.runtime._facade import Runtime
from foldloop.runtime._pool import PooledRunHandle, WorkerInfo, WorkerPool
from foldloop.runtime._results import RunHandle, RunResult, RunSummary, RunTree

__all__ = [
    "PooledRunHandle",
    "RunHandle",
    "RunResult",
    "RunSummary",
    "RunTree",
    "Runtime",
    "WorkerInfo",
    "WorkerPool",
]
