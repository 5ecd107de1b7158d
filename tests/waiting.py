"""Waiting in tests: on a condition with a deadline, never a sleep and a hope."""

from __future__ import annotations

import time
from collections.abc import Callable

import pykka

__all__ = ["run_actors_alive", "wait_until"]


def wait_until(predicate: Callable[[], object], timeout: float, what: str) -> None:
    """Return as soon as ``predicate()`` is true; fail naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    pause = 0.001
    while not predicate():
        if time.monotonic() >= deadline:
            raise AssertionError(f"waited {timeout} s for {what}; it did not happen")
        time.sleep(pause)
        pause = min(pause * 2, 0.02)  # quick for fast conditions, cheap for slow ones


def run_actors_alive() -> int:
    """Run actors still registered in this process (one that stopped has handled all it
    was given, a tool's late outcome included)."""
    return len(pykka.ActorRegistry.get_by_class_name("RunActor"))
