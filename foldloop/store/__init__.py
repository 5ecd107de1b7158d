"""The log: an append-only, checksummed, hash-chained event store on LMDB.

``EventLog`` is the narrow protocol the runtime depends on; ``LmdbStore`` is the embedded
implementation (one directory, several processes, no server).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

from foldloop.events.catalogue import KnownEvent
from foldloop.events.recorded import Recorded
from foldloop.store.framing import Lease
from foldloop.store.lmdb_store import (
    DEFAULT_MAP_SIZE,
    MAX_MAP_SIZE,
    LmdbStore,
    WriteTxn,
    encode_all,
    open_store,
)
from foldloop.store.owners import OwnerLock, owner_alive
from foldloop.store.writer import WriteOp

__all__ = [
    "DEFAULT_MAP_SIZE",
    "EventLog",
    "Lease",
    "LmdbStore",
    "MAX_MAP_SIZE",
    "OwnerLock",
    "WriteOp",
    "WriteTxn",
    "encode_all",
    "open_store",
    "owner_alive",
]


@runtime_checkable
class EventLog(Protocol):
    """**Protocol:** what the runtime needs from a log (LMDB now; JetStream later)."""

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
        """Append atomically after ``expected_seq``; durable when it returns."""
        ...

    def read(self, run_id: str, from_seq: int = 1, to_seq: int | None = None) -> list[Recorded]:
        """One run's records in seq order."""
        ...

    def read_all(self, from_position: int = 1, limit: int | None = None) -> list[Recorded]:
        """The whole log in position order."""
        ...

    def head(self, run_id: str) -> int:
        """The run's last seq (0 when absent)."""
        ...

    def add_listener(self, fn: Callable[[list[Recorded]], None]) -> Callable[[], None]:
        """Be told of every batch this process commits."""
        ...

    def close(self) -> None:
        """Release the store."""
        ...
