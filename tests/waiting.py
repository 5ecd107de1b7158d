"""Waiting in tests: on a condition with a deadline, never a sleep and a hope."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from typing import Any

__all__ = ["inside", "logged", "wait_until"]


def wait_until(predicate: Callable[[], object], timeout: float, what: str) -> None:
    """Return as soon as ``predicate()`` is true; fail naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    pause = 0.001
    while not predicate():
        if time.monotonic() >= deadline:
            raise AssertionError(f"waited {timeout} s for {what}; it did not happen")
        time.sleep(pause)
        pause = min(pause * 2, 0.02)  # quick for fast conditions, cheap for slow ones


def logged(logs: list[dict[str, Any]], event: str, **fields: object) -> bool:
    """True once ``logs`` (from ``capture_logs``) hold ``event`` with these ``fields``."""
    return any(
        e.get("event") == event and all(e.get(k) == v for k, v in fields.items()) for e in logs
    )


def inside(thread: threading.Thread, function: str) -> bool:
    """``thread`` is running ``function`` now (somewhere down its stack)."""
    frame = sys._current_frames().get(thread.ident or 0)
    while frame is not None:
        if frame.f_code.co_name == function:
            return True
        frame = frame.f_back
    return False
