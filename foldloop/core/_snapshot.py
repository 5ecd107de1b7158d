"""Snapshots that grow with the run's new messages, not with its whole history.

A snapshot bounds the fold, but a run's state holds its message history, so a snapshot
that stored the whole state each time would write O(history) bytes every
``snapshot_every`` events: quadratic disk traffic over a long run, and a store that grows
per step with the run's length. History is kept in immutable chunks of ``CHUNK``
messages (see ``messages``); a full chunk never changes again. So a snapshot stores the
state with only the last, partial chunk, and each full chunk is stored once, beside it.
The history's digest memo goes with the state, so a run resumed from a snapshot hashes
only the messages after it.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import msgspec

from foldloop.core._messages import CHUNK, Chunks, History, Message
from foldloop.core._state import RunState
from foldloop.events._values import as_recorded

__all__ = ["decode_chunk", "encode_chunk", "full_chunks", "restore_state", "split_state"]


class _Stored(msgspec.Struct, array_like=True, frozen=True):
    """A snapshot's state, and its history's digest memo (which is not a field of it)."""

    state: RunState
    digested: int = 0
    digest: str = ""


_ENC = msgspec.msgpack.Encoder()
_STATE = msgspec.msgpack.Decoder(_Stored)
_CHUNK = msgspec.msgpack.Decoder(tuple[Message, ...])


def full_chunks(history: Chunks) -> int:
    """How many leading chunks of a history are full (and so will never change)."""
    if history and len(history[-1]) == CHUNK:
        return len(history)
    return max(len(history) - 1, 0)


def split_state(state: RunState) -> tuple[bytes, Chunks]:
    """(the state encoded without its full chunks, the full chunks)."""
    chunks = state.history.chunks
    n = full_chunks(chunks)
    digested, digest = state.history.digest_memo
    tail = msgspec.structs.replace(state, history=History(chunks[n:]))
    return _ENC.encode(_Stored(tail, digested, digest)), chunks[:n]


_DEFLATED = b"z"
"""Marks a compressed chunk; a plain one is a msgpack array, whose first byte never is 'z'."""


def encode_chunk(chunk: tuple[Message, ...]) -> bytes:
    """A full chunk's stored bytes, deflated: 64 messages of one conversation repeat their
    roles, keys, tool names and phrasing, and the chunks are a second copy of what the log
    already holds, so they should cost as little disk as they can."""
    return _DEFLATED + zlib.compress(_ENC.encode(chunk), 6)


def decode_chunk(raw: bytes) -> tuple[Message, ...]:
    """A stored chunk, deflated or not (older stores); raises msgspec.DecodeError when the
    bytes are not one."""
    if raw[:1] == _DEFLATED:
        try:
            raw = zlib.decompress(raw[1:])
        except zlib.error as exc:
            raise msgspec.DecodeError(f"a stored history chunk does not inflate: {exc}") from None
    return _CHUNK.decode(raw)


def restore_state(blob: bytes, chunks: Sequence[bytes]) -> RunState:
    """The state ``split_state`` stored, its full chunks put back in front."""
    with as_recorded():  # the limits of a run recorded before a check on them read back
        stored = _STATE.decode(blob)
    state = stored.state
    head = tuple(decode_chunk(raw) for raw in chunks)
    history = History(head + state.history.chunks).remember(stored.digested, stored.digest)
    return msgspec.structs.replace(state, history=history)
