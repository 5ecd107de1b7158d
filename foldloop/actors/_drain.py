"""The drain a runtime's close begins with: the runs stop starting work, the tool calls under
way (a sync tool cannot be stopped: its effect happens anyway) return and are recorded, and
the calls still waiting for a slot of their tool never start and are recorded as not run."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from typing import Any

import pykka

from foldloop._log import get_logger
from foldloop.actors._run_actor import RunActor
from foldloop.actors._shard import Barrier

__all__ = ["BARRIER_WAIT_S", "CLOSE_DRAIN_S", "drain"]

log = get_logger(__name__)

CLOSE_DRAIN_S = 10.0
"""Seconds a close waits for the tool calls under way (whose effects happen whatever the
runtime does) to return, so that their outcomes are recorded, not lost to resume as
interrupted."""
BARRIER_WAIT_S = 5.0
"""Seconds a close waits for the shards to record the calls it held back at its end."""


def drain(
    actors: Sequence[RunActor],
    shards: Sequence[pykka.ActorRef[Any]],
    deadline: float,
    running: Callable[[], int] = lambda: 0,
) -> None:
    """Until ``deadline`` (a ``time.monotonic()``), wait for the runs' tool calls under way
    to return and their outcomes to be recorded (the runs take no other command meanwhile),
    and for the sync calls still ``running`` of runs that ended meanwhile (a cancel) to
    hand their outcomes on."""
    for actor in actors:
        actor.closing()
    # A command a shard was already handling may still request a call: once each shard
    # answers a barrier, every run's state shows what it requested.
    barrier(shards, deadline)
    waiting = [actor for actor in actors if actor.tool_calls_under_way()]
    if waiting or running():
        calls = max(sum(actor.tool_calls_under_way() for actor in waiting), running())
        left = round(max(0.0, deadline - time.monotonic()), 3)
        log.info("close_waits_for_tool_calls", calls=calls, runs=len(waiting), timeout_s=left)
    pause = 0.001
    while (waiting or running()) and time.monotonic() < deadline:
        time.sleep(min(pause, max(0.0, deadline - time.monotonic())))
        pause = min(pause * 2, 0.02)
        waiting = [actor for actor in actors if actor.tool_calls_under_way()]
    if waiting:  # calls queued since close began never start either
        for actor in waiting:
            actor.hold_queued()
        barrier(shards, time.monotonic() + BARRIER_WAIT_S)  # their outcomes are recorded
        waiting = [actor for actor in waiting if actor.tool_calls_under_way()]
    if waiting:
        log.warning(
            "tool_calls_unfinished_at_close",
            calls=sum(actor.tool_calls_under_way() for actor in waiting),
            runs=len(waiting),
            run_ids=[actor.run_id for actor in waiting[:10]],
        )
    elif running():  # of runs that ended meanwhile: their outcomes will not be recorded
        log.warning("tool_calls_of_ended_runs_unfinished_at_close", calls=running())


def barrier(shards: Sequence[pykka.ActorRef[Any]], deadline: float) -> None:
    """Return once each shard took every message sent to it so far (or at ``deadline``)."""
    for shard in shards:
        with contextlib.suppress(pykka.ActorDeadError, pykka.Timeout):
            shard.ask(Barrier(), timeout=max(0.0, deadline - time.monotonic()))
