"""Cancels across machines on NATS: every runtime listens on the store's cancel subjects,
and only the one driving a run answers a request to cancel it (``port.RemoteCancel``)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from foldloop.store._nats_names import NatsTarget

__all__ = ["CANCEL_ANSWER_S", "ask_cancel", "serve_cancels"]

CANCEL_ANSWER_S = 2.0
"""How long a cancel asks around for the runtime driving its run."""


async def serve_cancels(
    nc: Client, target: NatsTarget, handler: Callable[[str, str], bool]
) -> Subscription:
    """Answer the cancel requests ``handler`` takes (it is told the run id and reason)."""
    loop = asyncio.get_running_loop()

    async def heard(msg: Msg) -> None:
        run_id = target.run_of(msg.subject)
        reason = msg.data.decode(errors="replace")
        # the handler tells an actor (it takes locks): off the loop
        if await loop.run_in_executor(None, handler, run_id, reason) and msg.reply:
            await msg.respond(b"1")

    return await nc.subscribe(target.cancel_subject("*"), cb=heard)


async def ask_cancel(nc: Client, target: NatsTarget, run_id: str, reason: str) -> bool:
    """Ask the runtime driving ``run_id`` to cancel it; whether one took it."""
    try:
        await nc.request(target.cancel_subject(run_id), reason.encode(), timeout=CANCEL_ANSWER_S)
    except (nats.errors.TimeoutError, nats.errors.NoRespondersError):
        return False
    return True
