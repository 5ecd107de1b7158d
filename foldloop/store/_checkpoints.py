"""Projection checkpoints: where each named projection stands in the log.

A checkpoint is the projection's position and, for a stored projection, its state,
written together in one LMDB transaction: a restart resumes from a (position, state)
pair that belong together, so no event is applied twice nor skipped. A checkpoint only
moves forward (``advance``), so two processes folding the same projection cannot
drag the stored one back.
"""

from __future__ import annotations

import msgspec

__all__ = ["Checkpoint", "ProjectionFailure", "decode_checkpoint", "encode_checkpoint"]


class ProjectionFailure(msgspec.Struct, frozen=True, kw_only=True):
    """Why a projection stopped: the record it could not apply and what ``apply`` raised."""

    position: int
    run_id: str
    seq: int
    event_type: str
    error: str
    at: int


class Checkpoint(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """A projection's stored position, state and, if it stopped, why."""

    name: str
    version: int = 1
    position: int = 0
    state: bytes | None = None
    failure: ProjectionFailure | None = None
    updated_at: int = 0


_ENC = msgspec.msgpack.Encoder()
_DEC = msgspec.msgpack.Decoder(Checkpoint)


def encode_checkpoint(checkpoint: Checkpoint) -> bytes:
    """The checkpoint's stored bytes."""
    return _ENC.encode(checkpoint)


def decode_checkpoint(raw: bytes) -> Checkpoint:
    """A stored checkpoint (raises msgspec.DecodeError when the bytes are not one)."""
    return _DEC.decode(raw)
