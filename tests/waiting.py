"""Waiting in tests: on a condition with a deadline, never a sleep and a hope."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

__all__ = ["logged", "wait_until"]


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
