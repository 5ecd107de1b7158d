"""The work queue on JetStream: runs spawned anywhere, taken by any runtime with the agent.

A work-queue stream with one subject per agent; one durable pull consumer per agent,
shared by every runtime that drives that agent, so each queued run goes to one of them.
An item not acknowledged within ACK_WAIT_S (its taker died) is offered again; a run id is
its message id, so a spawn retried within the duplicate window is queued once.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import NotFoundError

from foldloop.store._nats_bridge import LoopThread
from foldloop.store._nats_log import add_stream
from foldloop.store._nats_names import NatsTarget, token
from foldloop.store._nats_retry import retrying

__all__ = ["NatsWork", "NatsWorkItem"]

ACK_WAIT_S = 30.0
"""How long a taken item may stay unacknowledged before it is offered again."""
RETRY_DELAY_S = 1.0
ADMIN_TIMEOUT_S = 30.0
"""Making a consumer on a cluster waits for its replicas to agree."""


class NatsWorkItem:
    """A queued run taken from the stream (``WorkItem``)."""

    def __init__(self, msg: Msg, loop: LoopThread) -> None:
        self.run_id = msg.data.decode()
        self._msg = msg
        self._loop = loop

    def done(self) -> None:
        self._loop.submit(self._msg.ack())

    def retry(self) -> None:
        self._loop.submit(self._msg.nak(delay=RETRY_DELAY_S))


class NatsWork:
    """Enqueue and take (coroutines, on the store's loop)."""

    def __init__(self, nc: Client, js: JetStreamContext, target: NatsTarget) -> None:
        self._nc = nc
        self._js = js
        self._t = target
        self._subs: dict[str, JetStreamContext.PullSubscription] = {}

    @property
    def stream(self) -> str:
        return f"fl_{self._t.namespace}_work"

    def _subject(self, agent: str) -> str:
        return f"fl.{self._t.namespace}.work.{token(agent)}"

    async def ensure(self, *, create: bool) -> None:
        try:
            await self._js.stream_info(self.stream)
        except NotFoundError:
            if not create:
                return  # read-only tools never enqueue
            config = StreamConfig(
                name=self.stream,
                subjects=[f"fl.{self._t.namespace}.work.>"],
                retention=RetentionPolicy.WORK_QUEUE,
                storage=StorageType.FILE,
                num_replicas=self._t.replicas,
                metadata={"foldloop": "1"},
            )
            await add_stream(self._js, config)

    async def enqueue(self, agent: str, run_ids: Sequence[str]) -> None:
        subject = self._subject(agent)
        for run_id in run_ids:  # in order; a repeat is deduplicated by its message id
            publish = partial(
                self._js.publish, subject, run_id.encode(), headers={"Nats-Msg-Id": run_id}
            )
            await retrying(publish)

    async def _sub(self, agent: str) -> JetStreamContext.PullSubscription:
        """The pull subscription on ``agent``'s consumer (made once, by whichever runtime
        asks first; the others bind to it)."""
        sub = self._subs.get(agent)
        if sub is not None:
            return sub
        durable = f"take_{token(agent)}"
        try:
            await self._js.consumer_info(self.stream, durable)
        except NotFoundError:
            config = ConsumerConfig(
                durable_name=durable,
                filter_subject=self._subject(agent),
                ack_policy=AckPolicy.EXPLICIT,
                ack_wait=ACK_WAIT_S,
                max_deliver=-1,
                max_ack_pending=100_000,
                num_replicas=self._t.replicas,
            )
            try:
                await self._js.add_consumer(self.stream, config, timeout=ADMIN_TIMEOUT_S)
            except nats.js.errors.BadRequestError:
                await self._js.consumer_info(self.stream, durable)  # made by another meanwhile
        sub = await self._js.pull_subscribe_bind(durable=durable, stream=self.stream)
        self._subs[agent] = sub
        return sub

    async def take(self, agents: Sequence[str], limit: int, timeout: float) -> list[Msg]:
        """Up to ``limit`` items of ``agents`` (each agent asked in turn)."""
        out: list[Msg] = []
        wait = max(0.01, timeout / max(1, len(agents)))
        for agent in agents:
            if len(out) >= limit:
                break
            sub = await self._sub(agent)
            try:
                out += await sub.fetch(limit - len(out), timeout=wait)
            except (TimeoutError, nats.errors.TimeoutError):
                continue  # nothing queued for this agent
        return out

    async def close(self) -> None:
        for sub in self._subs.values():
            try:
                await sub.unsubscribe()
            except (nats.errors.Error, nats.js.errors.Error):
                continue
        self._subs.clear()
