"""The store port on NATS JetStream: a log several machines share.

Events are in one stream (``_nats_log``), leases, owners, approvals, snapshots and
checkpoints in key-value buckets (``_nats_tables``). What LMDB writes in one transaction
is ordered here so that a crash between two writes loses nothing:

- an append is published first (atomically, fenced by the run's expected last subject
  sequence and checked against its lease), then its approval records are written, then
  its lease released, then listeners told;
- the approval changes also ride in the append's last message, so a crash between the
  append and its records is repaired from the log when another runtime takes the run over
  (``acquire_lease`` from another owner replays them, idempotently);
- a lease is fenced twice: checked before the publish, and the publish itself fails if
  another owner appended since (expected last subject sequence).

Every operation runs on the store's asyncio loop thread (``_nats_bridge``); the port's
methods block on it or return its ``Pending``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any, TypeVar

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client

from foldloop._log import get_logger
from foldloop.errors import (
    ConcurrencyError,
    ConfigError,
    CorruptRecord,
    FoldloopError,
    StoreAccessError,
    StoreError,
)
from foldloop.events._recorded import AnyEvent, Recorded
from foldloop.store._answer_by import read_timeout
from foldloop.store._approvals import ApprovalChanges, ApprovalRecord
from foldloop.store._checkpoints import Checkpoint
from foldloop.store._framing import Lease
from foldloop.store._nats_bridge import LoopThread, NatsPending
from foldloop.store._nats_cancels import ask_cancel, serve_cancels
from foldloop.store._nats_log import HEADROOM, NatsLog, events_of
from foldloop.store._nats_names import NatsTarget, parse_nats_url, shown
from foldloop.store._nats_setup import set_up
from foldloop.store._nats_tables import NatsTables
from foldloop.store._nats_work import NatsWork, NatsWorkItem
from foldloop.store._payloads import MAX_EVENT_BYTES, Payload
from foldloop.store._port import (
    EventStore,
    Listener,
    Pending,
    RemoteCancel,
    Snapshot,
    WorkItem,
    WorkQueue,
)
from foldloop.store._rules import check_expirable

__all__ = ["JetStreamStore", "open_jetstream"]

T = TypeVar("T")
log = get_logger("foldloop.store")

CONNECT_TIMEOUT_S = 5.0
CLOSE_WAIT_S = 3.0
"""How long a close waits for writes in flight, and for the owner key's removal."""
AWAY_WAIT_S = 1.0
"""The same, with the client not connected (reconnecting: a server back within the
client's one-second reconnect wait still takes them; one gone costs a close no more)."""
CALL_TIMEOUT_S = 60.0
"""The longest a blocking call waits on the loop (an append retries for 30 s inside it)."""


class JetStreamStore:
    """``EventStore`` on NATS JetStream (see the module doc)."""

    def __init__(
        self, target: NatsTarget, *, create: bool, options: Mapping[str, Any] | None = None
    ) -> None:
        self._t = target
        self._listeners: list[Listener] = []
        self._closed = False
        self._refused = ""  # an authorization error seen at open (later errors do not hide it)
        self._loop = LoopThread("foldloop-nats")
        self._nc: Client | None = None
        try:
            connect = {**target.connect_options(), **(options or {})}
            self._loop.call(self._open(create, connect), CALL_TIMEOUT_S)
        except BaseException:
            self._closed = True  # its disconnect is no news (a missing namespace, say)
            self._loop.close(self._disconnect())
            raise

    async def _open(self, create: bool, options: dict[str, Any]) -> None:
        t = self._t
        client = Client()
        connecting = client.connect(
            servers=list(t.servers),
            connect_timeout=int(CONNECT_TIMEOUT_S),
            max_reconnect_attempts=1,  # at open: each server twice, then say so
            reconnect_time_wait=1,
            allow_reconnect=True,
            error_cb=self._on_error,
            disconnected_cb=self._on_disconnected,
            reconnected_cb=_reconnected,
            **options,
        )
        try:  # a handshake a server never answers (tls:// to a plain one) has no timeout
            await asyncio.wait_for(connecting, CONNECT_TIMEOUT_S * (2 * len(t.servers) + 1))
            self._nc = client
            client.options["max_reconnect_attempts"] = -1  # once open: ride out outages
        except (TimeoutError, nats.errors.NoServersError, OSError) as exc:
            with contextlib.suppress(Exception):
                await client.close()
            tried = ", ".join(shown(server) for server in t.servers)
            if t.url.startswith("tls://") and isinstance(exc, TimeoutError):
                raise StoreAccessError(
                    f"no TLS handshake with the NATS server at {t.shown} (tried {tried}); "
                    "does it serve TLS? (nats:// for a server without it)"
                ) from None
            await asyncio.sleep(0)  # an error callback the failure scheduled runs first
            if self._refused:
                raise StoreAccessError(
                    f"the NATS server at {t.shown} refused this store's credentials "
                    f"({self._refused}); check the user and password (or token) in the "
                    "URL, or its creds= / nkey= file"
                ) from None
            raise StoreAccessError(
                f"cannot reach a NATS server at {t.shown} (tried {tried}: "
                f"{str(exc) or type(exc).__name__}); is nats-server running there with JetStream "
                "(nats-server -js)?"
            ) from None
        js = self._nc.jetstream(timeout=CONNECT_TIMEOUT_S)
        self._log = NatsLog(self._nc, js, t)
        self._tables = NatsTables(self._nc, js, t)
        self._work = NatsWork(self._nc, js, t)
        parts = (self._log, self._tables, self._work)
        await set_up(parts, t, timeout_s=CONNECT_TIMEOUT_S, create=create)

    @property
    def _connected(self) -> bool:
        """Connected to a server now (not reconnecting, not closed)."""
        return self._nc is not None and self._nc.is_connected

    @property
    def _close_wait_s(self) -> float:
        """How long a close waits on the server (for writes in flight, the owner key)."""
        return CLOSE_WAIT_S if self._connected else AWAY_WAIT_S

    async def _disconnect(self) -> None:
        if self._nc is not None and not self._nc.is_closed:
            with contextlib.suppress(Exception):
                await self._work.close()
            if self._connected:  # else nothing can be flushed: the server is away
                with contextlib.suppress(Exception):
                    await self._nc.flush(timeout=2)
            with contextlib.suppress(Exception):
                await self._nc.close()
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in others:  # holds' renewals, and calls in flight (a StoreError for their callers)
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)

    # -- plumbing --------------------------------------------------------------------------

    async def _on_error(self, exc: Exception) -> None:
        error = str(exc).removeprefix("nats: ").strip("'") or type(exc).__name__
        if "authorization" in error.lower():
            self._refused = error
        log.debug("nats_error", error=error)

    async def _on_disconnected(self) -> None:
        if self._nc is not None and not self._closed:  # a close asked for is no news
            log.warning("nats_disconnected", store=self._t.shown)

    async def _guarded(self, coro: Coroutine[Any, Any, T]) -> T:
        """``coro``, with what NATS raises turned into a StoreError that says what to do."""
        try:
            return await coro
        except FoldloopError:
            raise
        except (TimeoutError, nats.errors.Error, nats.js.errors.Error) as exc:
            why = str(exc) or type(exc).__name__
            raise StoreError(
                f"the NATS server at {self._t.shown} failed a request ({why}); nothing "
                "half-written: retry once it is reachable"
            ) from None

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        self._check_open(coro)
        return self._loop.call(self._guarded(coro), CALL_TIMEOUT_S)

    def _read(self, coro: Coroutine[Any, Any, T]) -> T:
        """A read: given up at the caller's deadline (``answer_by``), if it has one."""
        self._check_open(coro)
        return self._loop.call(self._guarded(coro), read_timeout(CALL_TIMEOUT_S), read=True)

    def _write(
        self,
        coro: Coroutine[Any, Any, T],
        callback: Callable[[NatsPending[T]], None] | None = None,
    ) -> NatsPending[T]:
        self._check_open(coro)
        return self._loop.pending(self._guarded(coro), callback)

    def _check_open(self, coro: Coroutine[Any, Any, Any]) -> None:
        if self._closed:
            coro.close()
            raise StoreError(f"the store at {self._t.shown} is closed")

    def _tell(self, records: list[Recorded]) -> None:
        for listener in list(self._listeners):
            self._loop.notify(listener, records)

    # -- the port: identity ----------------------------------------------------------------

    @property
    def readonly(self) -> bool:
        return False

    @property
    def location(self) -> str:
        return self._t.url

    @property
    def max_event_bytes(self) -> int:
        """Bounded by the server's ``max_payload`` too (what one message may carry)."""
        payload = self._nc.max_payload if self._nc is not None else MAX_EVENT_BYTES
        return min(MAX_EVENT_BYTES, payload - HEADROOM)

    # -- appends ---------------------------------------------------------------------------

    def append(
        self,
        run_id: str,
        payloads: Sequence[Payload],
        *,
        expected_seq: int,
        lease: Lease | None = None,
        release: bool = False,
        approvals: ApprovalChanges | None = None,
        durable: bool = True,
        records: bool = True,
        callback: Callable[[Pending[list[Recorded]]], None] | None = None,
    ) -> Pending[list[Recorded]]:
        """Append after ``expected_seq``, fenced by ``lease`` (see ``port.EventStore``);
        every append is acknowledged by the server once stored (``durable`` or not)."""
        if release and lease is None:
            raise ConfigError("release=True releases the lease given: pass lease=")
        return self._write(
            self._append(
                run_id,
                payloads,
                expected_seq=expected_seq,
                lease=lease,
                release=release,
                approvals=approvals,
            ),
            callback,
        )

    async def _append(
        self,
        run_id: str,
        payloads: Sequence[Payload],
        *,
        expected_seq: int,
        lease: Lease | None,
        release: bool,
        approvals: ApprovalChanges | None,
    ) -> list[Recorded]:
        guard = None
        if lease is not None:
            owner, epoch = lease.owner, lease.epoch

            async def guard() -> None:
                await self._tables.check_lease(run_id, owner, epoch)

        out = await self._log.append(
            run_id, payloads, expected_seq=expected_seq, guard=guard, approvals=approvals
        )
        if approvals:
            await self._tables.apply_approvals(approvals, run_id)
        if release and lease is not None:
            await self._tables.release_lease(run_id, lease.owner, lease.epoch)
        self._tell(out)
        return out

    def start_run(
        self, run_id: str, payloads: Sequence[Payload], *, owner: str, release: bool = False
    ) -> Pending[int]:
        """Take a new run's lease and append its first events (see ``port.EventStore``)."""
        return self._write(self._start_run(run_id, payloads, owner, release))

    async def _start_run(
        self, run_id: str, payloads: Sequence[Payload], owner: str, release: bool
    ) -> int:
        head = await self._log.head(run_id)
        if head:
            raise ConcurrencyError(run_id, 0, head)
        epoch, _previous = await self._tables.acquire_lease(run_id, owner)
        try:
            await self._append(
                run_id,
                payloads,
                expected_seq=0,
                lease=Lease(owner, epoch),
                release=release,
                approvals=None,
            )
        except ConcurrencyError:  # another runtime started it first: not ours to hold
            await self._tables.release_lease(run_id, owner, epoch)
            raise
        return epoch

    def import_run(
        self,
        run_id: str,
        payloads: Sequence[Payload],
        *,
        approvals: ApprovalChanges | None = None,
    ) -> Pending[None]:
        """Append a whole run under no lease (in parts of 1,000 events past that)."""

        async def imported() -> None:
            await self._append(
                run_id, payloads, expected_seq=0, lease=None, release=False, approvals=approvals
            )

        return self._write(imported())

    # -- reads -----------------------------------------------------------------------------

    def head(self, run_id: str) -> int:
        return self._read(self._log.head(run_id))

    def read(self, run_id: str, from_seq: int = 1, to_seq: int | None = None) -> list[Recorded]:
        return self._read(self._log.read(run_id, from_seq, to_seq))

    def read_events(self, run_id: str, from_seq: int = 1) -> tuple[list[AnyEvent], list[int]]:
        return events_of(self.read(run_id, from_seq))

    def consume_events(
        self,
        run_id: str,
        fn: Callable[[Iterator[tuple[AnyEvent, int]]], T],
        from_seq: int = 1,
    ) -> T:
        return fn((r.event, r.at) for r in self.read(run_id, from_seq))

    def read_runs(self, starts: dict[str, int]) -> dict[str, tuple[list[AnyEvent], list[int]]]:
        return {run_id: self.read_events(run_id, seq) for run_id, seq in starts.items()}

    def run_ids(self) -> list[str]:
        return self._read(self._log.run_ids())

    def verify_chain(self, run_id: str) -> int:
        """The run's seqs run 1, 2, ... in position order and every event decodes."""
        records = self.read(run_id)
        for want, record in enumerate(records, start=1):
            if record.seq != want:
                raise CorruptRecord(run_id, want, f"seq {record.seq} stored where {want} belongs")
        return len(records)

    def read_all(self, from_position: int = 1, limit: int | None = None) -> list[Recorded]:
        return self._read(self._log.read_all(from_position, limit))

    def last_position(self) -> int:
        return self._read(self._log.last_position())

    def add_listener(self, fn: Listener) -> Callable[[], None]:
        self._listeners.append(fn)

        def remove() -> None:
            with contextlib.suppress(ValueError):
                self._listeners.remove(fn)

        return remove

    # -- leases ----------------------------------------------------------------------------

    def acquire_lease(self, run_id: str, owner: str) -> Pending[int]:
        """Take the run for ``owner``; from another owner, its approval records are first
        brought up to what its log says (a crash may have cut them)."""
        return self._write(self._acquire(run_id, owner))

    async def _acquire(self, run_id: str, owner: str) -> int:
        epoch, previous = await self._tables.acquire_lease(run_id, owner)
        if previous != owner:  # another runtime's, or released (by one that was cut off)
            for changes in await self._log.approval_changes(run_id):
                await self._tables.repair_approvals(changes, run_id)
        return epoch

    def release_lease(self, run_id: str, lease: Lease, *, durable: bool = False) -> Pending[bool]:
        return self._write(self._tables.release_lease(run_id, lease.owner, lease.epoch))

    def lease(self, run_id: str) -> Lease | None:
        return self._read(self._tables.lease(run_id))

    def leases(self) -> dict[str, Lease]:
        return self._read(self._tables.leases())

    def hold_owner(self, owner: str) -> OwnerKey:
        return OwnerKey(self, owner)

    def owner_alive(self, owner: str) -> bool:
        return self._read(self._tables.owner_alive(owner))

    # -- approvals -------------------------------------------------------------------------

    def decide_approval(
        self, record: ApprovalRecord, *, approved: bool, by: str, note: str, now: int
    ) -> Pending[ApprovalRecord]:
        return self._write(
            self._tables.decide_approval(record, approved=approved, by=by, note=note, now=now)
        )

    def expire_approval(self, record: ApprovalRecord, *, now: int) -> Pending[ApprovalRecord]:
        check_expirable(record, now)
        return self.decide_approval(record, approved=False, by="", note="", now=now)

    def approval(self, run_id: str, call_id: str) -> ApprovalRecord | None:
        return self._read(self._tables.approval(run_id, call_id))

    def approval_by_token(self, token_digest: str) -> ApprovalRecord | None:
        return self._read(self._tables.approval_by_token(token_digest))

    def approvals(self) -> list[ApprovalRecord]:
        return self._read(self._tables.approvals())

    def open_approvals(self) -> list[ApprovalRecord]:
        return self._read(self._tables.open_approvals())

    def due_approvals(self, now: int) -> list[ApprovalRecord]:
        return self._read(self._tables.open_approvals(due_by=now))

    # -- snapshots and checkpoints ---------------------------------------------------------

    def put_snapshot(
        self, run_id: str, *, seq: int, state_version: int, state: bytes, chunks: Sequence[bytes]
    ) -> Pending[bool]:
        return self._write(self._put_snapshot(run_id, seq, state_version, state, chunks))

    async def _put_snapshot(
        self, run_id: str, seq: int, state_version: int, state: bytes, chunks: Sequence[bytes]
    ) -> bool:
        if await self._log.head(run_id) != seq:
            return False
        return await self._tables.put_snapshot(
            run_id, seq=seq, state_version=state_version, state=state, chunks=chunks
        )

    def snapshot(self, run_id: str) -> Snapshot | None:
        return self._read(self._tables.snapshot(run_id))

    def put_checkpoint(
        self, checkpoint: Checkpoint, *, advance: bool = True, durable: bool = False
    ) -> Pending[bool]:
        return self._write(self._tables.put_checkpoint(checkpoint, advance=advance))

    def delete_checkpoint(self, name: str) -> Pending[None]:
        return self._write(self._tables.delete_checkpoint(name))

    def checkpoint(self, name: str) -> Checkpoint | None:
        return self._read(self._tables.checkpoint(name))

    def checkpoints(self) -> list[Checkpoint]:
        return self._read(self._tables.checkpoints())

    # -- the work queue --------------------------------------------------------------------

    def enqueue(self, agent: str, run_ids: Sequence[str]) -> None:
        """Queue runs of ``agent`` for whichever runtime with that agent takes them."""
        self._call(self._work.enqueue(agent, run_ids))

    def take_work(self, agents: Sequence[str], limit: int, timeout: float) -> list[WorkItem]:
        """Up to ``limit`` queued runs of ``agents`` (see ``WorkQueue``)."""
        if not agents or limit <= 0:
            return []
        msgs = self._call(self._work.take(agents, limit, timeout))
        return [NatsWorkItem(m, self._loop) for m in msgs]

    # -- cancels across machines ---------------------------------------------------------

    def serve_cancels(self, handler: Callable[[str, str], bool]) -> Callable[[], None]:
        """Answer cancel requests for the runs ``handler`` drives (see ``RemoteCancel``):
        each runtime listens on the store's cancel subjects; only the driver answers."""
        assert self._nc is not None
        sub = self._call(serve_cancels(self._nc, self._t, handler))

        def stop() -> None:
            if not self._closed:
                with contextlib.suppress(StoreError):
                    self._call(sub.unsubscribe())

        return stop

    def ask_cancel(self, run_id: str, reason: str) -> bool:
        """Ask the runtime driving ``run_id`` to cancel it; whether one took it."""
        assert self._nc is not None
        return self._call(ask_cancel(self._nc, self._t, run_id, reason))

    def writes_together(self) -> AbstractContextManager[None]:
        """Nothing to do: every write is a publish in flight, acknowledged on its own."""
        return contextlib.nullcontext()

    def flush(self, timeout: float) -> bool:
        """Wait for the writes in flight to be acknowledged or refused."""
        return self._loop.settle(timeout)

    def close(self) -> None:
        """Let what is in flight end (up to CLOSE_WAIT_S, AWAY_WAIT_S when not connected: a
        server gone is no reason to hang), then disconnect; never raises."""
        if self._closed:
            return
        self._closed = True
        try:  # (the runtime's flush waited already: away, little can still land)
            self._loop.close(self._disconnect(), timeout=CLOSE_WAIT_S, settle_s=self._close_wait_s)
        except StoreError as exc:
            log.warning("store_closed_unclean", store=self._t.shown, error=str(exc))


class OwnerKey:
    """A runtime's proof of life on NATS: its key in the owners bucket, renewed on the
    store's loop every third of the bucket's age limit until released."""

    def __init__(self, store: JetStreamStore, owner: str) -> None:
        self._store = store
        self._owner = owner
        self._task = store._call(self._begin())

    async def _begin(self) -> asyncio.Task[None]:
        await self._store._tables.hold_owner(self._owner)
        return asyncio.get_running_loop().create_task(self._renew())

    async def _renew(self) -> None:
        while True:
            await asyncio.sleep(self._store._tables.owner_ttl / 3)
            try:
                await self._store._tables.hold_owner(self._owner)
            except (TimeoutError, nats.errors.Error, nats.js.errors.Error) as exc:
                log.warning("owner_renewal_failed", owner=self._owner, error=str(exc))

    async def _end(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        wait_s = self._store._close_wait_s
        try:  # the server gone: the key lapses at owner_ttl all the same
            await asyncio.wait_for(self._store._tables.drop_owner(self._owner), wait_s)
        except (TimeoutError, nats.errors.Error, nats.js.errors.Error) as exc:
            log.warning("owner_key_left_to_lapse", owner=self._owner, error=str(exc))

    def release(self) -> None:
        """The runtime closed cleanly: its runs are free at once (or, the server away, once
        its key lapses)."""
        if not self._store._closed:
            self._store._loop.call(self._end(), CLOSE_WAIT_S * 2)


def open_jetstream(
    url: str, *, create: bool = True, options: Mapping[str, Any] | None = None
) -> JetStreamStore:
    """Connect to the JetStream store at ``url`` (making its stream and buckets if absent)."""
    return JetStreamStore(parse_nats_url(url), create=create, options=options)


async def _reconnected() -> None:
    log.info("nats_reconnected")


def _implements_the_port(store: JetStreamStore) -> EventStore:
    """(For mypy: JetStreamStore is an EventStore.)"""
    return store


def _has_a_work_queue(store: JetStreamStore) -> WorkQueue:
    """(For mypy: JetStreamStore is a WorkQueue.)"""
    return store


def _carries_cancels(store: JetStreamStore) -> RemoteCancel:
    """(For mypy: JetStreamStore is a RemoteCancel.)"""
    return store
