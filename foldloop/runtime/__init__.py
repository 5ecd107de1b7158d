"""Runtime: the host-facing facade (DESIGN.md section 6) and the handles it returns.

``facade`` holds ``Runtime``; ``results`` the handle, result and summary types;
``approval_desk`` how decisions reach runs; ``rules`` the argument checks and small policies.
"""

from foldloop.runtime.facade import Runtime
from foldloop.runtime.results import RunHandle, RunResult, RunSummary

__all__ = ["RunHandle", "RunResult", "RunSummary", "Runtime"]
