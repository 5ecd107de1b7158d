"""Reading the log inside a transaction: a run's records, the whole log, heads, positions.

A run's records are found through its index entries up to the index's high-water mark
(``meta["indexed"]``) and, past it, in the unindexed tail: through the write path's view
of the tail (``tail.TailCache``) where it covers what the transaction sees, else through
the reads' own one, which they bring up to date (a process reading a log that others
write scans each new value once, not once a read). Every stored value read is decoded
once and checked (``stored``).
"""

from __future__ import annotations

import itertools
import operator
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from foldloop.errors import CorruptRecord
from foldloop.events._codec import has_upcasters
from foldloop.events._recorded import AnyEvent, Recorded
from foldloop.store._env import Tables
from foldloop.store._framing import (
    IndexRange,
    TypedBatch,
    decode_index,
    index_prefix,
    open_fast,
    pack_position,
    unpack_position,
)
from foldloop.store._layout import INDEXED_KEY, LAST_KEY, last_index_entry, seek_index
from foldloop.store._run_numbers import RunNumbers
from foldloop.store._stored import (
    StoredValues,
    events_into,
    misplaced,
    placed,
    seek_value,
    unpack,
)
from foldloop.store._tail import Scanned, TailCache, TailView

__all__ = ["EVENT_SPAN", "LogReader", "Slices"]

T = TypeVar("T")
EVENT_SPAN = 1024
"""Events ``consume_events`` decodes before handing them on: enough to amortise the hand-over
(values of a live run hold a step's few events), few enough to stay in the CPU's caches."""

Slices = Iterator[tuple[TypedBatch, int, int]]
"""Decoded stored values, each with the slice ``[lo, hi)`` of its events wanted."""


class LogReader:
    """The read side of the log; every method takes the transaction to read in."""

    def __init__(
        self, tables: Tables, numbers: RunNumbers, values: StoredValues, tail: TailCache
    ) -> None:
        self._tables = tables
        self._numbers = numbers
        self._values = values
        self._tail = tail
        self._read_tail = TailCache()
        """The tail as reads found it, for when the write path's view is behind the log."""
        self._read_tail_lock = threading.Lock()  # one reader at a time brings it up to date

    # -- positions and the tail ------------------------------------------------------------

    def indexed(self, txn: Any) -> int:
        """The index's high-water mark: records up to it have index entries."""
        raw = txn.get(INDEXED_KEY, db=self._tables.meta)
        return 0 if raw is None else unpack_position(raw)

    def last_position(self, txn: Any) -> int:
        """The position of the log's last event (0 when empty): its last value's key, plus
        the events after the first that the value holds."""
        cur = txn.cursor(db=self._tables.log)
        if not cur.last():
            return 0
        last, (run, seq, count) = placed(cur.key(), cur.value())
        if cur.prev():  # and it follows the value before it
            before, (_run, _seq, before_count) = placed(cur.key(), cur.value())
            if before + before_count != last:
                end = before + before_count - 1
                raise misplaced(self._values.run_id(txn, run, seq), seq, last, end)
        return last + count - 1

    def scan(self, txn: Any, after: int) -> Iterator[Scanned]:
        """(position, value, run_id, first seq, count) of every stored value past ``after``.

        Run and seqs are read from the frame even when its checksum fails, so a damaged
        value is reported to its own run's readers (``StoredValues`` checks the crc) and
        the write path keeps exact heads; only a value too damaged to place stops the scan.
        """
        cur = txn.cursor(db=self._tables.log)
        if not cur.set_range(pack_position(after + 1)):
            return
        end = after  # the last position of the value before: positions are gapless
        for key, value in cur:
            position, (run, seq, count) = placed(key, value)
            run_id = self._values.run_id(txn, run, seq)
            if position != end + 1:
                raise misplaced(run_id, seq, position, end)
            end = position + count - 1
            yield position, value, run_id, seq, count

    def tail_values(self, txn: Any, run_id: str) -> Iterator[tuple[bytes, int, int]]:
        """(value, first seq, count) of each of the run's stored values past the index, as
        ``txn`` sees them, in log order.

        A view of the tail says where the run's records are, so that a read looks at its
        own values only, not at every value of the tail: the write path's view when it
        covers what ``txn`` sees, else the reads' own, brought up to ``txn`` first.
        Positions a view covers and ``txn`` does not see are left out, and positions
        ``txn`` sees past it are scanned. When ``txn`` sees an older index than both
        views (it began before one was written), the tail is scanned whole."""
        indexed = self.indexed(txn)
        last = self.last_position(txn)
        base, entries, covered = self._tail.view()
        if base != indexed or covered < last:
            base, entries, covered = self._read_tail_at(txn, indexed, last)
        if base != indexed:
            for _pos, value, rid, first, count in self.scan(txn, indexed):
                if rid == run_id:
                    yield value, first, count
            return
        cur = txn.cursor(db=self._tables.log)
        end = base  # the last position of the values taken
        for rid, seq, position, _chain in entries:
            if position > covered or position > last:
                break
            if rid != run_id or position <= end:
                continue
            if not seek_value(cur, pack_position(position)):
                raise CorruptRecord(run_id, seq, f"log position {position} is missing")
            value = cur.value()
            start, (_run, first, count) = placed(cur.key(), value)
            end = start + count - 1
            yield value, first, count
        if covered < last:
            for _pos, value, rid, first, count in self.scan(txn, covered):
                if rid == run_id:
                    yield value, first, count

    def _read_tail_at(self, txn: Any, indexed: int, last: int) -> TailView:
        """The reads' view of the tail, brought up to what ``txn`` sees (never back to an
        older index: a view of a newer one is returned as it is)."""
        view = self._read_tail.view()
        if view[0] == indexed and view[2] >= last:
            return view  # up to date: no lock (a view is published whole)
        with self._read_tail_lock:
            if indexed >= self._read_tail.view()[0]:
                self._read_tail.sync(indexed, lambda after: self.scan(txn, after))
            return self._read_tail.view()

    def _tail_slices(self, txn: Any, run_id: str, start: int, to_seq: int | None = None) -> Slices:
        """The tail's part of a read: each of the run's unindexed values holding seqs from
        ``start`` (to ``to_seq``), decoded and checked (as ``_run_values`` gives the
        indexed part)."""
        for value, first, count in self.tail_values(txn, run_id):
            if first + count > start and (to_seq is None or first <= to_seq):
                typed = self._values.batch(txn, value, run_id, first)[0]
                hi = count if to_seq is None else min(count, to_seq - first + 1)
                yield typed, max(0, start - first), hi

    def ranges(self, txn: Any, run_id: str, start: int) -> Iterator[tuple[IndexRange, bytes]]:
        """The run's index entries from the one holding ``start`` on (with their keys)."""
        cur = txn.cursor(db=self._tables.index)
        if not seek_index(cur, run_id, start):
            return
        prefix = index_prefix(run_id)
        for key, value in cur:
            if not key.startswith(prefix):
                return
            yield decode_index(key, value), bytes(key)

    # -- one run -------------------------------------------------------------------------

    def head(self, txn: Any, run_id: str) -> int:
        """The run's last seq (0 if the run does not exist)."""
        seq = last_index_entry(txn.cursor(db=self._tables.index), run_id).seq
        for _value, first, count in self.tail_values(txn, run_id):
            seq = first + count - 1
        return seq

    def read(
        self, txn: Any, run_id: str, from_seq: int = 1, to_seq: int | None = None
    ) -> list[Recorded]:
        """The run's records from ``from_seq`` (inclusive) to ``to_seq`` (inclusive)."""
        out: list[Recorded] = []
        for typed, lo, hi in self._run_values(txn, run_id, max(1, from_seq), to_seq):
            out += unpack(typed, run_id, lo, hi)
        if to_seq is not None and out and out[-1].seq >= to_seq:
            return out  # all asked for came from the index: no need to scan the tail
        for typed, lo, hi in self._tail_slices(txn, run_id, max(1, from_seq), to_seq):
            out += unpack(typed, run_id, lo, hi)
        return out

    def read_events(
        self, txn: Any, run_id: str, from_seq: int = 1
    ) -> tuple[list[AnyEvent], list[int]]:
        """The events of the run's records from ``from_seq`` on, and the time of each."""
        start = max(1, from_seq)
        events, ats = self._indexed_events(txn, run_id, start)
        for typed, lo, hi in self._tail_slices(txn, run_id, start):
            events_into(events, ats, typed, lo, hi)
        return events, ats

    def consume_events(
        self,
        txn: Any,
        run_id: str,
        fn: Callable[[Iterator[tuple[AnyEvent, int]]], T],
        from_seq: int,
        span: int,
    ) -> T:
        """``fn(pairs)``, ``pairs`` being the run's ``(event, at)`` from ``from_seq`` on,
        decoded ``span`` events at a time as ``fn`` takes them."""
        return fn(itertools.chain.from_iterable(self._event_spans(txn, run_id, from_seq, span)))

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
            else:  # the whole value, as nearly every one: no slices to copy
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
            events_into(events, ats, typed, lo, hi)
        return events, ats

    def _run_values(self, txn: Any, run_id: str, start: int, to_seq: int | None = None) -> Slices:
        """Each stored value holding the run's indexed records from ``start`` (to
        ``to_seq``), decoded once, with the slice ``[lo, hi)`` of its events wanted. A
        value's own checked frame says which seqs it holds; the index must place the first
        one wanted in it.

        Where the value wanted starts right after the one just taken (a run appending
        alone: every value), the cursor steps on to it; elsewhere it seeks. A sound value
        of the run's number that holds the seq the index places at that position is taken
        as it is; anything else (a damaged value, upcasters to apply) is read again
        carefully."""
        cur = txn.cursor(db=self._tables.log)
        number = None if has_upcasters() else self._numbers.cached(run_id)
        after = -1  # the position right after the last value taken
        for entry, _key in self.ranges(txn, run_id, start):
            last = entry.last_seq if to_seq is None else min(to_seq, entry.last_seq)
            positions = entry.positions()
            first = entry.first_seq
            seq = max(start, first)
            while seq <= last:
                position = positions[seq - first]
                typed = None
                if number is not None and (
                    cur.next() if position == after else seek_value(cur, pack_position(position))
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
                        number = self._numbers.cached(run_id)
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
        if not seek_value(cur, pack_position(position)):
            raise CorruptRecord(run_id, seq, "the index points at a missing record")
        typed = self._values.batch(txn, cur.value(), run_id, seq, within=True)[0]
        offset = position - typed.position
        if not 0 <= offset < typed.count:
            raise CorruptRecord(run_id, seq, "the index points at a missing record")
        if typed.seq + offset != seq:
            raise CorruptRecord(
                run_id, seq, f"the index points at position {position}, seq {typed.seq + offset}"
            )
        return typed

    # -- several runs, the whole log -------------------------------------------------------

    def read_runs(
        self, txn: Any, starts: dict[str, int]
    ) -> dict[str, tuple[list[AnyEvent], list[int]]]:
        """``read_events`` of several runs (``run_id -> from_seq``): one scan of the
        unindexed tail for all of them."""
        out = {rid: self._indexed_events(txn, rid, max(1, start)) for rid, start in starts.items()}
        for _pos, value, rid, first, count in self.scan(txn, self.indexed(txn)):
            wanted = starts.get(rid)
            if wanted is not None and first + count > wanted:
                typed = self._values.batch(txn, value, rid, first)[0]
                events_into(*out[rid], typed, max(0, wanted - first), count)
        return out

    def read_all(
        self, txn: Any, from_position: int = 1, limit: int | None = None
    ) -> list[Recorded]:
        """Records across the whole log in position order, from ``from_position``."""
        cur = txn.cursor(db=self._tables.log)
        out: list[Recorded] = []
        start = max(1, from_position)
        if not seek_value(cur, pack_position(start)):
            return out
        for _key, value in cur:
            batch = self._values.records(txn, value, None, None)
            out.extend(r for r in batch if r.position >= start)
            if limit is not None and len(out) >= limit:
                return out[:limit]
        return out

    def run_ids(self, txn: Any) -> list[str]:
        """Every run in the store, sorted by id."""
        cur = txn.cursor(db=self._tables.index)
        out: set[str] = set()
        found = cur.first()
        while found:
            key = bytes(cur.key())
            name = key[:-9]  # run_id NUL seq
            out.add(name.decode(errors="replace"))
            found = cur.set_range(name + b"\0" + LAST_KEY)
            if found and bytes(cur.key()) <= key:  # damaged keys out of order
                found = cur.next()
        out.update(rid for _p, _v, rid, _s, _n in self.scan(txn, self.indexed(txn)))
        return sorted(out)
