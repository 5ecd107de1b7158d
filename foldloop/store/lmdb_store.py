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

Key shapes and codecs are in ``layout``; what a write transaction may do is ``WriteTxn``.

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
import itertools
import operator
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import lmdb
import msgspec

from foldloop._log import get_logger
from foldloop.errors import (
    ConfigError,
    CorruptRecord,
    StoreError,
)
from foldloop.events.catalogue import KnownEvent
from foldloop.events.codec import (
    DecodeFailure,
    decode_event,
    has_upcasters,
)
from foldloop.events.recorded import AnyEvent, Recorded
from foldloop.store.approvals import ApprovalRecord, approval_key
from foldloop.store.checkpoints import Checkpoint, decode_checkpoint
from foldloop.store.create import prepare_dir
from foldloop.store.env import UNDECODABLE, lmdb_failure, open_databases, open_env, undecodable
from foldloop.store.framing import (
    GENESIS,
    Head,
    IndexRange,
    Lease,
    SealBroken,
    TypedBatch,
    chain_hash,
    decode_index,
    decode_stored,
    index_prefix,
    open_fast,
    pack_position,
    pack_run,
    peek_stored,
    unpack_position,
    unseal,
)
from foldloop.store.layout import (
    APPROVAL_DECODER,
    INDEX_EVERY,
    INDEXED_KEY,
    LAST_KEY,
    LEASE_DECODER,
    MAX_EVENT_BYTES,
    SNAPSHOT_DECODER,
    Payload,
    TailEntry,
    encode_all,
    last_index_entry,
    seek_index,
)
from foldloop.store.owners import owner_alive
from foldloop.store.preflight import FORMAT, store_format, write_marker
from foldloop.store.write_txn import WriteTxn
from foldloop.store.writer import WriteOp, Writer

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
EVENT_SPAN = 1024
"""Events ``consume_events`` decodes before handing them on: enough to amortise the hand-over
(values of a live run hold a step's few events), few enough to stay in the CPU's caches."""
DEFAULT_MAP_SIZE = 256 << 20
MAX_MAP_SIZE = 1 << 40
_FRAME_AT = 4 + 16  # crc + previous hash precede the frame
RUN_NUMBERS_KEPT = 2048
"""Run numbers a process keeps cached (a run's number is read from LMDB when not)."""


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
        prepare_dir(path, create=create and not readonly, map_size=map_size)
        self.env = open_env(path, map_size=map_size)
        try:
            self.env.reader_check()
            dbs = open_databases(self.env)
        except lmdb.Error as exc:
            self.env.close()
            raise lmdb_failure(path, "open", exc) from None
        self._log = dbs[b"log"]
        self._index = dbs[b"index"]
        self._leases = dbs[b"leases"]
        self._snapshots = dbs[b"snapshots"]
        self._meta = dbs[b"meta"]
        self._approvals = dbs[b"approvals"]
        self._tokens = dbs[b"tokens"]
        self._open = dbs[b"approvals_open"]
        self._checkpoints = dbs[b"checkpoints"]
        self._chunks = dbs[b"history_chunks"]
        self._run_numbers = dbs[b"run_numbers"]
        self._run_ids = dbs[b"run_ids"]
        if not readonly and (found := store_format(path)) < FORMAT:
            self._upgrade(found)
        self.owners_dir.mkdir(mode=0o700, exist_ok=True)
        self._resize = _SharedExclusive()
        # The write path's view of the unindexed tail (touched only inside write txns,
        # which this process runs one at a time).
        self._tail_base = -1
        self._tail_scanned = 0
        self._tail: list[TailEntry] = []
        self._tail_heads: dict[str, Head] = {}
        # What readers on any thread use of it: (index base, entries, the last position
        # they cover), replaced whole after every change, so one attribute read takes a
        # consistent view (entries are only ever appended to a list until it is replaced).
        self._tail_view: tuple[int, list[TailEntry], int] = (-1, self._tail, 0)
        # Run numbers never change once committed, so a cached one is never stale; the
        # cache is bounded (``remember_run``) so that a store of a million runs costs no
        # more memory than one of a thousand.
        self._numbers: dict[str, int] = {}
        self._names: dict[int, str] = {}
        self._listeners: list[Callable[[list[Recorded]], None]] = []
        self._refs = 0
        self.writer = Writer(
            lambda: WriteTxn(self),
            self._grow,
            self._notify,
            lambda exc: lmdb_failure(
                path, "commit to", exc, then="; nothing of this write was stored, resume the run"
            ),
        )

    # -- plumbing ------------------------------------------------------------------------

    def _upgrade(self, found: int) -> None:
        """Format 1 -> 4: the per-run index changed shape. It is a cache of the log, so it
        is dropped and rebuilt: everything becomes the unindexed tail, indexed anew by the
        next commit that indexes. Formats 2 and 3 -> 4: their entries and their one-event
        values read as they are; only the marker changes, so that an older foldloop, which
        cannot read what this one writes, refuses the store instead of misreading it."""
        if found < 2:
            try:
                with self.env.begin(write=True) as txn:
                    txn.drop(self._index, delete=False)
                    txn.delete(INDEXED_KEY, db=self._meta)
            except lmdb.Error as exc:
                self.env.close()
                raise StoreError(f"cannot upgrade the store at {str(self.path)!r}: {exc}") from None
        write_marker(self.path)
        log.info("store_upgraded", path=str(self.path), format=FORMAT, was=found)

    def _begin(self, *, write: bool = False, parent: Any = None) -> Any:
        if parent is not None:
            return self.env.begin(write=True, parent=parent, buffers=False)
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
        """Run ``fn`` inside a short read transaction (a failure to read is a StoreError)."""
        while True:
            self._resize.acquire_shared()
            try:
                txn = self._begin()
                try:
                    return fn(txn)
                finally:
                    txn.abort()
            except lmdb.MapResizedError as exc:
                resized: Exception = exc
            except lmdb.Error as exc:
                raise lmdb_failure(self.path, "read", exc) from None
            except UNDECODABLE as exc:
                raise undecodable(self.path, exc) from None
            finally:
                self._resize.release_shared()
            self._grow(resized)

    # -- the unindexed tail ----------------------------------------------------------------

    def _indexed(self, txn: Any) -> int:
        raw = txn.get(INDEXED_KEY, db=self._meta)
        return 0 if raw is None else unpack_position(raw)

    def _reset_tail(self, base: int) -> None:
        self._tail_base = self._tail_scanned = base
        self._tail = []
        self._tail_heads = {}
        self._publish_tail()

    def _publish_tail(self) -> None:
        """Let readers see the tail cache as it is now (write path only)."""
        self._tail_view = (self._tail_base, self._tail, self._tail_scanned)

    def _sync_tail(self, txn: Any) -> None:
        """Bring the write path's tail cache up to date with what is committed."""
        base = self._indexed(txn)
        if base != self._tail_base:
            self._reset_tail(base)
        for position, value, run_id, seq, count in self._scan_tail(txn, self._tail_scanned):
            chain = chain_hash(value)
            for i in range(count):
                self._tail.append((run_id, seq + i, position + i, chain))
            self._tail_heads[run_id] = Head(seq + count - 1, chain)
            self._tail_scanned = position + count - 1
        self._publish_tail()

    def _scan_tail(self, txn: Any, after: int) -> Iterator[tuple[int, bytes, str, int, int]]:
        """(position, value, run_id, first seq, count) of every stored value past ``after``.

        Run and seqs are read from the frame even when its checksum fails, so a damaged
        value is reported to its own run's readers (``_records`` checks the crc) and the
        write path keeps exact heads; only a value too damaged to place stops the scan.
        """
        cur = txn.cursor(db=self._log)
        if not cur.set_range(pack_position(after + 1)):
            return
        end = after  # the last position of the value before: positions are gapless
        for key, value in cur:
            position, (run, seq, count) = _placed(key, value)
            run_id = self._run_id(txn, run, seq)
            if position != end + 1:
                raise _misplaced(run_id, seq, position, end)
            end = position + count - 1
            yield position, value, run_id, seq, count

    def _tail_of(self, txn: Any, run_id: str) -> Iterator[tuple[bytes, int, int]]:
        """(value, first seq, count) of each of the run's stored values past the index, as
        ``txn`` sees them, in log order.

        The write path's view of the tail says where the run's records are, so that a
        read looks at its own values only, not at every value of the tail: when the view
        is of the index ``txn`` sees, positions it covers and ``txn`` does not see are
        left out and positions ``txn`` sees past it are scanned. A view of another index
        (one was written meanwhile) is not used: the tail is scanned whole."""
        indexed = self._indexed(txn)
        base, entries, covered = self._tail_view
        if base != indexed:
            for _pos, value, rid, first, count in self._scan_tail(txn, indexed):
                if rid == run_id:
                    yield value, first, count
            return
        last = self._last_position(txn)
        cur = txn.cursor(db=self._log)
        end = base  # the last position of the values taken
        for rid, seq, position, _chain in entries:
            if position > covered or position > last:
                break
            if rid != run_id or position <= end:
                continue
            if not _seek_value(cur, pack_position(position)):
                raise CorruptRecord(run_id, seq, f"log position {position} is missing")
            value = cur.value()
            start, (_run, first, count) = _placed(cur.key(), value)
            end = start + count - 1
            yield value, first, count
        if covered < last:
            for _pos, value, rid, first, count in self._scan_tail(txn, covered):
                if rid == run_id:
                    yield value, first, count

    def _tail_slices(
        self, txn: Any, run_id: str, start: int, to_seq: int | None = None
    ) -> Iterator[tuple[TypedBatch, int, int]]:
        """The tail's part of a read: each of the run's unindexed values holding seqs from
        ``start`` (to ``to_seq``), decoded and checked, with the slice ``[lo, hi)`` of its
        events wanted (as ``_run_values`` gives the indexed part)."""
        for value, first, count in self._tail_of(txn, run_id):
            if first + count > start and (to_seq is None or first <= to_seq):
                typed = self._batch(txn, value, run_id, first)[0]
                hi = count if to_seq is None else min(count, to_seq - first + 1)
                yield typed, max(0, start - first), hi

    def _run_id(self, txn: Any, run: int | str, seq: int = 0) -> str:
        """The id of the run a stored value names (by number, or by id before format 4)."""
        if isinstance(run, str):
            return run
        name = self._names.get(run)
        if name is None:
            raw = txn.get(pack_run(run), db=self._run_ids)
            if raw is None:
                raise CorruptRecord(
                    "?", seq, f"a stored value names run number {run}, which the store lacks"
                )
            name = bytes(raw).decode()
            self.remember_run(name, run)
        return name

    def remember_run(self, run_id: str, number: int) -> None:
        """Cache a committed run number; past ``RUN_NUMBERS_KEPT`` the cache starts over
        (the runs in use come back at one LMDB read each)."""
        if len(self._names) >= RUN_NUMBERS_KEPT:
            self._names.clear()
            self._numbers.clear()
        self._names[number] = run_id
        self._numbers[run_id] = number

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
            for _value, first, count in self._tail_of(txn, run_id):
                seq = first + count - 1
            return seq

        return self.read_txn(get)

    def read(self, run_id: str, from_seq: int = 1, to_seq: int | None = None) -> list[Recorded]:
        """The run's records from ``from_seq`` (inclusive) to ``to_seq`` (inclusive)."""

        def get(txn: Any) -> list[Recorded]:
            out = self._from_index(txn, run_id, max(1, from_seq), to_seq)
            if to_seq is not None and out and out[-1].seq >= to_seq:
                return out  # all asked for came from the index: no need to scan the tail
            for typed, lo, hi in self._tail_slices(txn, run_id, max(1, from_seq), to_seq):
                out += _unpack(typed, run_id, lo, hi)
            return out

        return self.read_txn(get)

    def read_events(self, run_id: str, from_seq: int = 1) -> tuple[list[AnyEvent], list[int]]:
        """The events of the run's records from ``from_seq`` on, in seq order, and the time
        of each: what a fold needs of ``read``, without a Recorded envelope a record
        (``core.fold_events(run_id, zip(events, ats))``; ``consume_events`` hands a fold
        the same pairs without building the two lists, as ``Runtime.state`` reads)."""

        def get(txn: Any) -> tuple[list[AnyEvent], list[int]]:
            start = max(1, from_seq)
            events, ats = self._indexed_events(txn, run_id, start)
            for typed, lo, hi in self._tail_slices(txn, run_id, start):
                _events_into(events, ats, typed, lo, hi)
            return events, ats

        return self.read_txn(get)

    def consume_events(
        self,
        run_id: str,
        fn: Callable[[Iterator[tuple[AnyEvent, int]]], T],
        from_seq: int = 1,
        *,
        span: int = EVENT_SPAN,
    ) -> T:
        """``fn(pairs)`` inside one read transaction, ``pairs`` being the run's records from
        ``from_seq`` on as ``(event, at)``, decoded a span at a time as ``fn`` takes them.

        What a fold reads through (``Runtime.state``): it meets each event while its
        decoded objects are still in the CPU's caches, and no list of the whole run is
        built (``read_events`` builds two): folding 100,000 events costs a quarter less.
        ``fn`` should only read what it is handed (a pure fold): the transaction stays open
        until it returns, and a write from inside it could deadlock against a map resize."""

        def get(txn: Any) -> T:
            spans = self._event_spans(txn, run_id, from_seq, max(1, span))
            return fn(itertools.chain.from_iterable(spans))

        return self.read_txn(get)

    def _event_spans(
        self, txn: Any, run_id: str, from_seq: int, span: int
    ) -> Iterator[Iterator[tuple[AnyEvent, int]]]:
        """The run's records from ``from_seq``, in spans of at least ``span`` (but the
        last), whole stored values each."""
        start = max(1, from_seq)
        # An event's time is its value's plus its own offset: both are gathered as they
        # are and added in one pass a span (a map over two lists), not a value at a time.
        events: list[AnyEvent] = []
        bases: list[int] = []
        offsets: list[int] = []
        values = itertools.chain(
            self._run_values(txn, run_id, start), self._tail_slices(txn, run_id, start)
        )
        for typed, lo, hi in values:
            if lo or hi != typed.count:
                events += typed.events[lo:hi]
                offsets += typed.offsets[lo:hi] if typed.offsets else [0] * (hi - lo)
                bases += [typed.at] * (hi - lo)
            else:  # the whole value, as nearly every one: no slices to copy (2-3% of the
                # fold's read at 1,000 steps; read_events, off the fold's path, slices always)
                events += typed.events
                offsets += typed.offsets or [0] * hi
                bases += [typed.at] * hi
            if len(events) >= span:
                yield zip(events, map(operator.add, bases, offsets), strict=True)
                events, bases, offsets = [], [], []
        if events:
            yield zip(events, map(operator.add, bases, offsets), strict=True)

    def _indexed_events(
        self, txn: Any, run_id: str, start: int
    ) -> tuple[list[AnyEvent], list[int]]:
        """The run's indexed events from ``start``, and their times."""
        events: list[AnyEvent] = []
        ats: list[int] = []
        for typed, lo, hi in self._run_values(txn, run_id, start):
            _events_into(events, ats, typed, lo, hi)
        return events, ats

    def _from_index(
        self, txn: Any, run_id: str, start: int, to_seq: int | None = None
    ) -> list[Recorded]:
        """The run's indexed records from ``start`` (to ``to_seq``)."""
        out: list[Recorded] = []
        for typed, lo, hi in self._run_values(txn, run_id, start, to_seq):
            out += _unpack(typed, run_id, lo, hi)
        return out

    def _run_values(
        self, txn: Any, run_id: str, start: int, to_seq: int | None = None
    ) -> Iterator[tuple[TypedBatch, int, int]]:
        """Each stored value holding the run's indexed records from ``start`` (to
        ``to_seq``), decoded once, with the slice ``[lo, hi)`` of its events wanted. A
        value's own checked frame says which seqs it holds; the index must place the first
        one wanted in it.

        Where the value wanted starts right after the one just taken (a run appending
        alone: every value), the cursor steps on to it; elsewhere it seeks. A sound value
        of the run's number that holds the seq the index places at that position is taken
        as it is; anything else (an older format, a damaged value, upcasters to apply) is
        read again carefully."""
        cur = txn.cursor(db=self._log)
        number = None if has_upcasters() else self._numbers.get(run_id)
        after = -1  # the position right after the last value taken
        for entry, _key in self._ranges(txn, run_id, start):
            last = entry.last_seq if to_seq is None else min(to_seq, entry.last_seq)
            positions = entry.positions()
            first = entry.first_seq
            seq = max(start, first)
            while seq <= last:
                position = positions[seq - first]
                typed = None
                if number is not None and (
                    cur.next() if position == after else _seek_value(cur, pack_position(position))
                ):
                    typed = open_fast(cur.value())
                if typed is not None:
                    # Its fields once each, into locals: this loop runs once a stored value.
                    t_seq, t_position, t_count = typed.seq, typed.position, typed.count
                    offset = position - t_position
                    if (
                        typed.run != number
                        or typed.versions
                        or not 0 <= offset < t_count
                        or t_seq + offset != seq
                    ):
                        typed = None
                if typed is None:
                    typed = self._value_at(txn, cur, position, run_id, seq)
                    t_seq, t_position, t_count = typed.seq, typed.position, typed.count
                    if number is None and not has_upcasters():
                        number = self._numbers.get(run_id)
                hi = last - t_seq + 1
                if hi > t_count:  # noqa: PLR1730 - min() is a call, this is not
                    hi = t_count
                yield typed, seq - t_seq, hi
                seq = t_seq + hi
                after = t_position + t_count
            if to_seq is not None and last == to_seq:
                return

    def _value_at(self, txn: Any, cur: Any, position: int, run_id: str, seq: int) -> TypedBatch:
        """The stored value holding ``position`` (``run_id``'s ``seq``, says the index),
        read carefully, the cursor left on it."""
        if not _seek_value(cur, pack_position(position)):
            raise CorruptRecord(run_id, seq, "the index points at a missing record")
        typed = self._batch(txn, cur.value(), run_id, seq, within=True)[0]
        offset = position - typed.position
        if not 0 <= offset < typed.count:
            raise CorruptRecord(run_id, seq, "the index points at a missing record")
        if typed.seq + offset != seq:
            raise CorruptRecord(
                run_id, seq, f"the index points at position {position}, seq {typed.seq + offset}"
            )
        return typed

    def read_runs(self, starts: dict[str, int]) -> dict[str, tuple[list[AnyEvent], list[int]]]:
        """``read_events`` of several runs at once (``run_id -> from_seq``): one read
        transaction and one scan of the unindexed tail for all of them."""

        def get(txn: Any) -> dict[str, tuple[list[AnyEvent], list[int]]]:
            out = {
                rid: self._indexed_events(txn, rid, max(1, start)) for rid, start in starts.items()
            }
            for _pos, value, rid, first, count in self._scan_tail(txn, self._indexed(txn)):
                wanted = starts.get(rid)
                if wanted is not None and first + count > wanted:
                    typed = self._batch(txn, value, rid, first)[0]
                    _events_into(*out[rid], typed, max(0, wanted - first), count)
            return out

        return self.read_txn(get)

    def _ranges(self, txn: Any, run_id: str, start: int) -> Iterator[tuple[IndexRange, bytes]]:
        """The run's index entries from the one holding ``start`` on (with their keys)."""
        cur = txn.cursor(db=self._index)
        if not seek_index(cur, run_id, start):
            return
        prefix = index_prefix(run_id)
        for key, value in cur:
            if not key.startswith(prefix):
                return
            yield decode_index(key, value), bytes(key)

    def read_all(self, from_position: int = 1, limit: int | None = None) -> list[Recorded]:
        """Records across the whole log in position order, from ``from_position``."""

        def get(txn: Any) -> list[Recorded]:
            cur = txn.cursor(db=self._log)
            out: list[Recorded] = []
            start = max(1, from_position)
            if not _seek_value(cur, pack_position(start)):
                return out
            for _key, value in cur:
                batch = self._records(txn, value, None, None)
                out.extend(r for r in batch if r.position >= start)
                if limit is not None and len(out) >= limit:
                    return out[:limit]
            return out

        return self.read_txn(get)

    def last_position(self) -> int:
        """Position of the newest record in the log (0 if empty)."""
        return self.read_txn(self._last_position)

    def _last_position(self, txn: Any) -> int:
        """The position of the log's last event: its last value's key, plus the events
        after the first that the value holds."""
        cur = txn.cursor(db=self._log)
        if not cur.last():
            return 0
        last, (run, seq, count) = _placed(cur.key(), cur.value())
        if cur.prev():  # and it follows the value before it (see _misplaced)
            before, (_run, _seq, before_count) = _placed(cur.key(), cur.value())
            if before + before_count != last:
                raise _misplaced(self._run_id(txn, run, seq), seq, last, before + before_count - 1)
        return last + count - 1

    def run_ids(self) -> list[str]:
        """Every run in the store, sorted by id."""

        def walk(txn: Any) -> list[str]:
            cur = txn.cursor(db=self._index)
            out: set[str] = set()
            found = cur.first()
            while found:
                key = bytes(cur.key())
                name = key[:-9]  # run_id NUL seq
                out.add(name.decode(errors="replace"))
                found = cur.set_range(name + b"\0" + LAST_KEY)
                if found and bytes(cur.key()) <= key:  # damaged keys out of order
                    found = cur.next()
            out.update(rid for _p, _v, rid, _s, _n in self._scan_tail(txn, self._indexed(txn)))
            return sorted(out)

        return self.read_txn(walk)

    def lease(self, run_id: str) -> Lease | None:
        """Who holds the run now (owner '' when nobody)."""

        def get(txn: Any) -> Lease | None:
            raw = txn.get(run_id.encode(), db=self._leases)
            return None if raw is None else LEASE_DECODER.decode(raw)

        return self.read_txn(get)

    def snapshot(self, run_id: str) -> tuple[int, int, bytes, list[bytes]] | None:
        """(state_version, seq, state bytes, history chunks) of the run's latest snapshot."""

        def get(txn: Any) -> tuple[int, int, bytes, list[bytes]] | None:
            key = run_id.encode()
            raw = txn.get(key, db=self._snapshots)
            if raw is None:
                return None
            try:
                version, seq, state, count = SNAPSHOT_DECODER.decode(raw)
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
            lambda txn: [APPROVAL_DECODER.decode(v) for _k, v in txn.cursor(db=self._approvals)]
        )

    def open_approvals(self) -> list[ApprovalRecord]:
        """Approval records not yet applied to their run's log (pending or freshly decided)."""

        def get(txn: Any) -> list[ApprovalRecord]:
            out = []
            for key, _ in txn.cursor(db=self._open):
                raw = txn.get(key, db=self._approvals)
                if raw is not None:
                    out.append(APPROVAL_DECODER.decode(raw))
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
                    out.append(APPROVAL_DECODER.decode(raw))
            return out

        return self.read_txn(get)

    def approval_by_token(self, token_digest: str) -> ApprovalRecord | None:
        """The current record of the request a token's digest was issued for (a request asked
        again holds a new digest: compare ``token_digest`` before acting on it)."""

        def get(txn: Any) -> ApprovalRecord | None:
            key = txn.get(token_digest.encode(), db=self._tokens)
            raw = None if key is None else txn.get(key, db=self._approvals)
            return None if raw is None else APPROVAL_DECODER.decode(raw)

        return self.read_txn(get)

    def approval(self, run_id: str, call_id: str) -> ApprovalRecord | None:
        """One approval record."""

        def get(txn: Any) -> ApprovalRecord | None:
            raw = txn.get(approval_key(run_id, call_id), db=self._approvals)
            return None if raw is None else APPROVAL_DECODER.decode(raw)

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

    def _records(
        self,
        txn: Any,
        value: bytes | None,
        run_id: str | None,
        seq: int | None,
    ) -> list[Recorded]:
        """The records of one stored value, checked (see ``_batch``)."""
        typed, name = self._batch(txn, value, run_id, seq)
        return _unpack(typed, name, 0, typed.count)

    def _batch(
        self,
        txn: Any,
        value: bytes | None,
        run_id: str | None,
        seq: int | None,
        *,
        within: bool = False,
    ) -> tuple[TypedBatch, str]:
        """One stored value with its events decoded, and the id of its run, checked: its
        checksum, and (unless None) that it is ``run_id``'s and starts at ``seq`` (holds
        ``seq``, when ``within``). Raises CorruptRecord naming what is wrong."""
        rid, s = run_id or "?", seq or 0
        if value is None:
            raise CorruptRecord(rid, s, "the index points at a record that is missing")
        typed = None if has_upcasters() else open_fast(value)
        if (
            typed is not None
            and not typed.versions
            and (
                seq is None
                or typed.seq == seq
                or (within and typed.seq <= seq < typed.seq + typed.count)
            )
        ):
            name = self._run_id(txn, typed.run, typed.seq)
            if run_id is None or name == run_id:
                return typed, name
        # A bad checksum, an unknown tag, an old shape or format, a value out of place.
        try:
            _prev, body = unseal(value)
            batch = decode_stored(body)
        except (SealBroken, msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise CorruptRecord(*self._where(txn, value, rid, s), str(exc)) from None
        name = self._run_id(txn, batch.run, batch.seq)
        if run_id is not None and name != run_id:
            raise CorruptRecord(rid, s, f"the record holds run {name!r} seq {batch.seq}")
        if seq is not None and not (
            batch.seq <= seq <= batch.last_seq if within else batch.seq == seq
        ):
            raise CorruptRecord(rid, s, f"the record holds {name!r} seq {batch.seq}")
        versions = batch.versions or (1,) * batch.count
        offsets = batch.offsets or (0,) * batch.count
        if not len(batch.events) == len(versions) == len(offsets) == batch.count:
            raise CorruptRecord(name, batch.seq, "the record's event count is wrong")
        events: list[Any] = []  # AnyEvent: an event of a newer writer reads as UnknownEvent
        for i, (raw, version) in enumerate(zip(batch.events, versions, strict=True)):
            try:
                events.append(decode_event(bytes(raw), version))
            except DecodeFailure as exc:
                raise CorruptRecord(name, batch.seq + i, f"undecodable event: {exc}") from None
        # Run number 0: an older format names the run by id, and the caller gets the id.
        typed = TypedBatch(0, batch.seq, batch.position, batch.at, batch.count, events, (), offsets)
        return typed, name

    def _where(self, txn: Any, value: bytes, run_id: str, seq: int) -> tuple[str, int]:
        """The run and seq a damaged value names (read past its checksum), when the caller
        does not know them (a read across the log); the caller's own otherwise."""
        if run_id != "?":
            return run_id, seq
        try:
            run, first, _count = peek_stored(bytes(value[_FRAME_AT:]))
            return self._run_id(txn, run, first), first
        except (msgspec.DecodeError, msgspec.ValidationError, CorruptRecord):
            return run_id, seq

    def verify_chain(self, run_id: str) -> int:
        """Walk the run's hash chain and checksums; return its length or raise CorruptRecord."""

        def walk(txn: Any) -> int:
            prev = GENESIS
            expected = 0  # the last seq checked
            batch: list[Recorded] = []

            def check(value: bytes | None, seq: int) -> list[Recorded]:
                nonlocal prev, expected
                records = self._records(txn, value, run_id, seq)
                assert value is not None
                stored_prev, _ = unseal(value)
                if stored_prev != prev:
                    raise CorruptRecord(run_id, seq, "hash chain broken (a record was altered)")
                prev = chain_hash(value)
                expected = records[-1].seq
                return records

            for entry, _key in self._ranges(txn, run_id, 1):
                if entry.first_seq != expected + 1:
                    raise CorruptRecord(
                        run_id, expected + 1, f"seq gap: next stored is {entry.first_seq}"
                    )
                for offset, position in enumerate(entry.positions()):
                    seq = entry.first_seq + offset
                    if seq > expected:
                        batch = check(txn.get(pack_position(position), db=self._log), seq)
                    if batch[seq - batch[0].seq].position != position:
                        raise CorruptRecord(run_id, seq, f"the index places it at {position}")
                if expected != entry.last_seq or prev != entry.last_chain:
                    raise CorruptRecord(
                        run_id, entry.last_seq, "index hash does not match the record"
                    )
            for _position, value, rid, seq, _count in self._scan_tail(txn, self._indexed(txn)):
                if rid != run_id:
                    continue
                if seq != expected + 1:
                    raise CorruptRecord(run_id, expected + 1, f"seq gap: next stored is {seq}")
                check(value, seq)
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


def _placed(key: bytes, value: bytes) -> tuple[int, tuple[int | str, int, int]]:
    """(position, (run, first seq, count)) of a stored value; its events are skipped, and
    its checksum is not checked (the caller reads or checks it)."""
    position = unpack_position(key)
    try:
        return position, peek_stored(bytes(value[_FRAME_AT:]))
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        where = f"the value at log position {position} is unreadable ({exc})"
        raise CorruptRecord("?", 0, where) from None


def _misplaced(run_id: str, seq: int, position: int, end: int) -> CorruptRecord:
    """A value that does not start right after the one before it (positions are gapless)."""
    return CorruptRecord(
        run_id,
        seq,
        f"the value at log position {position} does not follow the one before it, which ends "
        f"at {end}: a foldloop older than store format {FORMAT} may have appended to this "
        "store after it was upgraded (README, 'The store')",
    )


def _unpack(typed: TypedBatch, run_id: str, lo: int, hi: int) -> list[Recorded]:
    """Events ``lo`` to ``hi`` (exclusive) of a decoded value as records (of ``run_id``,
    the run its number names)."""
    seq, position, at, events = typed.seq, typed.position, typed.at, typed.events
    if typed.offsets:
        offsets = typed.offsets
        return [
            Recorded(
                run_id=run_id,
                seq=seq + i,
                position=position + i,
                at=at + offsets[i],
                event=events[i],
            )
            for i in range(lo, hi)
        ]
    return [
        Recorded(run_id=run_id, seq=seq + i, position=position + i, at=at, event=events[i])
        for i in range(lo, hi)
    ]


def _events_into(
    events: list[AnyEvent], ats: list[int], typed: TypedBatch, lo: int, hi: int
) -> None:
    """Append events ``lo`` to ``hi`` (exclusive) of a decoded value, and their times
    (its offsets, when it has them, are one an event: ``open_fast`` checks)."""
    events += typed.events[lo:hi]
    if typed.offsets:
        ats += map(typed.at.__add__, typed.offsets[lo:hi])
    else:
        ats += [typed.at] * (hi - lo)


def _seek_value(cur: Any, key: bytes) -> bool:
    """Put ``cur`` on the stored value holding the event at ``key``'s position: the last
    value keyed at or before it (the first value when none is); False on an empty log."""
    if not cur.set_range(key):
        return bool(cur.last())
    if cur.key() != key and not cur.prev():
        cur.first()
    return True


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
