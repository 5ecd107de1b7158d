"""How the store lays data out in LMDB: key shapes, value codecs, how appends fill values.

Shared by the write transaction (``write_txn``) and the store (``lmdb_store``).
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Sequence
from typing import Any

import msgspec

from foldloop.store._approvals import ApprovalRecord
from foldloop.store._framing import (
    GENESIS,
    Head,
    IndexRange,
    Lease,
    decode_index,
    encode_steps,
    index_key,
    index_prefix,
    steps_between,
)
from foldloop.store._payloads import MAX_EVENT_BYTES, Payload, encode_all

__all__ = [
    "APPROVAL_DECODER",
    "ENCODER",
    "INDEXED_KEY",
    "INDEX_EVERY",
    "LAST_KEY",
    "LEASE_DECODER",
    "MAX_EVENT_BYTES",
    "Payload",
    "SNAPSHOT_DECODER",
    "TailEntry",
    "encode_all",
    "value_groups",
    "VALUE_BYTES",
    "VALUE_EVENTS",
    "INDEX_SPAN",
    "index_ranges",
    "joined",
    "iso",
    "last_index_entry",
    "last_index_range",
    "seek_index",
]

LAST_KEY = b"\xff" * 8
INDEXED_KEY = b"indexed"
VALUE_EVENTS = 64
VALUE_BYTES = 64 << 10
"""An append's events share stored values of at most this many events and (unless one
event alone is bigger) bytes: a decision's few events are one value, a whole imported
run is many, so reading one event never decodes a run."""
INDEX_EVERY = 256
"""Unindexed records that trigger writing their index entries (in the next commit)."""

TailEntry = tuple[str, int, int, bytes]
"""(run_id, seq, position, chain hash) of a record past the index's high-water mark."""

LEASE_DECODER = msgspec.msgpack.Decoder(Lease)
APPROVAL_DECODER = msgspec.msgpack.Decoder(ApprovalRecord)
ENCODER = msgspec.msgpack.Encoder()
SNAPSHOT_DECODER = msgspec.msgpack.Decoder(tuple[int, int, bytes, int])


def iso(ns: int) -> str:
    """``ns`` (unix ns) as an ISO 8601 UTC timestamp."""
    return datetime.datetime.fromtimestamp(ns / 1e9, tz=datetime.UTC).isoformat(timespec="seconds")


def last_index_range(cur: Any, run_id: str) -> IndexRange | None:
    """The run's last index entry (None when the run has none)."""
    prefix = index_prefix(run_id)
    found = cur.prev() if cur.set_range(prefix + LAST_KEY) else cur.last()
    if found and cur.key().startswith(prefix):
        return decode_index(cur.key(), cur.value())
    return None


def last_index_entry(cur: Any, run_id: str) -> Head:
    """The run's head per the index (seq 0 and the genesis hash when absent)."""
    last = last_index_range(cur, run_id)
    return Head(0, GENESIS) if last is None else Head(last.last_seq, last.last_chain)


INDEX_SPAN = 1024
"""How many records an index entry is extended to hold when they are not at consecutive
positions (its value, a byte or two a record, is rewritten each time it grows); past it the
next stretch starts an entry of its own."""


def index_ranges(tail: Iterable[TailEntry]) -> list[tuple[str, int, list[int], bytes]]:
    """(run_id, first seq, positions, last chain hash) for each stretch of a run's records at
    consecutive seqs, wherever they sit in the log."""
    done: list[tuple[str, int, list[int], bytes]] = []
    open_: dict[str, tuple[str, int, list[int], bytes]] = {}
    for run_id, seq, position, chain in tail:
        current = open_.get(run_id)
        if current is not None:
            _, first_seq, positions, _ = current
            if first_seq + len(positions) == seq:
                positions.append(position)
                open_[run_id] = (run_id, first_seq, positions, chain)
                continue
            done.append(current)
        open_[run_id] = (run_id, seq, [position], chain)
    done.extend(open_.values())
    return done


def joined(
    last: IndexRange | None, first_seq: int, positions: Sequence[int]
) -> tuple[int, int, bytes] | None:
    """(count, last position, steps) of one entry holding ``last``'s records and then those
    at ``positions`` (seqs from ``first_seq``); None when a new entry should start (no
    ``last``, a stretch that does not follow it, or one it may not grow to hold)."""
    if last is None or last.last_seq + 1 != first_seq:
        return None
    count = last.length + len(positions)
    gap = positions[0] - last.last_position
    more = steps_between(positions)
    if gap == 1 and not last.steps and not more:
        return count, positions[-1], b""  # still consecutive: no limit, no steps
    if count > INDEX_SPAN:
        return None
    before = last.steps or _ONES * (last.length - 1)
    after = more or _ONES * (len(positions) - 1)
    return count, positions[-1], before + encode_steps((gap,)) + after


_ONES = encode_steps((1,))


def seek_index(cur: Any, run_id: str, seq: int) -> bool:
    """Put ``cur`` on the run's index entry that holds ``seq`` (or the first one after it);
    False when the run has no such entry."""
    prefix = index_prefix(run_id)
    key = index_key(run_id, seq)
    if cur.set_range(key):
        if cur.key() == key:
            return True
        if cur.prev() and cur.key().startswith(prefix):
            entry = decode_index(cur.key(), cur.value())
            if entry.last_seq >= seq:
                return True
        return bool(cur.set_range(key)) and bytes(cur.key()).startswith(prefix)
    if cur.last() and cur.key().startswith(prefix):
        return decode_index(cur.key(), cur.value()).last_seq >= seq
    return False


def value_groups(payloads: Sequence[Payload]) -> list[Sequence[Payload]]:
    """``payloads`` cut into the stored values they fill (``VALUE_EVENTS``,
    ``VALUE_BYTES``), in order."""
    groups: list[Sequence[Payload]] = []
    start = size = 0
    for i, (_event, raw, _at) in enumerate(payloads):
        if i > start and (i - start == VALUE_EVENTS or size + len(raw) > VALUE_BYTES):
            groups.append(payloads[start:i])
            start = i
            size = 0
        size += len(raw)
    if start < len(payloads):
        groups.append(payloads[start:])
    return groups
