"""What a WorkerPool and its worker processes say to each other: one JSON object a line.

The host writes requests (spawn a run, cancel or resume one) to a worker's stdin; the worker answers
on its stdout (its own logs go to stderr), and tells there of the runs it drove that ended. Only
plain data crosses: an agent travels as its name, known to the worker because it loaded the same
``module:attr`` at start.
"""

from __future__ import annotations

import msgspec

from foldloop.events._values import Limits
from foldloop.runtime._results import RunResult

__all__ = [
    "REQUESTS",
    "Cancel",
    "Cancelled",
    "Ended",
    "Failed",
    "Ready",
    "Refused",
    "Reply",
    "Request",
    "Resume",
    "Spawn",
    "SpawnMany",
    "Spawned",
    "SpawnedMany",
    "decode_reply",
    "encode",
]


class Spawn(msgspec.Struct, frozen=True, tag="spawn"):
    """Start a run of the agent named ``agent`` (answered by Spawned or Refused)."""

    id: int
    agent: str
    input: str
    run_id: str | None = None
    metadata: dict[str, str] | None = None
    parent_run_id: str | None = None


class SpawnMany(msgspec.Struct, frozen=True, tag="spawn_many"):
    """Start a run of the agent named ``agent`` on each of ``inputs``, in order, their
    starts sharing commits (answered by SpawnedMany or Refused). ``run_ids``, one an input,
    are the ids the host gave them (None: the worker makes them)."""

    id: int
    agent: str
    inputs: list[str]
    metadata: dict[str, str] | None = None
    run_ids: list[str] | None = None


class Cancel(msgspec.Struct, frozen=True, tag="cancel"):
    """Cancel run ``run_id``, which this worker drives (answered by Cancelled or Refused)."""

    id: int
    run_id: str
    reason: str = ""


class Resume(msgspec.Struct, frozen=True, tag="resume"):
    """Resume run ``run_id`` here, its limits extended by ``extend`` (answered by
    Spawned with the run's id, or Refused)."""

    id: int
    run_id: str
    extend: Limits | None = None


Request = Spawn | SpawnMany | Cancel | Resume


class Ready(msgspec.Struct, frozen=True, tag="ready"):
    """The worker's runtime is open and has recovered the orphaned runs it could."""

    owner: str
    pid: int
    recovered: list[str]


class Spawned(msgspec.Struct, frozen=True, tag="spawned"):
    """Request ``id`` started run ``run_id``: its run.started is durable."""

    id: int
    run_id: str


class SpawnedMany(msgspec.Struct, frozen=True, tag="spawned_many"):
    """Request ``id`` started a run on each input: their ids, in input order, each
    run.started durable."""

    id: int
    run_ids: list[str]


class Cancelled(msgspec.Struct, frozen=True, tag="cancelled"):
    """Request ``id``'s cancel is recorded (or the run had already finished)."""

    id: int


class Refused(msgspec.Struct, frozen=True, tag="refused"):
    """Request ``id`` raised ``error`` (a FoldloopError class name) with ``message``."""

    id: int
    error: str
    message: str


class Failed(msgspec.Struct, frozen=True, tag="failed"):
    """The worker could not start (sent instead of Ready, before it exits)."""

    message: str


class Ended(msgspec.Struct, frozen=True, tag="ended"):
    """Runs the worker drove ended (each end durable): what a wait on each returns. Sent
    unasked, in batches."""

    results: list[RunResult]


Reply = Ready | Spawned | SpawnedMany | Cancelled | Refused | Failed | Ended

_ENCODER = msgspec.json.Encoder()
_REPLIES = msgspec.json.Decoder(Reply)
REQUESTS = msgspec.json.Decoder(Request)


def encode(message: Request | Reply) -> bytes:
    """One protocol line."""
    return _ENCODER.encode(message) + b"\n"


def decode_reply(line: bytes) -> Reply:
    """A worker's line (raises msgspec.DecodeError on anything else)."""
    return _REPLIES.decode(line)
