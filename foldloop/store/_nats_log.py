"""The log on JetStream: one stream, one subject per run, one message per event.

A message's body is the encoded event; its headers carry the run's seq (``Fl-Seq``), the
decision time (``Fl-At``), the event's schema version when not 1 (``Fl-V``), and on an
append's last message the approval changes that go with it (``Fl-Approvals``). The
stream sequence is the record's position: the stream holds nothing else and refuses
deletes and purges, so positions stay gapless.

An append is published with ``Nats-Expected-Last-Subject-Sequence`` (the stream sequence
of the run's last event), so of two writers of one run at most one succeeds; several
events go as one atomic batch (all or none). A process appends to one run one append at
a time (the next needs the stream sequence the previous one got). An append whose answer
is lost (a dropped connection) is looked up by its write id before it is tried again, so
it is never written twice.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import msgspec
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import NotFoundError

from foldloop.errors import ConcurrencyError, ConfigError, StoreError, StoreNotFound
from foldloop.events._catalogue import ToolRequested
from foldloop.events._codec import decode_event, schema_version_of
from foldloop.events._recorded import AnyEvent, Recorded
from foldloop.store._approvals import ApprovalChanges
from foldloop.store._nats_names import NatsTarget
from foldloop.store._nats_retry import RETRY_FOR_S, TRANSIENT, retrying
from foldloop.store._payloads import Payload

__all__ = ["NatsLog", "TooManyResults", "add_stream", "direct_batch"]

MAX_BATCH = 1000
"""Events in one atomic batch: JetStream's limit (a longer append goes in parts)."""
PAGE = 1000
"""Messages asked for in one direct get."""
MAX_HEADER = 48 * 1024
"""Bytes the approval header may take (NATS refuses headers past 64 KiB)."""
HEADROOM = 512
"""Bytes an event's headers may take beside its body in one message."""
REQUEST_TIMEOUT_S = 5.0
APPEND_DEADLINE_S = 30.0
"""How long an append keeps trying through a lost connection before giving up."""
WRONG_LAST_SEQUENCE = 10071
TRANSIENT_OR_CLOSED: tuple[type[BaseException], ...] = (
    *TRANSIENT,
    nats.errors.ConnectionClosedError,
)
STALE_READ_S = 10.0
"""How long a read waits for the replica answering it to catch up with the leader."""

_APPROVALS_ENC = msgspec.msgpack.Encoder()
_APPROVALS_DEC = msgspec.msgpack.Decoder(ApprovalChanges)

Guard = Callable[[], Awaitable[None]]


class _Head(msgspec.Struct, frozen=True, array_like=True):
    seq: int  # the run's last seq
    stream_seq: int  # the stream sequence of that event (0: no event yet)
    write: str = ""  # the write id of the append that put it there


class TooManyResults(StoreError):
    """A direct get matched more subjects than the server answers for at once."""


class _Lost(Exception):
    """The server's answer to a publish never came: it may or may not have landed."""


async def direct_batch(nc: Client, stream: str, request: dict[str, Any]) -> list[Msg]:
    """Every message a direct get of ``request`` answers with, up to its end-of-batch
    (asked again through an outage, up to RETRY_FOR_S)."""
    try:
        return await retrying(lambda: _direct_batch_once(nc, stream, request))
    except TRANSIENT:
        raise StoreError(
            f"the NATS server did not answer a read of stream {stream!r} within "
            f"{RETRY_FOR_S:.0f} s; is it reachable?"
        ) from None


async def _direct_batch_once(nc: Client, stream: str, request: dict[str, Any]) -> list[Msg]:
    single = "batch" not in request and "multi_last" not in request
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    try:
        await nc.publish(f"$JS.API.DIRECT.GET.{stream}", json.dumps(request).encode(), reply=inbox)
        out: list[Msg] = []
        while True:
            msg = await sub.next_msg(timeout=REQUEST_TIMEOUT_S)
            status = (msg.headers or {}).get("Status")
            if status is None:
                out.append(msg)
                if single:  # one message asked for: no end-of-batch follows
                    return out
            elif status in ("204", "404"):
                return out
            elif status in ("503", "408"):
                raise nats.errors.NoRespondersError
            elif status == "413":
                raise TooManyResults
            else:
                raise StoreError(
                    f"reading stream {stream!r} failed: {status} "
                    f"{(msg.headers or {}).get('Description', '')}"
                )
    finally:
        await sub.unsubscribe()


async def add_stream(js: JetStreamContext, config: StreamConfig) -> None:
    """Make a stream, unless another process made it first (that one is checked after)."""
    try:
        await js.add_stream(config)
    except nats.js.errors.BadRequestError as exc:
        if "already in use" not in str(exc.description):
            raise


class NatsLog:
    """Appends and reads of the event stream (all coroutines, on the store's loop)."""

    def __init__(self, nc: Client, js: JetStreamContext, target: NatsTarget) -> None:
        self._nc = nc
        self._js = js
        self._t = target
        self._heads: OrderedDict[str, _Head] = OrderedDict()
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    # -- the stream ------------------------------------------------------------------------

    async def ensure(self, *, create: bool) -> None:
        """Check the stream is foldloop's, making it if absent (and ``create``)."""
        t = self._t
        try:
            info = await self._js.stream_info(t.stream)
        except NotFoundError:
            if not create:
                raise StoreNotFound(
                    f"no foldloop store at {t.shown} (no stream {t.stream!r}); open it with "
                    "a runtime first, or check the URL's namespace"
                ) from None
            await self._create()
            return
        config = info.config
        if (config.metadata or {}).get("foldloop") != "1" or config.subjects != [t.subjects]:
            raise StoreError(
                f"stream {t.stream!r} at {t.shown} was not made by foldloop (subjects "
                f"{config.subjects}); use another namespace (nats://HOST:PORT/OTHER) or "
                "remove that stream"
            )
        if not config.allow_atomic or not config.deny_delete:  # an older server dropped them
            raise StoreError(
                f"stream {t.stream!r} at {t.shown} does not allow atomic batches or does not "
                "refuse deletes; foldloop needs nats-server 2.12 or newer (its appends are "
                "atomic batches, its positions gapless)"
            )

    async def _create(self) -> None:
        t = self._t
        config = StreamConfig(
            name=t.stream,
            subjects=[t.subjects],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            discard=DiscardPolicy.NEW,
            num_replicas=t.replicas,
            allow_direct=True,
            allow_atomic=True,
            deny_delete=True,
            deny_purge=True,
            metadata={"foldloop": "1"},
        )
        await add_stream(self._js, config)
        await self.ensure(create=False)  # ours, or another process's made first: check it

    async def last_position(self) -> int:
        info = await retrying(lambda: self._js.stream_info(self._t.stream))
        return int(info.state.last_seq)

    async def run_ids(self) -> list[str]:
        info = await retrying(
            lambda: self._js.stream_info(self._t.stream, subjects_filter=self._t.subjects)
        )
        return sorted(self._t.run_of(s) for s in (info.state.subjects or {}))

    # -- heads -----------------------------------------------------------------------------

    async def _fetch_head(self, run_id: str) -> _Head:
        """The run's last event as the stream's leader has it (a direct get may be served
        by a replica that is behind)."""
        try:
            msg = await retrying(
                lambda: self._js.get_msg(self._t.stream, subject=self._t.subject(run_id))
            )
        except NotFoundError:
            return _Head(0, 0)
        h = msg.headers or {}
        if "Fl-Seq" not in h:
            raise StoreError(
                f"the last message on {self._t.subject(run_id)!r} is not a foldloop event; was "
                f"something else published to {self._t.subjects}?"
            )
        return _Head(int(h["Fl-Seq"]), int(msg.seq or 0), h.get("Fl-Write", ""))

    async def head(self, run_id: str) -> int:
        """The run's last seq, as the server has it."""
        return (await self._fetch_head(run_id)).seq

    def _remember(self, run_id: str, head: _Head) -> None:
        self._heads[run_id] = head
        self._heads.move_to_end(run_id)
        if len(self._heads) > 65536:
            self._heads.popitem(last=False)

    # -- appends ---------------------------------------------------------------------------

    async def append(
        self,
        run_id: str,
        payloads: Sequence[Payload],
        *,
        expected_seq: int,
        guard: Guard | None = None,
        approvals: ApprovalChanges | None = None,
    ) -> list[Recorded]:
        """Append after ``expected_seq`` (ConcurrencyError if the run is elsewhere), after
        ``guard`` (the lease fence) passes; the records as stored."""
        self._check_sizes(payloads)
        if approvals and len(approvals_header(approvals)) > MAX_HEADER:
            raise ConfigError(
                f"the approval requests of one append to run {run_id!r} do not fit a NATS "
                f"message header ({MAX_HEADER:,} bytes; nothing was written): shorten their "
                "summaries, or gate fewer calls in one step"
            )
        lock = self._lock(run_id)
        try:
            async with lock:
                return await self._append_locked(run_id, payloads, expected_seq, guard, approvals)
        finally:
            self._unlock(run_id)

    def _check_sizes(self, payloads: Sequence[Payload]) -> None:
        limit = self._nc.max_payload
        for event, raw, _at in payloads:
            if len(raw) + HEADROOM > limit:
                raise ConfigError(
                    f"a {event.type} event of {len(raw):,} bytes does not fit the NATS "
                    f"server's max_payload of {limit:,} bytes (nothing was written); raise "
                    "max_payload in the server's configuration, or keep large data outside "
                    "the log and record a reference to it"
                )

    def _lock(self, run_id: str) -> asyncio.Lock:
        lock, users = self._locks.get(run_id, (None, 0))
        if lock is None:
            lock = asyncio.Lock()
        self._locks[run_id] = (lock, users + 1)
        return lock

    def _unlock(self, run_id: str) -> None:
        lock, users = self._locks[run_id]
        if users == 1:
            del self._locks[run_id]
        else:
            self._locks[run_id] = (lock, users - 1)

    async def _append_locked(
        self,
        run_id: str,
        payloads: Sequence[Payload],
        expected_seq: int,
        guard: Guard | None,
        approvals: ApprovalChanges | None,
    ) -> list[Recorded]:
        head = self._heads.get(run_id)
        if head is None or head.seq != expected_seq:
            head = await self._fetch_head(run_id)  # the cache may be behind another writer
            self._remember(run_id, head)
        if head.seq != expected_seq:
            raise ConcurrencyError(run_id, expected_seq, head.seq)
        if guard is not None:
            await guard()
        out: list[Recorded] = []
        parts = [payloads[i : i + MAX_BATCH] for i in range(0, len(payloads), MAX_BATCH)]
        for n, part in enumerate(parts):
            last = n == len(parts) - 1
            head = await self._publish_part(run_id, part, head, approvals if last else None)
            first_position = head.stream_seq - len(part) + 1
            seq = head.seq - len(part)
            out += [
                Recorded(
                    run_id=run_id, seq=seq + i + 1, position=first_position + i, at=at, event=e
                )
                for i, (e, _raw, at) in enumerate(part)
            ]
        return out

    async def _publish_part(
        self,
        run_id: str,
        part: Sequence[Payload],
        head: _Head,
        approvals: ApprovalChanges | None,
    ) -> _Head:
        """Publish one batch after ``head``; the run's new head. Retries through a lost
        connection until APPEND_DEADLINE_S, never writing the batch twice."""
        write = uuid.uuid4().hex
        deadline = time.monotonic() + APPEND_DEADLINE_S
        for attempt in itertools.count():
            try:
                stream_seq = await self._publish(
                    run_id,
                    part=part,
                    head=head,
                    write=write,
                    batch_id=f"{write}-{attempt}",
                    approvals=approvals,
                )
            except _Lost:
                if time.monotonic() > deadline:
                    raise StoreError(
                        f"no JetStream stream at {self._t.shown} acknowledged an append to run "
                        f"{run_id!r} within {APPEND_DEADLINE_S:.0f} s; nothing more was "
                        "written, and the run can be resumed once the stream answers again"
                    ) from None
                await asyncio.sleep(0.2)
                try:
                    now = await self._fetch_head(run_id)
                except (StoreError, nats.errors.Error):
                    continue
                if now.write == write:  # it landed before the answer was lost
                    self._remember(run_id, now)
                    return now
                if now.seq != head.seq:
                    self._heads.pop(run_id, None)
                    raise ConcurrencyError(run_id, head.seq, now.seq) from None
                continue
            except ConcurrencyError:
                self._heads.pop(run_id, None)
                if attempt:  # an earlier try whose answer was lost may have landed since
                    now = await self._fetch_head(run_id)
                    if now.write == write:
                        self._remember(run_id, now)
                        return now
                raise
            new = _Head(head.seq + len(part), stream_seq, write)
            self._remember(run_id, new)
            return new
        raise AssertionError("unreachable")

    async def _publish(
        self,
        run_id: str,
        *,
        part: Sequence[Payload],
        head: _Head,
        write: str,
        batch_id: str,
        approvals: ApprovalChanges | None,
    ) -> int:
        """One try at publishing ``part``; the stream sequence of its last message."""
        subject = self._t.subject(run_id)
        batch = len(part) > 1
        reply: Msg | None = None
        try:
            for i, (event, raw, at) in enumerate(part):
                headers = {
                    "Fl-Seq": str(head.seq + i + 1),
                    "Fl-At": str(at),
                    "Fl-Write": write,
                }
                version = schema_version_of(event)
                if version != 1:
                    headers["Fl-V"] = str(version)
                if i == 0:
                    headers["Nats-Expected-Last-Subject-Sequence"] = str(head.stream_seq)
                if batch:
                    headers["Nats-Batch-Id"] = batch_id
                    headers["Nats-Batch-Sequence"] = str(i + 1)
                if i < len(part) - 1:
                    await self._nc.publish(subject, raw, headers=headers)
                    continue
                if approvals:
                    headers["Fl-Approvals"] = approvals_header(approvals)
                if batch:
                    headers["Nats-Batch-Commit"] = "1"
                reply = await self._nc.request(
                    subject, raw, timeout=REQUEST_TIMEOUT_S, headers=headers
                )
        except TRANSIENT_OR_CLOSED as exc:
            raise _Lost() from exc  # no answer (a leader being elected, a stream moving)
        assert reply is not None
        ack = json.loads(reply.data)
        error = ack.get("error")
        if error is not None:
            if error.get("err_code") == WRONG_LAST_SEQUENCE:
                raise ConcurrencyError(run_id, head.seq, (await self._fetch_head(run_id)).seq)
            raise StoreError(
                f"the NATS server refused an append to run {run_id!r}: "
                f"{error.get('description', error)}"
            )
        return int(ack["seq"])

    # -- reads -----------------------------------------------------------------------------

    async def _messages(
        self, run_id: str, until: Callable[[Msg], bool] = lambda _m: False
    ) -> list[Msg]:
        """The run's stored messages in seq order, up to the first that ``until`` takes."""
        out: list[Msg] = []
        start = 1
        subject = self._t.subject(run_id)
        while True:
            msgs = await direct_batch(
                self._nc, self._t.stream, {"seq": start, "next_by_subj": subject, "batch": PAGE}
            )
            for msg in msgs:
                if until(msg):
                    return out
                out.append(msg)
            if not msgs or int((msgs[-1].headers or {}).get("Nats-Num-Pending", "0")) == 0:
                return out
            start = int((msgs[-1].headers or {})["Nats-Sequence"]) + 1

    async def read(
        self, run_id: str, from_seq: int = 1, to_seq: int | None = None
    ) -> list[Recorded]:
        """The run's records from ``from_seq`` to ``to_seq`` (inclusive)."""
        records = [self.record(m) for m in await self._run_messages(run_id, to_seq)]
        return [r for r in records if r.seq >= from_seq]

    async def _run_messages(self, run_id: str, to_seq: int | None = None) -> list[Msg]:
        """The run's stored messages up to ``to_seq`` (None: all), completed up to the
        stream leader's head: a replica behind the leader answers with a prefix."""

        def past(msg: Msg) -> bool:
            return to_seq is not None and _seq_of(msg) > to_seq

        msgs = await self._messages(run_id, past)
        head = (await self._fetch_head(run_id)).seq
        want = head if to_seq is None else min(to_seq, head)
        deadline = time.monotonic() + STALE_READ_S
        while (_seq_of(msgs[-1]) if msgs else 0) < want:
            if time.monotonic() > deadline:
                raise StoreError(
                    f"the replicas of stream {self._t.stream!r} stayed behind its leader for "
                    f"{STALE_READ_S:.0f} s reading run {run_id!r}; is the cluster healthy?"
                )
            await asyncio.sleep(0.02)
            after = int((msgs[-1].headers or {})["Nats-Sequence"]) + 1 if msgs else 1
            more = await direct_batch(
                self._nc,
                self._t.stream,
                {"seq": after, "next_by_subj": self._t.subject(run_id), "batch": PAGE},
            )
            msgs += [m for m in more if _seq_of(m) <= want]
        return msgs

    async def approval_changes(self, run_id: str) -> list[ApprovalChanges]:
        """The approval changes of every append of the run, in order, each request's args
        (left out of the header) taken back from its call's ``tool.requested``."""
        out = []
        args: dict[str, str] = {}
        for msg in await self._run_messages(run_id):
            event = self.record(msg).event
            if isinstance(event, ToolRequested):
                args[event.call_id] = event.args
            raw = (msg.headers or {}).get("Fl-Approvals")
            if raw is not None:
                changes = _APPROVALS_DEC.decode(base64.b64decode(raw))
                requests = tuple(
                    msgspec.structs.replace(r, args=args.get(r.call_id, ""))
                    for r in changes.requests
                )
                out.append(msgspec.structs.replace(changes, requests=requests))
        return out

    async def read_all(self, from_position: int = 1, limit: int | None = None) -> list[Recorded]:
        """Records of every run in position order from ``from_position``."""
        out: list[Recorded] = []
        start = max(1, from_position)
        while limit is None or len(out) < limit:
            want = PAGE if limit is None else min(PAGE, limit - len(out))
            msgs = await direct_batch(self._nc, self._t.stream, {"seq": start, "batch": want})
            out += [self.record(m) for m in msgs]
            if not msgs or int((msgs[-1].headers or {}).get("Nats-Num-Pending", "0")) == 0:
                break
            start = out[-1].position + 1
        return out

    def record(self, msg: Msg) -> Recorded:
        """The record a stored message holds."""
        h = msg.headers or {}
        try:
            seq = int(h["Fl-Seq"])
            return Recorded(
                run_id=self._t.run_of(h["Nats-Subject"]),
                seq=seq,
                position=int(h["Nats-Sequence"]),
                at=int(h["Fl-At"]),
                event=decode_event(msg.data, int(h.get("Fl-V", "1"))),
            )
        except (KeyError, ValueError, msgspec.DecodeError) as exc:
            raise StoreError(
                f"message {h.get('Nats-Sequence', '?')} of stream {self._t.stream!r} is not a "
                f"foldloop event ({exc}); was something else published to {self._t.subjects}?"
            ) from None


def _seq_of(msg: Msg) -> int:
    """The run seq a stored message holds (0 for one that is not foldloop's)."""
    try:
        return int((msg.headers or {}).get("Fl-Seq", "0"))
    except ValueError:
        return 0


def approvals_header(changes: ApprovalChanges) -> str:
    """The approval changes an append carries, as its last message's header: without each
    request's args (the log has them in the call's ``tool.requested``), so the header stays
    far below NATS's 64 KiB limit on headers whatever a tool is called with."""
    lean = tuple(msgspec.structs.replace(r, args="") for r in changes.requests)
    raw = _APPROVALS_ENC.encode(msgspec.structs.replace(changes, requests=lean))
    return base64.b64encode(raw).decode()


def events_of(records: Sequence[Recorded]) -> tuple[list[AnyEvent], list[int]]:
    """The events of ``records`` and the time of each."""
    return [r.event for r in records], [r.at for r in records]
