"""Riding out a NATS outage: requests that may be repeated are tried again for a while.

A server restarting, a cluster electing a leader, a connection being re-established: for
seconds, requests time out or find no responder. Reads, compare-and-set writes (a repeat
whose first try landed finds the revision moved and reads again) and publishes with a
message id (deduplicated) are repeated until RETRY_FOR_S has passed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import nats.errors
import nats.js.errors

__all__ = ["RETRY_FOR_S", "TRANSIENT", "retrying"]

T = TypeVar("T")

RETRY_FOR_S = 30.0
TRANSIENT: tuple[type[BaseException], ...] = (
    TimeoutError,
    nats.errors.TimeoutError,
    nats.errors.NoRespondersError,
    nats.errors.ConnectionReconnectingError,
    nats.js.errors.ServiceUnavailableError,
    nats.js.errors.NoStreamResponseError,
)


async def retrying(attempt: Callable[[], Awaitable[T]], retry_for: float = RETRY_FOR_S) -> T:
    """``attempt()``, again after a transient failure until ``retry_for`` seconds passed."""
    deadline = time.monotonic() + retry_for
    pause = 0.05
    while True:
        try:
            return await attempt()
        except TRANSIENT:
            if time.monotonic() + pause > deadline:
                raise
        await asyncio.sleep(pause)
        pause = min(pause * 2, 1.0)
