"""Ctrl-C for the CLI. Python ignores an exception raised in a ``__del__`` or a weakref
callback, a KeyboardInterrupt included: one that lands there is lost. The SIGINT handler
notes that it came, and the command's long waits look between slices and raise it again."""

from __future__ import annotations

import threading
import time
from types import FrameType

from foldloop.core._state import RunStatus
from foldloop.runtime._results import RunHandle, RunResult

__all__ = ["on_sigint", "pause", "raise_if_interrupted", "waited"]

SLICE_S = 0.5
"""How long a wait goes before it looks for a Ctrl-C that was lost."""

_came = threading.Event()


def on_sigint(signum: int, frame: FrameType | None) -> None:
    """The CLI's SIGINT handler: KeyboardInterrupt, noted."""
    _came.set()
    raise KeyboardInterrupt


def raise_if_interrupted() -> None:
    """KeyboardInterrupt if a Ctrl-C came (its own may have been lost)."""
    if _came.is_set():
        raise KeyboardInterrupt


def waited(handle: RunHandle, timeout: float | None = None) -> RunResult:
    """``handle.wait(timeout)``, in slices, each followed by ``raise_if_interrupted``."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        left = SLICE_S if deadline is None else min(SLICE_S, deadline - time.monotonic())
        result = handle.wait(timeout=max(0.0, left))
        if result.status not in (RunStatus.RUNNING, RunStatus.QUEUED):  # else the slice ran out
            return result
        if deadline is not None and time.monotonic() >= deadline:
            return result
        raise_if_interrupted()


def pause(seconds: float) -> None:
    """``time.sleep``, then ``raise_if_interrupted``."""
    time.sleep(seconds)
    raise_if_interrupted()
