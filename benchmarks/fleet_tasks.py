"""What the reference fleets of ``bench_fleet.py`` share: their runs as tasks on one loop."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass
class Fleet:
    """What a reference fleet got done before its deadline."""

    wall_s: float = 0.0
    steps_done: int = 0
    completed: int = 0
    timed_out: bool = False
    problem: str = ""


async def run_all(
    out: Fleet, runs: Sequence[Coroutine[Any, Any, Any]], deadline: float, what: str
) -> None:
    """Run ``runs`` at once until ``deadline`` (time.monotonic), cancelling those still
    going then; fill ``out`` with the wall time, how many completed, what one raised."""
    start = time.perf_counter()
    tasks = [asyncio.create_task(run) for run in runs]
    finished, pending = await asyncio.wait(tasks, timeout=max(0.0, deadline - time.monotonic()))
    out.wall_s = time.perf_counter() - start
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    out.completed = sum(1 for t in finished if t.exception() is None)
    out.timed_out = bool(pending)
    failed = [t for t in finished if t.exception() is not None]
    if failed:
        out.problem = f"{len(failed)} {what} raised: {failed[0].exception()!r:.200}"
