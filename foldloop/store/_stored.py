"""What one stored value of the log holds, checked: its events, run and seqs.

``open_fast`` (framing) decodes a sound value in one pass; anything it declines (a bad
checksum, an unknown tag, upcasters to apply, a value out of place) is read here again
carefully, and damage is raised as a ``CorruptRecord`` naming the run and the seq.
"""

from __future__ import annotations

from typing import Any

import msgspec

from foldloop.errors import CorruptRecord
from foldloop.events._codec import DecodeFailure, decode_event, has_upcasters
from foldloop.events._recorded import AnyEvent, Recorded
from foldloop.store._framing import (
    SealBroken,
    TypedBatch,
    decode_stored,
    open_fast,
    peek_stored,
    unpack_position,
    unseal,
)
from foldloop.store._preflight import FORMAT
from foldloop.store._run_numbers import RunNumbers

__all__ = [
    "StoredValues",
    "events_into",
    "misplaced",
    "placed",
    "seek_value",
    "unpack",
]

_FRAME_AT = 4 + 16  # crc + previous hash precede the frame


class StoredValues:
    """Decodes and checks stored values, naming their runs by number."""

    def __init__(self, numbers: RunNumbers) -> None:
        self._numbers = numbers

    def run_id(self, txn: Any, number: int, seq: int = 0) -> str:
        """The id of the run a stored value names."""
        return self._numbers.name(txn, number, seq)

    def records(
        self, txn: Any, value: bytes | None, run_id: str | None, seq: int | None
    ) -> list[Recorded]:
        """The records of one stored value, checked (see ``batch``)."""
        typed, name = self.batch(txn, value, run_id, seq)
        return unpack(typed, name, 0, typed.count)

    def batch(
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
            name = self.run_id(txn, typed.run, typed.seq)
            if run_id is None or name == run_id:
                return typed, name
        # A bad checksum, an unknown tag, an old event shape, a value out of place.
        try:
            _prev, body = unseal(value)
            batch = decode_stored(body)
        except (SealBroken, msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise CorruptRecord(*self._where(txn, value, rid, s), str(exc)) from None
        name = self.run_id(txn, batch.run, batch.seq)
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
        typed = TypedBatch(
            batch.run, batch.seq, batch.position, batch.at, batch.count, events, (), offsets
        )
        return typed, name

    def _where(self, txn: Any, value: bytes, run_id: str, seq: int) -> tuple[str, int]:
        """The run and seq a damaged value names (read past its checksum), when the caller
        does not know them (a read across the log); the caller's own otherwise."""
        if run_id != "?":
            return run_id, seq
        try:
            run, first, _count = peek_stored(bytes(value[_FRAME_AT:]))
            return self.run_id(txn, run, first), first
        except (msgspec.DecodeError, msgspec.ValidationError, CorruptRecord):
            return run_id, seq


def placed(key: bytes, value: bytes) -> tuple[int, tuple[int, int, int]]:
    """(position, (run number, first seq, count)) of a stored value; its events are
    skipped, and its checksum is not checked (the caller reads or checks it)."""
    position = unpack_position(key)
    try:
        return position, peek_stored(bytes(value[_FRAME_AT:]))
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        where = f"the value at log position {position} is unreadable ({exc})"
        raise CorruptRecord("?", 0, where) from None


def misplaced(run_id: str, seq: int, position: int, end: int) -> CorruptRecord:
    """A value that does not start right after the one before it (positions are gapless)."""
    return CorruptRecord(
        run_id,
        seq,
        f"the value at log position {position} does not follow the one before it, which ends "
        f"at {end}: the store was written by something other than foldloop (format {FORMAT}) "
        "or damaged; restore it from a backup",
    )


def unpack(typed: TypedBatch, run_id: str, lo: int, hi: int) -> list[Recorded]:
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


def events_into(
    events: list[AnyEvent], ats: list[int], typed: TypedBatch, lo: int, hi: int
) -> None:
    """Append events ``lo`` to ``hi`` (exclusive) of a decoded value, and their times
    (its offsets, when it has them, are one an event: ``open_fast`` checks)."""
    events += typed.events[lo:hi]
    if typed.offsets:
        ats += map(typed.at.__add__, typed.offsets[lo:hi])
    else:
        ats += [typed.at] * (hi - lo)


def seek_value(cur: Any, key: bytes) -> bool:
    """Put ``cur`` on the stored value holding the event at ``key``'s position: the last
    value keyed at or before it (the first value when none is); False on an empty log."""
    if not cur.set_range(key):
        return bool(cur.last())
    if cur.key() != key and not cur.prev():
        cur.first()
    return True
