"""The side tables on JetStream key-value buckets: leases, owners, approvals, snapshots,
checkpoints, meta.

Each change is a compare-and-set by revision: read the key, compute its new value by the
rules every backend shares (``_rules``), write it only if the key still holds that
revision, and on a lost race read and decide again. An owner is alive while its key in
the owners bucket is (renewed every third of the bucket's age limit; a dead process's key
lapses at the limit, and its runs with it). Listing reads the last value of every key of
a prefix in one direct get, without a consumer.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from functools import partial
from typing import TypeVar

import msgspec
import nats.js.errors
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, RawStreamMsg, StorageType
from nats.js.errors import KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from foldloop.errors import StoreCorrupted, StoreError, StoreNotFound
from foldloop.store._approvals import ApprovalChanges, ApprovalRecord
from foldloop.store._checkpoints import Checkpoint, decode_checkpoint, encode_checkpoint
from foldloop.store._framing import Lease
from foldloop.store._nats_log import TooManyResults, direct_batch
from foldloop.store._nats_names import NatsTarget, token, untoken
from foldloop.store._nats_retry import retrying
from foldloop.store._port import Snapshot
from foldloop.store._rules import acquired, applied, check_fence, checkpoint_advances, decided
from foldloop.store._rules import released as released_lease

__all__ = ["NatsTables"]

T = TypeVar("T")

PAGE = 1024
"""Keys a direct get answers at most at once (the server's own cap for multi_last)."""
TABLES = ("leases", "owners", "approvals", "open", "snapshots", "checkpoints", "meta")

_ENC = msgspec.msgpack.Encoder()
_LEASE = msgspec.msgpack.Decoder(Lease)
_APPROVAL = msgspec.msgpack.Decoder(ApprovalRecord)
_SNAPSHOT = msgspec.msgpack.Decoder(tuple[int, int, bytes, int])
_DELETED = ("DEL", "PURGE")


def _gone(headers: dict[str, str]) -> bool:
    """A direct get's message that marks its key deleted, purged or expired."""
    return headers.get("KV-Operation") in _DELETED or "Nats-Marker-Reason" in headers


def _found(headers: dict[str, str], data: bytes) -> tuple[str, bytes | None, int]:
    """(subject, value or None for a deleted key, stream sequence) of a direct get's
    message."""
    value = None if _gone(headers) else data
    return headers["Nats-Subject"], value, int(headers["Nats-Sequence"])


class NatsTables:
    """The buckets of one store (all coroutines, on the store's loop)."""

    def __init__(self, nc: Client, js: JetStreamContext, target: NatsTarget) -> None:
        self._nc = nc
        self._js = js
        self._t = target
        self._kv: dict[str, KeyValue] = {}
        self.owner_ttl = target.owner_ttl
        """How long an owner key outlives its last renewal (the bucket's, once bound)."""

    async def ensure(self, *, create: bool) -> None:
        """Bind (making them if absent, with ``create``) every bucket."""
        for table in TABLES:
            name = self._t.bucket(table)
            try:
                self._kv[table] = await self._js.key_value(name)
                if table == "owners":
                    self.owner_ttl = (await self._kv[table].status()).ttl or self.owner_ttl
                continue
            except nats.js.errors.BucketNotFoundError:
                if not create:
                    raise StoreNotFound(
                        f"the foldloop store at {self._t.shown} has no bucket {name!r}; open "
                        "it with a runtime first to finish making it"
                    ) from None
            config = KeyValueConfig(
                bucket=name,
                history=1,
                storage=StorageType.FILE,
                replicas=self._t.replicas,
                direct=True,
                ttl=self._t.owner_ttl if table == "owners" else None,
            )
            self._kv[table] = await self._js.create_key_value(config)

    # -- key-value helpers -----------------------------------------------------------------

    async def _get(self, table: str, key: str) -> tuple[bytes | None, int]:
        """(value, revision) of a key, as the bucket's leader has it; (None, 0) when absent
        (a deleted key: None and its marker's revision)."""
        bucket = self._t.bucket(table)
        try:
            msg = await retrying(
                lambda: self._js.get_msg(f"KV_{bucket}", subject=f"$KV.{bucket}.{key}")
            )
        except nats.js.errors.NotFoundError:
            return None, 0
        revision = int(msg.seq or 0)
        if _gone(msg.headers or {}):
            return None, revision
        return msg.data or b"", revision

    async def _set(self, table: str, key: str, value: bytes, revision: int) -> bool:
        """Write ``value`` if the key is still at ``revision`` (0: absent); False if not."""
        try:
            await retrying(
                lambda: self._kv[table].update(key, value, last=revision, validate_keys=False)
            )
        except KeyWrongLastSequenceError:
            # moved since read; or a repeat whose first try landed: then the value is ours
            now, _ = await self._get(table, key)
            return now == value
        return True

    async def _change(
        self, table: str, key: str, fn: Callable[[bytes | None], tuple[bytes | None, T]]
    ) -> T:
        """Compare-and-set: ``fn(current) -> (new value or None for no write, result)``,
        again on a lost race."""
        while True:
            raw, revision = await self._get(table, key)
            new, result = fn(raw)
            if new is None or await self._set(table, key, new, revision):
                return result

    async def _last_values(self, table: str, prefix: str = ">") -> list[tuple[str, bytes]]:
        """(key, value) of every key under ``prefix`` that holds a value: one direct get;
        past its 1,024 keys, the bucket's stream walked a page at a time."""
        bucket = self._t.bucket(table)
        stream, base = f"KV_{bucket}", f"$KV.{bucket}."
        subject = base + prefix
        try:
            msgs = await direct_batch(self._nc, stream, {"multi_last": [subject], "batch": PAGE})
        except TooManyResults:
            return await self._walk_values(bucket, subject)
        if not msgs and self._t.replicas > 1:
            # a replica catching up answers that there is nothing: ask the leader
            if await self._leader_next(stream, subject, 1) is None:
                return []
            return await self._walk_values(bucket, subject)
        found = (_found(m.headers or {}, m.data) for m in msgs)
        return [(key[len(base) :], value) for key, value, _seq in found if value is not None]

    async def _walk_values(self, bucket: str, subject: str) -> list[tuple[str, bytes]]:
        """Every key's value by reading the stream in sequence order: a bucket keeps one
        message a key (history=1), so each live key is met at least once; a key written
        again during the walk is met again later, and the later message wins."""
        stream, base = f"KV_{bucket}", f"$KV.{bucket}."
        values: dict[str, bytes | None] = {}
        seq = 1
        while True:
            msgs = await direct_batch(
                self._nc, stream, {"seq": seq, "next_by_subj": subject, "batch": PAGE}
            )
            found = [_found(m.headers or {}, m.data) for m in msgs]
            if not found:
                # direct gets are answered by any replica, which may lag: the stream's
                # leader says whether anything is left
                raw = await self._leader_next(stream, subject, seq)
                if raw is None:
                    break
                value = None if _gone(raw.headers or {}) else raw.data or b""
                found = [(raw.subject or "", value, int(raw.seq or 0))]
            for subject_of_key, value, _seq in found:
                values[subject_of_key[len(base) :]] = value
            seq = found[-1][2] + 1
        return [(key, value) for key, value in values.items() if value is not None]

    async def _leader_next(self, stream: str, subject: str, seq: int) -> RawStreamMsg | None:
        """The stream leader's first message on ``subject`` at ``seq`` or later; None."""
        try:
            return await retrying(
                lambda: self._js.get_msg(stream, seq=seq, subject=subject, next=True)
            )
        except nats.js.errors.NotFoundError:
            return None

    # -- owners ----------------------------------------------------------------------------

    async def hold_owner(self, owner: str) -> None:
        """Mark ``owner`` alive (again) for ``owner_ttl`` seconds."""
        await retrying(lambda: self._kv["owners"].put(token(owner), b"1", validate_keys=False))

    async def drop_owner(self, owner: str) -> None:
        await retrying(lambda: self._kv["owners"].purge(token(owner)))

    async def owner_alive(self, owner: str) -> bool:
        if not owner:
            return False
        raw, _ = await self._get("owners", token(owner))
        return raw is not None

    # -- leases ----------------------------------------------------------------------------

    async def lease(self, run_id: str) -> Lease | None:
        raw, _ = await self._get("leases", token(run_id))
        return self._lease_of(run_id, raw)

    def _lease_of(self, run_id: str, raw: bytes | None) -> Lease | None:
        """A stored lease, decoded (StoreCorrupted, naming the run, if it does not decode)."""
        if raw is None:
            return None
        try:
            return _LEASE.decode(raw)
        except msgspec.DecodeError as exc:
            raise StoreCorrupted(
                f"run {run_id!r}'s lease at {self._t.shown} does not decode ({exc}); restore "
                "the store from a backup, or delete that key of its leases bucket"
            ) from None

    async def leases(self) -> dict[str, Lease]:
        """Every run's lease, in one batch of direct gets; a damaged one is left out."""
        out: dict[str, Lease] = {}
        for key, raw in await self._last_values("leases"):
            with contextlib.suppress(msgspec.DecodeError, UnicodeDecodeError, ValueError):
                out[untoken(key)] = _LEASE.decode(raw)
        return out

    async def check_lease(self, run_id: str, owner: str, epoch: int) -> None:
        check_fence(run_id, await self.lease(run_id), owner, epoch)

    async def acquire_lease(self, run_id: str, owner: str) -> tuple[int, str]:
        """Take the run for ``owner``: (the new epoch, who held it before or '')."""
        while True:
            raw, revision = await self._get("leases", token(run_id))
            current = self._lease_of(run_id, raw)
            holder = current.owner if current is not None else ""
            alive = bool(holder) and holder != owner and await self.owner_alive(holder)
            lease = acquired(run_id, current, owner, _answer(alive))
            if await self._set("leases", token(run_id), _ENC.encode(lease), revision):
                return lease.epoch, holder

    async def release_lease(self, run_id: str, owner: str, epoch: int) -> bool:
        def release(raw: bytes | None) -> tuple[bytes | None, bool]:
            lease = released_lease(self._lease_of(run_id, raw), owner, epoch)
            return (None, False) if lease is None else (_ENC.encode(lease), True)

        return await self._change("leases", token(run_id), release)

    # -- approvals -------------------------------------------------------------------------

    @staticmethod
    def _approval_key(run_id: str, call_id: str) -> str:
        return f"r.{token(run_id)}.{token(call_id)}"

    async def approval(self, run_id: str, call_id: str) -> ApprovalRecord | None:
        raw, _ = await self._get("approvals", self._approval_key(run_id, call_id))
        return None if raw is None else _APPROVAL.decode(raw)

    async def approval_by_token(self, token_digest: str) -> ApprovalRecord | None:
        key, _ = await self._get("approvals", f"t.{token(token_digest)}")
        if key is None:
            return None
        raw, _ = await self._get("approvals", key.decode())
        return None if raw is None else _APPROVAL.decode(raw)

    async def approvals(self) -> list[ApprovalRecord]:
        return [_APPROVAL.decode(v) for _k, v in await self._last_values("approvals", "r.>")]

    async def open_approvals(self, due_by: int | None = None) -> list[ApprovalRecord]:
        out = []
        for key, _ in await self._last_values("open"):
            raw, _ = await self._get("approvals", key)
            if raw is None:
                continue
            record = _APPROVAL.decode(raw)
            if record.applied:
                continue
            if due_by is not None and record.status == "pending" and record.expires_at > due_by:
                continue
            out.append(record)
        return sorted(out, key=lambda r: (r.run_id, r.call_id))

    async def _put_approval(self, record: ApprovalRecord, revision: int | None) -> bool:
        """Store ``record`` (if still at ``revision``; None: whatever is there), with its
        token's index and its place among the open ones."""
        key = self._approval_key(record.run_id, record.call_id)
        raw = _ENC.encode(record)
        if revision is None:
            await retrying(lambda: self._kv["approvals"].put(key, raw, validate_keys=False))
        elif not await self._set("approvals", key, raw, revision):
            return False
        index = f"t.{token(record.token_digest)}"
        await retrying(partial(self._kv["approvals"].put, index, key.encode(), validate_keys=False))
        if record.applied:
            await retrying(lambda: self._kv["open"].purge(key))
        else:
            await retrying(lambda: self._kv["open"].put(key, b"", validate_keys=False))
        return True

    async def apply_approvals(self, changes: ApprovalChanges, run_id: str) -> None:
        """The records an append carries: its requests, then the decisions it applied."""
        for record in changes.requests:
            await self._put_approval(record, None)
        for call_id, seq in changes.applied:
            while True:
                raw, revision = await self._get("approvals", self._approval_key(run_id, call_id))
                marked = applied(None if raw is None else _APPROVAL.decode(raw), seq)
                if marked is None or await self._put_approval(marked, revision):
                    break

    async def repair_approvals(self, changes: ApprovalChanges, run_id: str) -> None:
        """``apply_approvals`` again from the log after a crash: a request is restored
        only where its record is missing or an applied one of an earlier request."""
        for record in changes.requests:
            raw, revision = await self._get(
                "approvals", self._approval_key(record.run_id, record.call_id)
            )
            current = None if raw is None else _APPROVAL.decode(raw)
            if current is None or (current.applied and current.token_digest != record.token_digest):
                await self._put_approval(record, revision)
        await self.apply_approvals(ApprovalChanges(applied=changes.applied), run_id)

    async def decide_approval(
        self, record: ApprovalRecord, *, approved: bool, by: str, note: str, now: int
    ) -> ApprovalRecord:
        key = self._approval_key(record.run_id, record.call_id)
        while True:
            raw, revision = await self._get("approvals", key)
            current = None if raw is None else _APPROVAL.decode(raw)
            stored = decided(current, record, approved=approved, by=by, note=note, now=now)
            if await self._put_approval(stored, revision):
                return stored

    # -- snapshots -------------------------------------------------------------------------

    async def snapshot(self, run_id: str) -> Snapshot | None:
        raw, _ = await self._get("snapshots", token(run_id))
        if raw is None:
            return None
        try:
            version, seq, state, count = _SNAPSHOT.decode(raw)
        except msgspec.DecodeError:
            return None  # not one this foldloop wrote: a cache, rebuilt from the log
        chunks = []
        for i in range(count):
            chunk, _ = await self._get("snapshots", f"{token(run_id)}.c{i}")
            if chunk is None:
                return None
            chunks.append(chunk)
        return version, seq, state, chunks

    async def put_snapshot(
        self, run_id: str, *, seq: int, state_version: int, state: bytes, chunks: Sequence[bytes]
    ) -> bool:
        key = token(run_id)
        raw, _ = await self._get("snapshots", key)
        stored = 0
        if raw is not None:
            try:
                stored = min(int(_SNAPSHOT.decode(raw)[3]), len(chunks))
            except msgspec.DecodeError:
                stored = 0
        values = [(f"{key}.c{i}", chunks[i]) for i in range(stored, len(chunks))]
        values.append((key, _ENC.encode((state_version, seq, state, len(chunks)))))
        if any(len(v) > self._nc.max_payload - 256 for _k, v in values):
            return False  # a snapshot is a cache: too big for one message, go without
        for k, v in values:
            await retrying(partial(self._kv["snapshots"].put, k, v, validate_keys=False))
        return True

    # -- checkpoints -----------------------------------------------------------------------

    async def checkpoint(self, name: str) -> Checkpoint | None:
        raw, _ = await self._get("checkpoints", token(name))
        if raw is None:
            return None
        try:
            return decode_checkpoint(raw)
        except msgspec.DecodeError as exc:
            raise StoreError(
                f"the checkpoint of projection {name!r} is unreadable ({exc}); "
                "re-attach it with reset=True to rebuild it from the log"
            ) from None

    async def checkpoints(self) -> list[Checkpoint]:
        out = []
        for _k, raw in await self._last_values("checkpoints"):
            try:
                out.append(decode_checkpoint(raw))
            except msgspec.DecodeError:
                continue
        return sorted(out, key=lambda c: c.name)

    async def put_checkpoint(self, checkpoint: Checkpoint, *, advance: bool) -> bool:
        def put(raw: bytes | None) -> tuple[bytes | None, bool]:
            if advance and raw is not None:
                try:
                    current: Checkpoint | None = decode_checkpoint(raw)
                except msgspec.DecodeError:
                    current = None
                if not checkpoint_advances(current, checkpoint):
                    return None, False
            return encode_checkpoint(checkpoint), True

        return await self._change("checkpoints", token(checkpoint.name), put)

    async def delete_checkpoint(self, name: str) -> None:
        await retrying(lambda: self._kv["checkpoints"].purge(token(name)))

    # -- meta ------------------------------------------------------------------------------

    async def meta(self, key: str) -> tuple[bytes | None, int]:
        return await self._get("meta", key)

    async def set_meta(self, key: str, value: bytes, revision: int) -> bool:
        return await self._set("meta", key, value, revision)


def _answer(alive: bool) -> Callable[[str], bool]:
    """An owner-liveness check that already knows its answer (asked on the loop before)."""
    return lambda _owner: alive
