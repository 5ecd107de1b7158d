"""How events are laid out on disk: keys, the stored frame, its checksum and hash chain.

One append of a run (the events a decision produced, with any its run held back from the
previous one; ``layout.value_groups`` splits an append of more than 64 events or 64 KiB)
is one stored value, under the log position of its first event:

    crc32(prev_hash || frame)  4 bytes, big-endian
    prev_hash                  16 bytes: the chain hash of the run's previous value
    frame                      msgpack [run, seq, position, at, count, events, versions,
                                        offsets]

``run`` is the run's number in this store (``run_numbers``: given on its first append,
never reused; a byte or two where the run id takes fifteen to forty). ``seq`` and
``position`` are the first event's; the others follow one by one. ``events`` are
positional payloads (``events.codec``); ``versions`` is empty when every event is at
schema version 1; ``offsets`` is empty when every event has the first one's time ``at``,
else each event's time minus ``at``. The chain hash of a value is
blake2b-128(prev_hash || frame). Reads verify the crc (cheap, every time);
``verify_chain`` walks the hashes (doctor, verify).

A step's events share one checksum, chain hash, envelope and LMDB entry, which keeps a
step's bytes on disk small.
"""

from __future__ import annotations

import hashlib
import itertools
import struct
import zlib
from collections.abc import Sequence
from typing import NamedTuple

import msgspec

from foldloop.events._catalogue import KnownEvent
from foldloop.events._codec import schema_version_of

__all__ = [
    "GENESIS",
    "HASH_SIZE",
    "Head",
    "Lease",
    "Batch",
    "TypedBatch",
    "batch_frame",
    "pack_run",
    "unpack_run",
    "decode_stored",
    "peek_stored",
    "IndexRange",
    "decode_index",
    "head_from_index",
    "index_key",
    "index_value",
    "encode_steps",
    "steps_between",
    "index_prefix",
    "pack_position",
    "seal",
    "unpack_position",
    "unseal",
    "open_fast",
]

HASH_SIZE = 16
GENESIS = b"\0" * HASH_SIZE
_U64 = struct.Struct(">Q")
_U32 = struct.Struct(">I")
_CRC = struct.Struct(">I")
_HEADER = _CRC.size + HASH_SIZE
_CRC_OF = _CRC.unpack_from
_BATCH_HEAD = 0x98  # msgpack fixarray(8): a Batch frame
_BATCH_FIRST = bytes([_BATCH_HEAD])


class Head(msgspec.Struct, array_like=True, frozen=True):
    """Per-run head: last seq and the chain hash of the last record."""

    seq: int
    hash: bytes


_POS = struct.Struct(">Q")


_RANGE = struct.Struct(">QI")


class IndexRange(NamedTuple):
    """One index entry: ``length`` records of a run from ``first_seq``, the first stored at
    ``first_position`` and the last at ``last_position``; ``last_chain`` is the last one's
    chain hash. ``steps`` holds how far each later record sits from the one before it
    (msgpack integers, one after the other), empty when they are all consecutive (a run
    appending alone)."""

    first_seq: int
    first_position: int
    length: int
    last_chain: bytes
    last_position: int
    steps: bytes = b""

    @property
    def last_seq(self) -> int:
        """The seq of the range's last record."""
        return self.first_seq + self.length - 1

    def positions(self) -> Sequence[int]:
        """The log position of each record of the range, in seq order."""
        if not self.steps:
            return range(self.first_position, self.first_position + self.length)
        n = self.length - 1
        steps = _STEPS_DECODER.decode(b"\xdd" + n.to_bytes(4, "big") + self.steps)
        return list(itertools.accumulate(steps, initial=self.first_position))


_STEPS_ENCODER = msgspec.msgpack.Encoder()
_STEPS_DECODER = msgspec.msgpack.Decoder(tuple[int, ...])


def encode_steps(steps: Sequence[int]) -> bytes:
    """``steps`` as msgpack integers one after the other (an array's items, no header), so
    that an entry grows by appending bytes, without decoding what it holds."""
    items = _STEPS_ENCODER.encode(tuple(steps))
    n = len(steps)
    return items[1 if n < 16 else 3 if n < 1 << 16 else 5 :]


def steps_between(positions: Sequence[int]) -> bytes:
    """How far each position sits from the one before it (``encode_steps``); empty when
    they are consecutive."""
    if positions[-1] - positions[0] == len(positions) - 1:
        return b""  # positions only grow, so this means every step is 1
    return encode_steps([b - a for a, b in itertools.pairwise(positions)])


def index_value(
    first_position: int, count: int, last_chain: bytes, last_position: int, steps: bytes = b""
) -> bytes:
    """An index entry's value: where a stretch of a run's records sits in the log, how
    many, the last one's chain hash, and (when they are not consecutive) where the last
    one sits and the steps between them.

    One entry covers a stretch of a run's consecutive seqs (its appends while no index was
    written, then extended by the next ones), not one entry per event. Records at
    consecutive positions cost nothing beyond the first position and a count; records of
    runs that appended in between (concurrent runs) cost a byte or two each, rather than an
    entry of their own. Keeping the chain hash lets the index double as the per-run head
    (its last entry), so an append touches no database but the log.
    """
    value = _RANGE.pack(first_position, count) + last_chain
    return value + _U64.pack(last_position) + steps if steps else value


def decode_index(key: bytes, value: bytes) -> IndexRange:
    """The range an index entry (key: run id, NUL, first seq) describes."""
    first_position, count = _RANGE.unpack_from(value)
    end = _RANGE.size + HASH_SIZE
    chain = bytes(value[_RANGE.size : end])
    first_seq = int.from_bytes(key[-8:], "big")
    if len(value) == end:
        return IndexRange(first_seq, first_position, count, chain, first_position + count - 1)
    (last_position,) = _U64.unpack_from(value, end)
    return IndexRange(
        first_seq, first_position, count, chain, last_position, bytes(value[end + _U64.size :])
    )


def head_from_index(key: bytes, value: bytes) -> Head:
    """The head a run's last index entry describes."""
    entry = decode_index(key, value)
    return Head(entry.last_seq, entry.last_chain)


class Lease(msgspec.Struct, array_like=True, frozen=True):
    """Who drives a run: an owner id ('' when released) and an epoch that only grows."""

    owner: str
    epoch: int


class Batch(msgspec.Struct, array_like=True, frozen=True, gc=False):
    """The frame of a stored value: one append's events, raw until someone decodes them.
    Every field is always written (no omitted defaults), so its array has eight items.
    ``run`` is the run's number."""

    run: int
    seq: int
    position: int
    at: int
    count: int
    events: tuple[msgspec.Raw, ...]
    versions: tuple[int, ...] = ()
    offsets: tuple[int, ...] = ()

    @property
    def last_seq(self) -> int:
        """The seq of the batch's last event."""
        return self.seq + self.count - 1


class TypedBatch(msgspec.Struct, array_like=True, frozen=True, gc=False):
    """The same frame with its events decoded in one pass (the fast read path)."""

    run: int
    seq: int
    position: int
    at: int
    count: int
    events: list[KnownEvent]
    versions: tuple[int, ...] = ()
    offsets: tuple[int, ...] = ()


class _BatchHead(msgspec.Struct, array_like=True, frozen=True):
    """A frame's leading fields: enough to place its events without decoding them."""

    run: int
    seq: int
    position: int
    at: int
    count: int


_FRAME_ENCODER = msgspec.msgpack.Encoder()
_BATCH_DECODER = msgspec.msgpack.Decoder(Batch)
_TYPED_DECODER = msgspec.msgpack.Decoder(TypedBatch)
_DECODE_TYPED = _TYPED_DECODER.decode
_HEAD_DECODER = msgspec.msgpack.Decoder(_BatchHead)


def pack_position(position: int) -> bytes:
    """Big-endian u64: the log's keys sort in position order, so appends go at the end."""
    return _U64.pack(position)


def unpack_position(key: bytes) -> int:
    """Inverse of ``pack_position``."""
    return int(_U64.unpack(key)[0])


def pack_run(run: int) -> bytes:
    """Key of a run number (u32 big-endian): numbers sort in the order they were given."""
    return _U32.pack(run)


def unpack_run(key: bytes) -> int:
    """Inverse of ``pack_run``."""
    return int(_U32.unpack(key)[0])


def index_prefix(run_id: str) -> bytes:
    """Key prefix of a run's index entries (run ids never hold NUL)."""
    return run_id.encode() + b"\0"


def index_key(run_id: str, seq: int) -> bytes:
    """Key of one index entry: run id, NUL, big-endian seq."""
    return index_prefix(run_id) + _U64.pack(seq)


def batch_frame(
    run: int, seq: int, position: int, payloads: Sequence[tuple[KnownEvent, bytes, int]]
) -> Batch:
    """The frame of events appended together to run number ``run``: ``payloads`` are
    (event, its encoded bytes, at); schema versions are stored only when one of them is
    not 1, times only when one differs from the first."""
    first = payloads[0][2]
    raws, versions, offsets = [], [], []
    for event, raw, at in payloads:  # one loop: this runs for every append
        raws.append(msgspec.Raw(raw))
        versions.append(schema_version_of(event))
        offsets.append(at - first)
    return Batch(
        run,
        seq,
        position,
        first,
        len(raws),
        tuple(raws),
        () if versions.count(1) == len(versions) else tuple(versions),
        tuple(offsets) if any(offsets) else (),
    )


def seal(frame: Batch, prev_hash: bytes) -> tuple[bytes, bytes]:
    """The stored bytes of ``frame`` chained after ``prev_hash``, and its own chain hash."""
    body = prev_hash + _FRAME_ENCODER.encode(frame)
    chain = hashlib.blake2b(body, digest_size=HASH_SIZE).digest()
    return _CRC.pack(zlib.crc32(body)) + body, chain


class SealBroken(Exception):
    """The stored bytes fail their checksum (raised before any decode)."""


def unseal(value: bytes) -> tuple[bytes, bytes]:
    """Check the crc; return (prev_hash, frame bytes). Raises SealBroken on a mismatch."""
    if len(value) < _HEADER:
        raise SealBroken(f"record is {len(value)} bytes, shorter than its {_HEADER}-byte header")
    body = memoryview(value)[_CRC.size :]
    if zlib.crc32(body) != _CRC.unpack_from(value)[0]:
        raise SealBroken("checksum mismatch (the stored bytes changed after they were written)")
    return bytes(body[:HASH_SIZE]), bytes(body[HASH_SIZE:])


def chain_hash(value: bytes) -> bytes:
    """The chain hash of a stored record (hash of everything after the crc)."""
    return hashlib.blake2b(memoryview(value)[_CRC.size :], digest_size=HASH_SIZE).digest()


_NOT_A_BATCH = "not a value of this store format (the bytes are damaged)"


def decode_stored(body: bytes) -> Batch:
    """The frame of a stored value (its events raw). Raises msgspec errors on bytes that
    are not one."""
    if body[:1] != _BATCH_FIRST:
        raise msgspec.DecodeError(_NOT_A_BATCH)
    return _BATCH_DECODER.decode(body)


def peek_stored(body: bytes) -> tuple[int, int, int]:
    """(run number, first seq, event count) of a stored frame, its events skipped."""
    if body[:1] != _BATCH_FIRST:
        raise msgspec.DecodeError(_NOT_A_BATCH)
    head = _HEAD_DECODER.decode(body)
    return head.run, head.seq, head.count


def open_fast(value: bytes) -> TypedBatch | None:
    """Envelope and events of a sound value, decoded in one pass; None when the careful
    path must look (a checksum that does not match, an event unknown or of an old shape,
    a value that is not a batch).

    The read path's inner loop: it reads the stored bytes in place (``unseal`` copies the
    frame and the previous hash out) and raises nothing, so a reader pays one call a
    value; the careful path then says what is wrong with the rare value it gets.
    """
    if len(value) <= _HEADER or value[_HEADER] != _BATCH_HEAD:
        return None
    view = memoryview(value)  # one view, sliced twice: no copy of the value's bytes
    if zlib.crc32(view[_CRC.size :]) != _CRC_OF(value)[0]:
        return None
    try:
        typed = _DECODE_TYPED(view[_HEADER:])
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    if len(typed.events) != typed.count or (typed.offsets and len(typed.offsets) != typed.count):
        return None  # a frame at odds with itself: the careful path names it
    return typed
