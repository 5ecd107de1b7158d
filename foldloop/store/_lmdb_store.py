"""The LMDB log: one environment per store directory, shared by every runtime in a process.

Databases inside the environment:

    log             position (u64 BE)       -> one append's events, sealed (framing.py): the
                                               only truth; keyed by its first event's position
    index           run_id NUL seq (u64 BE) -> where a stretch of the run's events sits, and
                                               the chain hash of its last value, for events up
                                               to meta["indexed"]; a cache of the log, see below
    run_numbers     run_id                  -> its number (u32 BE), given on its first append
    run_ids         number (u32 BE)         -> run_id: stored values name runs by number
    leases          run_id                  -> Lease(owner, epoch)
    snapshots       run_id                  -> msgpack [state_version, seq, state, chunks]
    history_chunks  run_id NUL n (u32 BE)   -> a full chunk of the run's messages (snapshot.py)
    approvals, tokens, approvals_open       -> approval records and their lookups
    checkpoints     projection name         -> Checkpoint(position, state, failure)
    meta            name                    -> bytes (store-wide facts)

The log's keys grow monotonically, so every commit lands at its end; positions are read
from the last key inside the write transaction, which keeps them gapless even when
several processes append to the same store (LMDB serialises their write transactions).

The per-run index is materialised lazily. A step's durable commit writes only log pages
(each extra database a commit touches costs fsync'd pages); every ``INDEX_EVERY`` records,
index entries for the unindexed tail and the new high-water mark ``meta["indexed"]`` are
written together in one transaction. Records past the mark (the tail, ``tail.py``) are
found by scanning the log from the mark. Nothing needs repair after a crash: the tail is
simply scanned again.

``LmdbStore`` wires the parts, each in a module of its own: the environment and its
resize lock (``mapped``), run numbers, the tail cache, decoding stored values
(``stored``), reads (``log_reader``), the side tables (``tables``), verification
(``verify``), the write transaction (``write_txn``) and the group-commit writer
(``writer``); it implements the store port (``port.EventStore``) with them.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, TypeVar

import lmdb

from foldloop._log import get_logger
from foldloop.errors import ConcurrencyError, ConfigError, StoreAccessError, StoreError
from foldloop.events._recorded import AnyEvent, Recorded
from foldloop.store._approvals import ApprovalChanges, ApprovalRecord
from foldloop.store._checkpoints import Checkpoint
from foldloop.store._create import prepare_dir
from foldloop.store._env import lmdb_failure, open_databases, open_env
from foldloop.store._framing import Lease
from foldloop.store._layout import INDEX_EVERY
from foldloop.store._log_reader import EVENT_SPAN, LogReader
from foldloop.store._mapped import DEFAULT_MAP_SIZE, MAX_MAP_SIZE, MappedEnv
from foldloop.store._owners import OwnerLock, owner_alive
from foldloop.store._payloads import MAX_EVENT_BYTES, Payload, encode_all
from foldloop.store._port import EventStore, Listener, Pending, Snapshot
from foldloop.store._rules import check_expirable
from foldloop.store._run_numbers import RunNumbers
from foldloop.store._stored import StoredValues
from foldloop.store._tables import SideTables
from foldloop.store._tail import TailCache
from foldloop.store._verify import verify_chain
from foldloop.store._write_txn import Append, WriteParts, WriteTxn
from foldloop.store._writer import WriteOp, Writer

__all__ = [
    "DEFAULT_MAP_SIZE",
    "INDEX_EVERY",
    "LmdbStore",
    "MAX_EVENT_BYTES",
    "MAX_MAP_SIZE",
    "Payload",
    "WriteTxn",
    "encode_all",
    "open_store",
]

log = get_logger(__name__)

T = TypeVar("T")


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
        self.owners_dir = path / "owners"
        self.readonly = readonly
        prepare_dir(path, create=create and not readonly, map_size=map_size)
        self.env = open_env(path, map_size=map_size)
        try:
            self.env.reader_check()
            self.tables = open_databases(self.env)
        except lmdb.Error as exc:
            self.env.close()
            raise lmdb_failure(path, "open", exc) from None
        try:
            self.owners_dir.mkdir(mode=0o700, exist_ok=True)
        except OSError as exc:
            self.env.close()
            raise StoreAccessError(
                f"cannot make {str(self.owners_dir)!r}, the directory where runtimes keep "
                f"their owner locks ({exc.strerror}): move what is there away, or fix the "
                "store directory's permissions"
            ) from None
        self.mapped = MappedEnv(self.env, path)
        self.numbers = RunNumbers(self.tables)
        self.tail = TailCache()
        self.values = StoredValues(self.numbers)
        self.reader = LogReader(self.tables, self.numbers, self.values, self.tail)
        self.side = SideTables(self.tables)
        self._listeners: list[Listener] = []
        self._refs = 0
        self._pid = os.getpid()
        self._closed = False
        parts = WriteParts(
            env=self.mapped,
            tables=self.tables,
            reader=self.reader,
            tail=self.tail,
            numbers=self.numbers,
            side=self.side,
            owner_alive=self.owner_alive,
            index_every=index_every,
            listeners=self._listeners,
        )
        self.writer = Writer(
            lambda: WriteTxn(parts),
            self.mapped.grow,
            self._notify,
            lambda exc: lmdb_failure(
                path, "commit to", exc, then="; nothing of this write was stored, resume the run"
            ),
        )

    @property
    def location(self) -> str:
        """The store's directory."""
        return str(self.path)

    @property
    def max_event_bytes(self) -> int:
        return MAX_EVENT_BYTES

    @property
    def map_size(self) -> int:
        """Current LMDB map size in bytes."""
        return self.mapped.map_size

    def read_txn(self, fn: Callable[[Any], T]) -> T:
        """Run ``fn`` inside a short LMDB read transaction (a failure to read is a
        StoreError). LMDB-only: for tools and tests that look below the port."""
        return self.mapped.read(fn)

    # -- listeners -------------------------------------------------------------------------

    def add_listener(self, fn: Listener) -> Callable[[], None]:
        """Call ``fn`` (on the writer thread; keep it quick) with every batch this process
        commits. Returns a function that removes the listener."""
        self._listeners.append(fn)
        return lambda: self._listeners.remove(fn) if fn in self._listeners else None

    def _notify(self, records: list[Recorded]) -> None:
        for listener in list(self._listeners):
            try:
                listener(records)
            except Exception:
                log.exception("commit_listener_failed")

    # -- writes ----------------------------------------------------------------------------

    def submit(
        self,
        fn: Callable[[WriteTxn], T],
        *,
        durable: bool = True,
        callback: Callable[[WriteOp[T]], None] | None = None,
    ) -> WriteOp[T]:
        """Queue ``fn`` to run inside the group commit's LMDB write transaction.

        LMDB-only, below the port: the port's operations are made of these."""
        if self.readonly:
            raise StoreError(f"the store at {str(self.path)!r} was opened read-only")
        return self.writer.submit(WriteOp(fn, durable=durable, callback=callback))

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
    ) -> WriteOp[list[Recorded]]:
        """Append after ``expected_seq``, fenced by ``lease`` (see ``port.EventStore``)."""
        if release and lease is None:
            raise ConfigError("release=True releases the lease given: pass lease=")
        write = Append(
            run_id,
            payloads,
            expected_seq=expected_seq,
            lease=lease,
            release=release,
            approvals=approvals,
            records=records,
        )
        return self.submit(write, durable=durable, callback=callback)

    def start_run(
        self, run_id: str, payloads: Sequence[Payload], *, owner: str, release: bool = False
    ) -> WriteOp[int]:
        """Take a new run's lease and append its first events (see ``port.EventStore``)."""

        def write(w: WriteTxn) -> int:
            head = w.head(run_id).seq
            if head:
                raise ConcurrencyError(run_id, 0, head)
            epoch = w.acquire_lease(run_id, owner)
            w.append(run_id, payloads, expected_seq=0, owner=owner, epoch=epoch)
            if release:
                w.release_lease(run_id, owner, epoch)
            return epoch

        return self.submit(write)

    def import_run(
        self,
        run_id: str,
        payloads: Sequence[Payload],
        *,
        approvals: ApprovalChanges | None = None,
    ) -> WriteOp[None]:
        """Append a whole run under no lease (see ``port.EventStore``)."""
        write = Append(
            run_id,
            payloads,
            expected_seq=0,
            lease=None,
            release=False,
            approvals=approvals,
            records=False,
        )

        def imported(w: WriteTxn) -> None:
            write(w)

        return self.submit(imported)

    def acquire_lease(self, run_id: str, owner: str) -> WriteOp[int]:
        """Take the run for ``owner``; resolves to the new epoch."""
        return self.submit(lambda w: w.acquire_lease(run_id, owner))

    def release_lease(self, run_id: str, lease: Lease, *, durable: bool = False) -> WriteOp[bool]:
        """Give the run up if ``lease`` still holds it."""
        return self.submit(
            lambda w: w.release_lease(run_id, lease.owner, lease.epoch), durable=durable
        )

    def decide_approval(
        self, record: ApprovalRecord, *, approved: bool, by: str, note: str, now: int
    ) -> WriteOp[ApprovalRecord]:
        """Decide a pending request, or mark it expired past its deadline."""
        return self.submit(
            lambda w: w.decide_approval(record, approved=approved, by=by, note=note, now=now)
        )

    def expire_approval(self, record: ApprovalRecord, *, now: int) -> WriteOp[ApprovalRecord]:
        """Mark a pending request past its deadline expired (never a denial: before the
        deadline it is refused)."""
        check_expirable(record, now)
        return self.decide_approval(record, approved=False, by="", note="", now=now)

    def put_snapshot(
        self, run_id: str, *, seq: int, state_version: int, state: bytes, chunks: Sequence[bytes]
    ) -> WriteOp[bool]:
        """Keep the run's state at ``seq`` if its head is still there (never durable)."""

        def write(w: WriteTxn) -> bool:
            if w.head(run_id).seq != seq:
                return False
            stored = min(w.snapshot_chunks(run_id), len(chunks))
            new = [chunks[i] for i in range(stored, len(chunks))]
            w.put_snapshot(run_id, state_version, seq, state, new_chunks=new, first_chunk=stored)
            return True

        return self.submit(write, durable=False)

    def put_checkpoint(
        self, checkpoint: Checkpoint, *, advance: bool = True, durable: bool = False
    ) -> WriteOp[bool]:
        """Store a projection's checkpoint (only forward, with ``advance``)."""
        return self.submit(lambda w: w.put_checkpoint(checkpoint, advance=advance), durable=durable)

    def delete_checkpoint(self, name: str) -> WriteOp[None]:
        """Forget projection ``name``'s checkpoint."""
        return self.submit(lambda w: w.delete_checkpoint(name))

    # -- reads -----------------------------------------------------------------------------

    def head(self, run_id: str) -> int:
        """The run's last seq (0 if the run does not exist)."""
        return self.mapped.read(lambda txn: self.reader.head(txn, run_id))

    def read(self, run_id: str, from_seq: int = 1, to_seq: int | None = None) -> list[Recorded]:
        """The run's records from ``from_seq`` (inclusive) to ``to_seq`` (inclusive)."""
        return self.mapped.read(lambda txn: self.reader.read(txn, run_id, from_seq, to_seq))

    def read_events(self, run_id: str, from_seq: int = 1) -> tuple[list[AnyEvent], list[int]]:
        """The events of the run's records from ``from_seq`` on, in seq order, and the time
        of each: what a fold needs of ``read``, without a Recorded envelope a record."""
        return self.mapped.read(lambda txn: self.reader.read_events(txn, run_id, from_seq))

    def consume_events(
        self,
        run_id: str,
        fn: Callable[[Iterator[tuple[AnyEvent, int]]], T],
        from_seq: int = 1,
        *,
        span: int = EVENT_SPAN,
    ) -> T:
        """``fn(pairs)`` inside one read transaction, ``pairs`` being the run's records from
        ``from_seq`` on as ``(event, at)``, decoded a span at a time as ``fn`` takes them:
        a fold meets each event while it is still in the CPU's caches, and no list of the
        whole run is built. ``fn`` should only read what it is handed: the transaction
        stays open until it returns, and a write from inside it could deadlock against a
        map resize."""
        return self.mapped.read(
            lambda txn: self.reader.consume_events(txn, run_id, fn, from_seq, max(1, span))
        )

    def read_runs(self, starts: dict[str, int]) -> dict[str, tuple[list[AnyEvent], list[int]]]:
        """``read_events`` of several runs at once (``run_id -> from_seq``): one read
        transaction and one scan of the unindexed tail for all of them."""
        return self.mapped.read(lambda txn: self.reader.read_runs(txn, starts))

    def read_all(self, from_position: int = 1, limit: int | None = None) -> list[Recorded]:
        """Records across the whole log in position order, from ``from_position``."""
        return self.mapped.read(lambda txn: self.reader.read_all(txn, from_position, limit))

    def last_position(self) -> int:
        """Position of the newest record in the log (0 if empty)."""
        return self.mapped.read(self.reader.last_position)

    def run_ids(self) -> list[str]:
        """Every run in the store, sorted by id."""
        return self.mapped.read(self.reader.run_ids)

    def verify_chain(self, run_id: str) -> int:
        """Walk the run's hash chain and checksums; return its length or raise CorruptRecord."""
        return self.mapped.read(
            lambda txn: verify_chain(txn, self.tables, self.reader, self.values, run_id)
        )

    def lease(self, run_id: str) -> Lease | None:
        """Who holds the run now (owner '' when nobody)."""
        return self.mapped.read(lambda txn: self.side.lease(txn, run_id))

    def leases(self) -> dict[str, Lease]:
        """Every run's lease, in one read transaction (see ``port.EventStore``)."""
        return self.mapped.read(self.side.leases)

    def snapshot(self, run_id: str) -> Snapshot | None:
        """(state_version, seq, state bytes, history chunks) of the run's latest snapshot."""
        return self.mapped.read(lambda txn: self.side.snapshot(txn, run_id))

    def approvals(self) -> list[ApprovalRecord]:
        """Every approval record (pending, decided, expired; applied to the log or not)."""
        return self.mapped.read(self.side.approvals)

    def open_approvals(self) -> list[ApprovalRecord]:
        """Approval records not yet applied to their run's log (pending or freshly decided)."""
        return self.mapped.read(self.side.open_approvals)

    def due_approvals(self, now: int) -> list[ApprovalRecord]:
        """Open requests that need carrying into their run: decided, or past their deadline."""
        return self.mapped.read(lambda txn: self.side.open_approvals(txn, due_by=now))

    def approval_by_token(self, token_digest: str) -> ApprovalRecord | None:
        """The current record of the request a token's digest was issued for (a request asked
        again holds a new digest: compare ``token_digest`` before acting on it)."""
        return self.mapped.read(lambda txn: self.side.approval_by_token(txn, token_digest))

    def approval(self, run_id: str, call_id: str) -> ApprovalRecord | None:
        """One approval record."""
        return self.mapped.read(lambda txn: self.side.approval(txn, run_id, call_id))

    def meta(self, key: str) -> bytes | None:
        """A store-wide value (LMDB-only: the index's mark and the like)."""
        return self.mapped.read(lambda txn: self.side.meta(txn, key))

    def checkpoint(self, name: str) -> Checkpoint | None:
        """The stored checkpoint of projection ``name`` (None if it has none).

        Raises StoreError when the stored bytes are not a checkpoint."""
        return self.mapped.read(lambda txn: self.side.checkpoint(txn, name))

    def checkpoints(self) -> list[Checkpoint]:
        """Every stored projection checkpoint that decodes, by name."""
        return self.mapped.read(self.side.checkpoints)

    # -- owners ----------------------------------------------------------------------------

    def hold_owner(self, owner: str) -> OwnerLock:
        """Hold ``owner``'s lock file while this process lives (see ``owners``)."""
        return OwnerLock(self.owners_dir, owner)

    def owner_alive(self, owner: str) -> bool:
        """True if a live runtime holds ``owner``'s lock."""
        return owner_alive(self.owners_dir, owner)

    # -- lifecycle -------------------------------------------------------------------------

    def writes_together(self) -> AbstractContextManager[None]:
        """Writes begun in the block share commits (see ``port.EventStore``)."""
        return self.writer.together()

    def flush(self, timeout: float) -> bool:
        """Commit what is queued now (ops commit in order, so a durable no-op behind them
        lands only once they have)."""
        if self.readonly:
            return True  # it queues nothing
        try:
            self.writer.submit(WriteOp(lambda w: None, durable=True)).wait(timeout)
        except StoreError:
            return False
        return True

    def _close(self) -> None:
        # Index the tail so that the next opener (often a read-only CLI) scans nothing.
        self.writer.submit(WriteOp(lambda w: w.index_now(), durable=False))
        self.writer.close()
        self.mapped.close()

    def close(self) -> None:
        """Release this reference; the last one commits pending writes and closes LMDB."""
        key = str(self.path)
        with _REGISTRY_LOCK:
            self._refs -= 1
            # others still hold it; closed already; or inherited over a fork (the parent's)
            if self._refs > 0 or self._closed or os.getpid() != self._pid:
                return
            self._closed = True
            if _REGISTRY.get(key) is self:  # not if it was made directly, unregistered
                del _REGISTRY[key]
            closed = _CLOSING[key] = threading.Event()
        try:
            self._close()
        finally:
            with _REGISTRY_LOCK:
                _CLOSING.pop(key, None)
            closed.set()


_REGISTRY: dict[str, LmdbStore] = {}
_CLOSING: dict[str, threading.Event] = {}
"""Paths whose last close is still closing LMDB, each with an event set once it has."""
_INHERITED: set[str] = set()
"""In a forked child, the paths its parent had open: LMDB cannot open them again here."""
_REGISTRY_LOCK = threading.Lock()


def _after_fork_in_child() -> None:
    # The parent's environments are unusable here and their writer threads did not survive.
    _INHERITED.update(_REGISTRY, _CLOSING)
    _REGISTRY.clear()
    _CLOSING.clear()
    _REGISTRY_LOCK.release()


# Held over a fork, so that the child's registry is whole and its lock free.
os.register_at_fork(
    before=_REGISTRY_LOCK.acquire,
    after_in_parent=_REGISTRY_LOCK.release,
    after_in_child=_after_fork_in_child,
)


def open_store(
    path: str | os.PathLike[str],
    *,
    create: bool = True,
    map_size: int = DEFAULT_MAP_SIZE,
    index_every: int = INDEX_EVERY,
) -> LmdbStore:
    """Open (or share) the store at ``path``.

    LMDB forbids opening one environment twice in a process, so every open of the same
    directory in this process shares one LmdbStore; ``close`` releases a reference, and
    an open while the last close is still closing LMDB waits for it to finish.
    ``index_every`` (tests use small values) is how many unindexed records trigger
    writing their index entries.
    """
    if not isinstance(path, str | os.PathLike) or isinstance(os.fspath(path), bytes):
        raise ConfigError(
            "a store directory must be a path (a str or os.PathLike such as pathlib.Path); "
            f"got {path!r:.80} ({type(path).__name__}): pass where it is, as in "
            "open_store('.foldloop')"
        )
    where = os.fspath(path)
    if not where.strip() or "\0" in where:
        said = "is empty" if not where.strip() else "holds a NUL character"
        raise ConfigError(
            f"the store directory {where!r} {said}: pass a directory, as in "
            "open_store('.foldloop') (or --store .foldloop)"
        )
    if (
        not isinstance(map_size, int)
        or isinstance(map_size, bool)
        or not (1 << 20 <= map_size <= MAX_MAP_SIZE)
    ):
        raise ConfigError(
            f"map_size must be an int of bytes between 1 MiB and {MAX_MAP_SIZE:,}; got {map_size!r}"
        )
    real = Path(os.path.realpath(os.fspath(path)))
    key = str(real)
    while True:
        with _REGISTRY_LOCK:
            if key in _INHERITED:
                raise StoreError(
                    f"the store at {key!r} was open in the process this one was forked from "
                    "(os.fork, or multiprocessing's 'fork' start method), and LMDB cannot open it "
                    "again in this process: start it with multiprocessing's 'spawn' or "
                    "'forkserver' method, or fork before opening the store"
                )
            closing = _CLOSING.get(key)
            if closing is None:
                store = _REGISTRY.get(key)
                if store is None:
                    store = LmdbStore(
                        real, create=create, map_size=map_size, index_every=index_every
                    )
                    _REGISTRY[key] = store
                store._refs += 1
                return store
        # LMDB refuses an environment still open in this process: wait for its close (only
        # this path's) and open it afresh.
        closing.wait()


def _implements_the_port(store: LmdbStore) -> EventStore:
    """(For mypy: LmdbStore is an EventStore.)"""
    return store
