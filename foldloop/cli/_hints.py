"""What to do next, as commands of this CLI (never a Python call)."""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from foldloop.core._explain import DecidedApproval, ended_child_step
from foldloop.core._state import RunState, RunStatus
from foldloop.events import RunLimitReached
from foldloop.events._recorded import Recorded

__all__ = ["AGENT_PLACEHOLDER", "LIMIT_OPTIONS", "advice", "invocation", "resume_command"]

AGENT_PLACEHOLDER = "MODULE:ATTR"
LIMIT_OPTIONS = {
    "max_steps": "--max-steps",
    "max_tokens": "--max-tokens",
    "max_seconds": "--max-seconds",
    "max_cost_usd": "--max-cost-usd",
}


def resume_command(run: str, agent: str = AGENT_PLACEHOLDER, *, again: str = "foldloop") -> str:
    return f"{again} resume {run} --agent {agent}"


def advice(
    run: str,
    status: RunStatus,
    state: RunState,
    records: Sequence[Recorded],
    decided: Sequence[DecidedApproval] = (),
    *,
    orphaned: bool = False,
) -> str:
    """What to do next with a run, as commands of this CLI (``decided``: decisions made but
    not yet carried into its log, ``rt.explain(run).decided``; ``orphaned``: queued by a
    runtime that is gone, ``rt.explain(run).orphaned``)."""
    resume = f"`{resume_command(run)}`"
    child = ended_child_step(state)
    if child is not None:
        return child
    match status:
        case RunStatus.COMPLETED:
            return f"nothing: it completed (its output: `foldloop show {run}`)"
        case RunStatus.LIMIT_REACHED:
            limit = next(
                (r.event.limit for r in reversed(records) if isinstance(r.event, RunLimitReached)),
                "max_steps",
            )
            option = LIMIT_OPTIONS.get(limit, "--max-steps")
            return f"raise the ceiling: `{resume_command(run)} {option} N`"
        case RunStatus.NO_PROGRESS:
            return (
                "start a new run with other tools or instructions (a resume keeps the "
                "recorded ones, and would repeat itself)"
            )
        case RunStatus.AWAITING_APPROVAL if decided:
            calls = ", ".join(d.call_id for d in decided)
            return (
                f"nothing to decide for {calls}: a runtime with the agent registered carries "
                f"the decision in by itself, or {resume} does"
            )
        case RunStatus.AWAITING_APPROVAL if any(c.status == "expired" for c in state.calls):
            return f"{resume} asks again with a fresh token"
        case RunStatus.AWAITING_APPROVAL:
            waiting = [c.call_id for c in state.calls if c.status == "awaiting_approval"]
            call = waiting[0] if len(waiting) == 1 else "CALL"
            return (
                "decide: `foldloop approvals` lists what waits, then "
                f"`foldloop approve --run {run} --call {call}` (or `foldloop deny ...`)"
            )
        case RunStatus.FAILED if state.resumable:
            return f"fix the cause, then {resume}"
        case RunStatus.FAILED | RunStatus.CANCELLED:
            return "start a new run: this one cannot continue"
        case RunStatus.INTERRUPTED:
            return f"{resume} continues it"
        case RunStatus.QUEUED if orphaned:
            return (
                "the runtime that queued it is gone: a runtime with its agent admits it, in "
                "spawn order, on recover() (a WorkerPool's workers do as they start)"
            )
        case RunStatus.QUEUED:
            return (
                "wait: it starts by itself when its runtime has a free slot (max_active_runs; "
                "`foldloop tail --follow` shows it start); if that runtime is gone, a runtime "
                "with its agent admits it in turn on recover() (a WorkerPool's workers do)"
            )
        case _:
            return "wait: a runtime is driving it (`foldloop tail --follow` shows its steps)"


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def invocation() -> str:
    """How to start this same foldloop from this shell, for hints meant to be pasted.

    ``foldloop`` when that name on PATH is this installation's script; else the script's
    path as it was typed (``.venv/bin/foldloop``, a venv not activated); else this
    interpreter with ``-m foldloop``. Never a ``foldloop`` that is another installation.
    """
    argv0 = sys.argv[0] if sys.argv else ""
    by_script = Path(argv0).name == "foldloop" and Path(argv0).is_file()
    on_path = shutil.which("foldloop")
    if on_path is not None:
        here = Path(sys.executable).parent
        if _same_file(on_path, argv0) if by_script else Path(on_path).parent == here:
            return "foldloop"
    if by_script:
        return shlex.quote(argv0)
    return f"{shlex.quote(sys.executable)} -m foldloop"
