"""The LMDB log: one environment per store directory, shared by every runtime in a process.

Databases inside the environment:

    log        position (u64 BE)      -> sealed record (see framing.py): the only truth
    index      run_id NUL seq (u64 BE) -> position (u64 BE) + chain hash, for records up to
                                        meta["indexed"]; a cache of the log, see below
    leases     run_id                 -> Lease(owner, epoch)
    snapshots  run_id                 -> msgpack [state_version, seq, state bytes]
    meta       name                   -> bytes (checkpoints and store-wide facts)

The log's keys grow monotonically, so every commit lands at its end; positions are read
from the last key inside the write transaction, which keeps them gapless even when
several processes append to the same store (LMDB serialises their write transactions).

The per-run index is materialised lazily. A step's durable commit writes only log pages
(each extra database a commit touches costs ~50 us of fsync'd pages here); every
``INDEX_EVERY`` records, index entries for the unindexed tail and the new high-water mark
``meta["indexed"]`` are written together in one transaction. Records past the mark (the
tail) are found by scanning the log from the mark: incrementally by each process's write
path (so run heads stay exact when several processes append) and by readers. Nothing
needs repair after a crash: the tail is simply scanned again.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import struct
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import lmdb
import msgspec

from foldloop._log import get_logger
from foldloop.errors import (
    ApprovalError,
    ConcurrencyError,
    ConfigError,
    CorruptRecord,
    RunLocked,
    StoreError,
)
from foldloop.events.catalogue import KnownEvent
from foldloop.events.codec import (
    DecodeFailure,
    decode_event,
    encode_event,
    has_upcasters,
    schema_version_of,
)
from foldloop.events.recorded import Recorded
from foldloop.store.approvals import ApprovalRecord, approval_key
from foldloop.store.checkpoints import Checkpoint, decode_checkpoint, encode_checkpoint
from foldloop.store.framing import (
    GENESIS,
    Frame,
    Head,
    Lease,
    SealBroken,
    chain_hash,
    decode_frame,
    decode_typed_frame,
    head_from_index,
    index_key,
    index_prefix,
    pack_position,
    peek_run_seq,
    seal,
    unpack_position,
    unseal,
)
from foldloop.store.owners import owner_alive
from foldloop.store.preflight import check_or_create_dir, write_marker
from foldloop.store.writer import WriteOp, Writer

__all__ = ["DEFAULT_MAP_SIZE", "LmdbStore", "MAX_MAP_SIZE", "Payload", "WriteTxn", "open_store"]

log = get_logger(__name__)

T = TypeVar("T")
DEFAULT_MAP_SIZE = 256 << 20
MAX_MAP_SIZE = 1 << 40
_LAST = b"\xff" * 8
_SEQ = struct.Struct(">Q")
_INDEXED = b"indexed"
_FRAME_AT = 4 + 16  # crc + previous hash precede the frame
MAX_EVENT_BYTES = 1 << 20
"""The largest encoded event the log accepts (tool results are capped well below it)."""
INDEX_EVERY = 256
"""Unindexed records that trigger writing their index entries (in the next commit)."""

TailEntry = tuple[str, int, int, bytes]
"""(run_id, seq, position, chain hash) of a record past the index's high-water mark."""

Payload = tuple[KnownEvent, bytes, int]
"""An event ready to append: the event, its encoded bytes, and its ``at`` (unix ns)."""
_LEASE = msgspec.msgpack.Decoder(Lease)
_APPROVAL = msgspec.msgpack.Decoder(ApprovalRecord)
_ENC = msgspec.msgpack.Encoder()
_SNAPSHOT = msgspec.msgpack.Decoder(tuple[int, int, bytes, int])


class _SharedExclusive:
    """Readers share, a map resize excludes them (LMDB forbids resizing under open txns).

    Every transaction takes the shared side, so it is two plain lock round trips; the rare
    exclusive side (a map resize) waits on a condition until the readers drain.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._drained = threading.Condition(self._lock)
        self._readers = 0
        self._writer = False

    def acquire_shared(self) -> None:
        with self._lock:
            while self._writer:
                self._drained.wait()
            self._readers += 1

    def release_shared(self) -> None:
        with self._lock:
            self._readers -= 1
            if self._writer and not self._readers:
                self._drained.notify_all()

    @contextlib.contextmanager
    def shared(self) -> Iterator[None]:
        self.acquire_shared()
        try:
            yield
        finally:
            self.release_shared()

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._lock:
            while self._writer:
                self._drained.wait()
            self._writer = True
            while self._readers:
                self._drained.wait()
        try:
            yield
        finally:
            with self._lock:
                self._writer = False
                self._drained.notify_all()


class WriteTxn:
    """What a write op sees: one LMDB write transaction plus the store's rules."""

    def __init__(self, store: LmdbStore) -> None:
        self.store = store
        self._resize = store._resize
        self._resize.acquire_shared()
        try:
            self.txn = store._begin(write=True)
        except BaseException:
            self._resize.release_shared()
            raise
        self.appended: list[Recorded] = []
        try:
            last = self.txn.cursor(db=store._log)
            self._next = unpack_position(last.key()) + 1 if last.last() else 1
            store._sync_tail(self.txn)
        except BaseException:
            self.txn.abort()
            self._resize.release_shared()
            raise
        self._heads: dict[str, Head] = {}
        self._new: list[TailEntry] = []
        self._force_index = False

    def index_now(self) -> None:
        """Write the tail's index entries in this transaction (used on close)."""
        self._force_index = True

    def commit(self) -> None:
        store = self.store
        try:
            pending = len(store._tail) + len(self._new)
            indexed = pending and (pending >= store.index_every or self._force_index)
            if indexed:
                put, index_db = self.txn.put, store._index
                for run_id, seq, position, chain in (*store._tail, *self._new):
                    put(index_key(run_id, seq), pack_position(position) + chain, db=index_db)
                self.txn.put(_INDEXED, pack_position(self._next - 1), db=store._meta)
            self.txn.commit()
            if indexed:
                store._reset_tail(self._next - 1)
            elif self._new:
                store._tail.extend(self._new)
                store._tail_heads.update(self._heads)
                store._tail_scanned = self._next - 1
        finally:
            self._resize.release_shared()

    def abort(self) -> None:
        try:
            self.txn.abort()
        finally:
            self._resize.release_shared()

    # -- reads inside the transaction ----------------------------------------------------

    def head(self, run_id: str) -> Head:
        head = self._heads.get(run_id) or self.store._tail_heads.get(run_id)
        if head is not None:
            return head
        return last_index_entry(self.txn.cursor(db=self.store._index), run_id)

    def lease(self, run_id: str) -> Lease | None:
        raw = self.txn.get(run_id.encode(), db=self.store._leases)
        return None if raw is None else _LEASE.decode(raw)

    # -- writes --------------------------------------------------------------------------

    def check_lease(self, run_id: str, owner: str, epoch: int) -> None:
        lease = self.lease(run_id)
        if lease is None or lease.owner != owner or lease.epoch != epoch:
            now = "nobody" if lease is None or not lease.owner else f"owner {lease.owner}"
            held = 0 if lease is None else lease.epoch
            raise RunLocked(
                f"run {run_id!r} is now driven by {now} (epoch {held}); this runtime held "
                f"epoch {epoch} and was fenced off, so its append was refused"
            )

    def append(
        self,
        run_id: str,
        payloads: Sequence[Payload],
        *,
        expected_seq: int,
        owner: str | None = None,
        epoch: int | None = None,
        records: bool = True,
    ) -> list[Recorded]:
        """Append encoded events after ``expected_seq``; check everything before writing.

        Returns the Recorded events unless ``records`` is False and nobody listens to
        commits (the step path needs neither, and skips building them).
        """
        head = self.head(run_id)
        if head.seq != expected_seq:
            raise ConcurrencyError(run_id, expected_seq, head.seq)
        if owner is not None and epoch is not None:
            self.check_lease(run_id, owner, epoch)
        put, log_db, new = self.txn.put, self.store._log, self._new
        keep = records or bool(self.store._listeners)
        prev = head.hash
        seq = head.seq
        out: list[Recorded] = []
        for event, raw, at in payloads:
            seq += 1
            position = self._next
            self._next += 1
            frame = Frame(run_id, seq, position, at, msgspec.Raw(raw), schema_version_of(event))
            value, prev = seal(frame, prev)
            put(pack_position(position), value, db=log_db, append=True)
            new.append((run_id, seq, position, prev))
            if keep:
                out.append(Recorded(run_id=run_id, seq=seq, position=position, at=at, event=event))
        self._heads[run_id] = Head(seq, prev)
        self.appended.extend(out)
        return out

    def put_lease(self, run_id: str, lease: Lease) -> None:
        self.txn.put(run_id.encode(), _ENC.encode(lease), db=self.store._leases)

    def acquire_lease(self, run_id: str, owner: str) -> int:
        """Take the run for ``owner`` unless a live owner holds it; returns the new epoch."""
        lease = self.lease(run_id)
        if (
            lease is not None
            and lease.owner
            and lease.owner != owner
            and owner_alive(self.store.owners_dir, lease.owner)
        ):
            raise RunLocked(
                f"run {run_id!r} is driven by a live runtime (owner {lease.owner}, epoch "
                f"{lease.epoch}); stop that runtime or let it finish first"
            )
        epoch = (lease.epoch if lease is not None else 0) + 1
        self.put_lease(run_id, Lease(owner, epoch))
        return epoch

    def release_lease(self, run_id: str, owner: str, epoch: int) -> bool:
        lease = self.lease(run_id)
        if lease is None or lease.owner != owner or lease.epoch != epoch:
            return False
        self.put_lease(run_id, Lease("", epoch))
        return True

    # -- approvals ---------------------------------------------------------------------------

    def approval(self, run_id: str, call_id: str) -> ApprovalRecord | None:
        raw = self.txn.get(approval_key(run_id, call_id), db=self.store._approvals)
        return None if raw is None else _APPROVAL.decode(raw)

    def put_approval(self, record: ApprovalRecord) -> None:
        key = approval_key(record.run_id, record.call_id)
        self.txn.put(key, _ENC.encode(record), db=self.store._approvals)
        self.txn.put(record.token_digest.encode(), key, db=self.store._tokens)
        if record.applied:
            self.txn.delete(key, db=self.store._open)
        else:
            # status and deadline beside the key: the poller finds what is due without
            # decoding every pending request
            due = record.status.encode()[:1] + pack_position(record.expires_at)
            self.txn.put(key, due, db=self.store._open)

    def find_approval(self, token_digest: str) -> ApprovalRecord | None:
        key = self.txn.get(token_digest.encode(), db=self.store._tokens)
        if key is None:
            return None
        raw = self.txn.get(key, db=self.store._approvals)
        return None if raw is None else _APPROVAL.decode(raw)

    def decide_approval(
        self, record: ApprovalRecord, *, approved: bool, by: str, note: str, now: int
    ) -> ApprovalRecord:
        """Record a decision if the request is still pending and unexpired.

        Returns the stored record: decided, or marked expired (the caller reports that).
        Raises ApprovalError, writing nothing, when the request was already decided.
        """
        current = self.approval(record.run_id, record.call_id)
        if current is None or current.token_digest != record.token_digest:
            raise ApprovalError(
                f"no such approval request for run {record.run_id!r} call {record.call_id!r}"
            )
        if current.status != "pending":
            raise ApprovalError(
                f"the approval of run {current.run_id!r} call {current.call_id!r} was already "
                f"{current.status}"
                + (f" by {current.by!r}" if current.by else "")
                + (f" at {_iso(current.decided_at)}" if current.decided_at else "")
                + (f" (seq {current.applied_seq} of the run)" if current.applied_seq else "")
            )
        if now >= current.expires_at:
            decided = msgspec.structs.replace(current, status="expired", decided_at=now)
        else:
            decided = msgspec.structs.replace(
                current,
                status="approved" if approved else "denied",
                by=by,
                note=note,
                decided_at=now,
            )
        self.put_approval(decided)
        return decided

    def mark_applied(self, run_id: str, call_id: str, seq: int = 0) -> None:
        current = self.approval(run_id, call_id)
        if current is not None and not current.applied:
            self.put_approval(msgspec.structs.replace(current, applied=True, applied_seq=seq))

    def snapshot_chunks(self, run_id: str) -> int:
        """How many history chunks the run's stored snapshot has (0 without one)."""
        raw = self.txn.get(run_id.encode(), db=self.store._snapshots)
        if raw is None:
            return 0
        try:
            return _SNAPSHOT.decode(raw)[3]
        except msgspec.MsgspecError:
            return 0

    def put_snapshot(
        self,
        run_id: str,
        state_version: int,
        seq: int,
        state: bytes,
        *,
        new_chunks: Sequence[bytes] = (),
        first_chunk: int = 0,
    ) -> None:
        """Store a snapshot; ``new_chunks`` are the history chunks from ``first_chunk`` on
        (the ones before are stored already and never change)."""
        key = run_id.encode()
        for i, chunk in enumerate(new_chunks, start=first_chunk):
            self.txn.put(key + b"\0" + i.to_bytes(4, "big"), chunk, db=self.store._chunks)
        count = first_chunk + len(new_chunks)
        self.txn.put(key, _ENC.encode((state_version, seq, state, count)), db=self.store._snapshots)

    def put_meta(self, key: str, value: bytes) -> None:
        self.txn.put(key.encode(), value, db=self.store._meta)

    def put_checkpoint(self, checkpoint: Checkpoint, *, advance: bool = True) -> bool:
        """Store a projection checkpoint; with ``advance``, only if it is not behind the
        stored one (same version). Returns whether it was written."""
        key = checkpoint.name.encode()
        db = self.store._checkpoints
        if advance:
            raw = self.txn.get(key, db=db)
            if raw is not None:
                try:
                    current = decode_checkpoint(raw)
                except msgspec.DecodeError:
                    current = None
                if (
                    current is not None
                    and current.version == checkpoint.version
                    and current.position > checkpoint.position
                ):
                    return False
        self.txn.put(key, encode_checkpoint(checkpoint), db=db)
        return True

    def delete_checkpoint(self, name: str) -> None:
        self.txn.delete(name.encode(), db=self.store._checkpoints)


class LmdbStore:
    """An open store directory. Use ``open_store``: one instance per directory per process."""

    def __init__(
        self,
        path: Path,
        *,
        create: bool,
        map_size: int,
        readonly: bool = False,
        index_every: int = INDEX_EVERY,
    ) -> None:
        self.path = path
        self.index_every = index_every
        self.owners_dir = path / "owners"
        self.readonly = readonly
        new = check_or_create_dir(path, create=create and not readonly)
        try:
            self.env = lmdb.open(
                str(path),
                map_size=map_size,
                max_dbs=16,
                max_readers=1024,
                subdir=True,
                sync=True,
                metasync=True,
                writemap=False,
                map_async=False,
                readahead=False,
                meminit=True,
                lock=True,
                create=new,
                mode=0o600,
                max_spare_txns=0,
            )
        except lmdb.Error as exc:
            raise StoreError(f"cannot open the store at {str(path)!r}: {exc}") from None
        try:
            self.env.reader_check()
            self._log = self.env.open_db(b"log", create=True)
            self._index = self.env.open_db(b"index", create=True)
            self._leases = self.env.open_db(b"leases", create=True)
            self._snapshots = self.env.open_db(b"snapshots", create=True)
            self._meta = self.env.open_db(b"meta", create=True)
            self._approvals = self.env.open_db(b"approvals", create=True)
            self._tokens = self.env.open_db(b"tokens", create=True)
            self._open = self.env.open_db(b"approvals_open", create=True)
            self._checkpoints = self.env.open_db(b"checkpoints", create=True)
            self._chunks = self.env.open_db(b"history_chunks", create=True)
        except lmdb.Error as exc:
            self.env.close()
            raise StoreError(f"cannot open the store at {str(path)!r}: {exc}") from None
        if new:
            write_marker(path)
        self.owners_dir.mkdir(mode=0o700, exist_ok=True)
        self._resize = _SharedExclusive()
        # The write path's view of the unindexed tail (touched only inside write txns,
        # which this process runs one at a time).
        self._tail_base = -1
        self._tail_scanned = 0
        self._tail: list[TailEntry] = []
        self._tail_heads: dict[str, Head] = {}
        self._listeners: list[Callable[[list[Recorded]], None]] = []
        self._refs = 0
        self.writer = Writer(lambda: WriteTxn(self), self._grow, self._notify)

    # -- plumbing ------------------------------------------------------------------------

    def _begin(self, *, write: bool = False) -> Any:
        try:
            return self.env.begin(write=write, buffers=False)
        except lmdb.ReadersFullError:
            # Slots of SIGKILLed readers linger until someone checks: clear them, retry once.
            self.env.reader_check()
            return self.env.begin(write=write, buffers=False)

    def _grow(self, error: Exception) -> None:
        """Called by the writer on MapFullError (grow) or MapResizedError (adopt)."""
        with self._resize.exclusive():
            if isinstance(error, lmdb.MapResizedError):
                # Another process grew the map: adopt its size (no txn of ours is open).
                self.env.set_mapsize(0)
                return
            size = self.env.info()["map_size"]
            if size >= MAX_MAP_SIZE:
                raise StoreError(f"the store reached its map size cap of {MAX_MAP_SIZE:,} bytes")
            self.env.set_mapsize(min(size * 2, MAX_MAP_SIZE))
        log.info("map_grown", path=str(self.path), map_size=min(size * 2, MAX_MAP_SIZE))

    def _notify(self, records: list[Recorded]) -> None:
        for listener in list(self._listeners):
            try:
                listener(records)
            except Exception:
                log.exception("commit_listener_failed")

    def add_listener(self, fn: Callable[[list[Recorded]], None]) -> Callable[[], None]:
        """Call ``fn`` (on the writer thread; keep it quick) with every batch this process
        commits. Returns a function that removes the listener."""
        self._listeners.append(fn)
        return lambda: self._listeners.remove(fn) if fn in self._listeners else None

    def read_txn(self, fn: Callable[[Any], T]) -> T:
        """Run ``fn`` inside a short read transaction."""
        while True:
            self._resize.acquire_shared()
            try:
                try:
                    txn = self._begin()
                except lmdb.MapResizedError as exc:
                    resized: Exception = exc
                else:
                    try:
                        return fn(txn)
                    finally:
                        txn.abort()
            finally:
                self._resize.release_shared()
            self._grow(resized)

    # -- the unindexed tail ----------------------------------------------------------------

    def _indexed(self, txn: Any) -> int:
        raw = txn.get(_INDEXED, db=self._meta)
        return 0 if raw is None else unpack_position(raw)

    def _reset_tail(self, base: int) -> None:
        self._tail_base = self._tail_scanned = base
        self._tail = []
        self._tail_heads = {}

    def _sync_tail(self, txn: Any) -> None:
        """Bring the write path's tail cache up to date with what is committed."""
        base = self._indexed(txn)
        if base != self._tail_base:
            self._reset_tail(base)
        for position, value, run_id, seq in self._scan_tail(txn, self._tail_scanned):
            chain = chain_hash(value)
            self._tail.append((run_id, seq, position, chain))
            self._tail_heads[run_id] = Head(seq, chain)
            self._tail_scanned = position

    def _scan_tail(self, txn: Any, after: int) -> Iterator[tuple[int, bytes, str, int]]:
        """(position, value, run_id, seq) of every record past ``after``.

        Run and seq are read from the frame even when its checksum fails, so a damaged
        record is reported to its own run's readers (``_decode`` checks the crc) and the
        write path keeps exact heads; only a record too damaged to place stops the scan.
        """
        cur = txn.cursor(db=self._log)
        if not cur.set_range(pack_position(after + 1)):
            return
        for key, value in cur:
            try:
                where = peek_run_seq(bytes(value[_FRAME_AT:]))
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                where_ = f"the record at log position {unpack_position(key)}"
                raise CorruptRecord("?", 0, f"{where_} is unreadable ({exc})") from None
            yield unpack_position(key), value, where.run_id, where.seq

    # -- writes --------------------------------------------------------------------------

    def submit(
        self,
        fn: Callable[[WriteTxn], T],
        *,
        durable: bool = True,
        callback: Callable[[WriteOp[T]], None] | None = None,
    ) -> WriteOp[T]:
        """Queue a write op for the group-commit writer."""
        if self.readonly:
            raise StoreError(f"the store at {str(self.path)!r} was opened read-only")
        return self.writer.submit(WriteOp(fn, durable=durable, callback=callback))

    def append(
        self,
        run_id: str,
        events: Sequence[KnownEvent],
        *,
        expected_seq: int,
        at: int,
        owner: str | None = None,
        epoch: int | None = None,
    ) -> list[Recorded]:
        """Append events atomically after ``expected_seq`` and wait until they are durable."""
        payloads = encode_all(events, at)
        return self.submit(
            lambda w: w.append(
                run_id, payloads, expected_seq=expected_seq, owner=owner, epoch=epoch
            )
        ).wait()

    # -- reads ---------------------------------------------------------------------------

    def head(self, run_id: str) -> int:
        """The run's last seq (0 if the run does not exist)."""

        def get(txn: Any) -> int:
            seq = last_index_entry(txn.cursor(db=self._index), run_id).seq
            for _pos, _value, rid, s in self._scan_tail(txn, self._indexed(txn)):
                if rid == run_id:
                    seq = s
            return seq

        return self.read_txn(get)

    def read(self, run_id: str, from_seq: int = 1, to_seq: int | None = None) -> list[Recorded]:
        """The run's records from ``from_seq`` (inclusive) to ``to_seq`` (inclusive)."""

        def get(txn: Any) -> list[Recorded]:
            prefix = index_prefix(run_id)
            cur = txn.cursor(db=self._index)
            out: list[Recorded] = []
            log_db = self._log
            if cur.set_range(index_key(run_id, max(1, from_seq))):
                for key, pos in cur:
                    if not key.startswith(prefix):
                        break
                    seq = int.from_bytes(key[-8:], "big")
                    if to_seq is not None and seq > to_seq:
                        return out
                    out.append(self._decode(txn.get(pos[:8], db=log_db), run_id, seq))
            for _pos, value, rid, seq in self._scan_tail(txn, self._indexed(txn)):
                if rid == run_id and seq >= from_seq and (to_seq is None or seq <= to_seq):
                    out.append(self._decode(value, run_id, seq))
            return out

        return self.read_txn(get)

    def read_all(self, from_position: int = 1, limit: int | None = None) -> list[Recorded]:
        """Records across the whole log in position order, from ``from_position``."""

        def get(txn: Any) -> list[Recorded]:
            cur = txn.cursor(db=self._log)
            out: list[Recorded] = []
            if not cur.set_range(pack_position(max(1, from_position))):
                return out
            for _key, value in cur:
                out.append(self._decode(value, None, None))
                if limit is not None and len(out) >= limit:
                    break
            return out

        return self.read_txn(get)

    def last_position(self) -> int:
        """Position of the newest record in the log (0 if empty)."""

        def get(txn: Any) -> int:
            cur = txn.cursor(db=self._log)
            return unpack_position(cur.key()) if cur.last() else 0

        return self.read_txn(get)

    def run_ids(self) -> list[str]:
        """Every run in the store, sorted by id."""

        def walk(txn: Any) -> list[str]:
            cur = txn.cursor(db=self._index)
            out: set[str] = set()
            found = cur.first()
            while found:
                run_id = bytes(cur.key()[:-9]).decode()
                out.add(run_id)
                found = cur.set_range(index_prefix(run_id) + _LAST)
            out.update(rid for _p, _v, rid, _s in self._scan_tail(txn, self._indexed(txn)))
            return sorted(out)

        return self.read_txn(walk)

    def lease(self, run_id: str) -> Lease | None:
        """Who holds the run now (owner '' when nobody)."""

        def get(txn: Any) -> Lease | None:
            raw = txn.get(run_id.encode(), db=self._leases)
            return None if raw is None else _LEASE.decode(raw)

        return self.read_txn(get)

    def snapshot(self, run_id: str) -> tuple[int, int, bytes, list[bytes]] | None:
        """(state_version, seq, state bytes, history chunks) of the run's latest snapshot."""

        def get(txn: Any) -> tuple[int, int, bytes, list[bytes]] | None:
            key = run_id.encode()
            raw = txn.get(key, db=self._snapshots)
            if raw is None:
                return None
            try:
                version, seq, state, count = _SNAPSHOT.decode(raw)
            except msgspec.MsgspecError:
                return None  # an older snapshot format: a cache, rebuilt from the log
            chunks = []
            for i in range(count):
                chunk = txn.get(key + b"\0" + i.to_bytes(4, "big"), db=self._chunks)
                if chunk is None:
                    return None
                chunks.append(bytes(chunk))
            return version, seq, state, chunks

        return self.read_txn(get)

    def approvals(self) -> list[ApprovalRecord]:
        """Every approval record (pending, decided, expired; applied to the log or not)."""
        return self.read_txn(
            lambda txn: [_APPROVAL.decode(v) for _k, v in txn.cursor(db=self._approvals)]
        )

    def open_approvals(self) -> list[ApprovalRecord]:
        """Approval records not yet applied to their run's log (pending or freshly decided)."""

        def get(txn: Any) -> list[ApprovalRecord]:
            out = []
            for key, _ in txn.cursor(db=self._open):
                raw = txn.get(key, db=self._approvals)
                if raw is not None:
                    out.append(_APPROVAL.decode(raw))
            return out

        return self.read_txn(get)

    def due_approvals(self, now: int) -> list[ApprovalRecord]:
        """Open requests that need carrying into their run: decided, or past their deadline."""

        def get(txn: Any) -> list[ApprovalRecord]:
            out = []
            for key, due in txn.cursor(db=self._open):
                if due[:1] == b"p" and unpack_position(due[1:9]) > now:
                    continue
                raw = txn.get(key, db=self._approvals)
                if raw is not None:
                    out.append(_APPROVAL.decode(raw))
            return out

        return self.read_txn(get)

    def approval_by_token(self, token_digest: str) -> ApprovalRecord | None:
        """The approval record a token's digest belongs to."""

        def get(txn: Any) -> ApprovalRecord | None:
            key = txn.get(token_digest.encode(), db=self._tokens)
            raw = None if key is None else txn.get(key, db=self._approvals)
            return None if raw is None else _APPROVAL.decode(raw)

        return self.read_txn(get)

    def approval(self, run_id: str, call_id: str) -> ApprovalRecord | None:
        """One approval record."""

        def get(txn: Any) -> ApprovalRecord | None:
            raw = txn.get(approval_key(run_id, call_id), db=self._approvals)
            return None if raw is None else _APPROVAL.decode(raw)

        return self.read_txn(get)

    def meta(self, key: str) -> bytes | None:
        """A store-wide value (checkpoints and the like)."""

        def get(txn: Any) -> bytes | None:
            raw = txn.get(key.encode(), db=self._meta)
            return None if raw is None else bytes(raw)

        return self.read_txn(get)

    def checkpoint(self, name: str) -> Checkpoint | None:
        """The stored checkpoint of projection ``name`` (None if it has none).

        Raises StoreError when the stored bytes are not a checkpoint."""

        def get(txn: Any) -> bytes | None:
            raw = txn.get(name.encode(), db=self._checkpoints)
            return None if raw is None else bytes(raw)

        raw = self.read_txn(get)
        if raw is None:
            return None
        try:
            return decode_checkpoint(raw)
        except msgspec.DecodeError as exc:
            raise StoreError(
                f"the checkpoint of projection {name!r} is unreadable ({exc}); "
                "re-attach it with reset=True to rebuild it from the log"
            ) from None

    def checkpoints(self) -> list[Checkpoint]:
        """Every stored projection checkpoint that decodes, by name."""

        def walk(txn: Any) -> list[Checkpoint]:
            out = []
            for _key, raw in txn.cursor(db=self._checkpoints):
                try:
                    out.append(decode_checkpoint(raw))
                except msgspec.DecodeError:
                    continue
            return out

        return self.read_txn(walk)

    def owner_alive(self, owner: str) -> bool:
        """True if a live runtime holds ``owner``'s lock."""
        return owner_alive(self.owners_dir, owner)

    def _decode(self, value: bytes | None, run_id: str | None, seq: int | None) -> Recorded:
        rid, s = run_id or "?", seq or 0
        if value is None:
            raise CorruptRecord(rid, s, "the index points at a record that is missing")
        if not has_upcasters():
            try:
                _prev, body = unseal(value)
                typed = decode_typed_frame(body)
            except SealBroken as exc:
                raise CorruptRecord(rid, s, str(exc)) from None
            except (msgspec.DecodeError, msgspec.ValidationError):
                pass  # an unknown tag or a bad record: the careful path below says which
            else:
                if typed.v == 1 and (
                    run_id is None or (typed.run_id == run_id and typed.seq == seq)
                ):
                    return Recorded(
                        run_id=typed.run_id,
                        seq=typed.seq,
                        position=typed.position,
                        at=typed.at,
                        event=typed.event,
                    )
        try:
            _prev, body = unseal(value)
            frame = decode_frame(body)
        except (SealBroken, msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise CorruptRecord(rid, s, str(exc)) from None
        if run_id is not None and (frame.run_id != run_id or frame.seq != seq):
            raise CorruptRecord(rid, s, f"the record holds {frame.run_id!r} seq {frame.seq}")
        try:
            event = decode_event(bytes(frame.event), frame.v)
        except DecodeFailure as exc:
            raise CorruptRecord(frame.run_id, frame.seq, f"undecodable event: {exc}") from None
        return Recorded(
            run_id=frame.run_id, seq=frame.seq, position=frame.position, at=frame.at, event=event
        )

    def verify_chain(self, run_id: str) -> int:
        """Walk the run's hash chain and checksums; return its length or raise CorruptRecord."""

        def walk(txn: Any) -> int:
            prefix = index_prefix(run_id)
            cur = txn.cursor(db=self._index)
            prev = GENESIS
            expected = 0
            if cur.set_range(prefix):
                for key, pos in cur:
                    if not key.startswith(prefix):
                        break
                    expected += 1
                    seq = int.from_bytes(key[-8:], "big")
                    if seq != expected:
                        raise CorruptRecord(run_id, expected, f"seq gap: next stored is {seq}")
                    value = txn.get(pos[:8], db=self._log)
                    self._decode(value, run_id, seq)
                    stored_prev, _ = unseal(value)
                    if stored_prev != prev:
                        raise CorruptRecord(run_id, seq, "hash chain broken (a record was altered)")
                    prev = chain_hash(value)
                    if bytes(pos[8:]) != prev:
                        raise CorruptRecord(run_id, seq, "index hash does not match the record")
            for _position, value, rid, seq in self._scan_tail(txn, self._indexed(txn)):
                if rid != run_id:
                    continue
                expected += 1
                if seq != expected:
                    raise CorruptRecord(run_id, expected, f"seq gap: next stored is {seq}")
                self._decode(value, run_id, seq)
                stored_prev, _ = unseal(value)
                if stored_prev != prev:
                    raise CorruptRecord(run_id, seq, "hash chain broken (a record was altered)")
                prev = chain_hash(value)
            return expected

        return self.read_txn(walk)

    # -- lifecycle -----------------------------------------------------------------------

    @property
    def map_size(self) -> int:
        """Current LMDB map size in bytes."""
        return int(self.env.info()["map_size"])

    def _close(self) -> None:
        # Index the tail so that the next opener (often a read-only CLI) scans nothing.
        self.writer.submit(WriteOp(lambda w: w.index_now(), durable=False))
        self.writer.close()
        with self._resize.exclusive():
            self.env.close()

    def close(self) -> None:
        """Release this reference; the last one commits pending writes and closes LMDB."""
        with _REGISTRY_LOCK:
            self._refs -= 1
            if self._refs > 0:
                return
            _REGISTRY.pop(str(self.path), None)
        self._close()


def _iso(ns: int) -> str:
    return datetime.datetime.fromtimestamp(ns / 1e9, tz=datetime.UTC).isoformat(timespec="seconds")


def last_index_entry(cur: Any, run_id: str) -> Head:
    """The run's head: its last index entry (seq 0 and the genesis hash when absent)."""
    prefix = index_prefix(run_id)
    found = cur.prev() if cur.set_range(prefix + _LAST) else cur.last()
    if found and cur.key().startswith(prefix):
        return head_from_index(cur.key(), cur.value())
    return Head(0, GENESIS)


def encode_all(events: Sequence[KnownEvent], at: int) -> list[Payload]:
    """Encode events before queueing them, so a bad payload fails in the caller, unwritten."""
    out: list[Payload] = []
    for event in events:
        try:
            raw = encode_event(event)
        except (msgspec.EncodeError, OverflowError, UnicodeEncodeError, TypeError) as exc:
            raise ConfigError(
                f"cannot store a {event.type} event: {exc}; integers must fit in 64 bits and "
                "text must be valid unicode (nothing was written)"
            ) from None
        if len(raw) > MAX_EVENT_BYTES:
            raise ConfigError(
                f"a {event.type} event of {len(raw):,} bytes is over the {MAX_EVENT_BYTES:,}-byte "
                "limit (nothing was written); keep large data outside the log and record a "
                "reference to it"
            )
        out.append((event, raw, at))
    return out


_REGISTRY: dict[str, LmdbStore] = {}
_REGISTRY_LOCK = threading.Lock()


def open_store(
    path: str | os.PathLike[str],
    *,
    create: bool = True,
    map_size: int = DEFAULT_MAP_SIZE,
    index_every: int = INDEX_EVERY,
) -> LmdbStore:
    """Open (or share) the store at ``path``.

    LMDB forbids opening one environment twice in a process, so every open of the same
    directory in this process shares one LmdbStore; ``close`` releases a reference.
    ``index_every`` (tests use small values) is how many unindexed records trigger
    writing their index entries.
    """
    if (
        not isinstance(map_size, int)
        or isinstance(map_size, bool)
        or not (1 << 20 <= map_size <= MAX_MAP_SIZE)
    ):
        raise ConfigError(
            f"map_size must be an int of bytes between 1 MiB and {MAX_MAP_SIZE:,}; got {map_size!r}"
        )
    real = Path(os.path.realpath(os.fspath(path)))
    with _REGISTRY_LOCK:
        store = _REGISTRY.get(str(real))
        if store is None:
            store = LmdbStore(real, create=create, map_size=map_size, index_every=index_every)
            _REGISTRY[str(real)] = store
        store._refs += 1
        return store
