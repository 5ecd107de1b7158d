"""The log: an append-only, checksummed, hash-chained event store.

``EventStore`` (``port``) is the store port: every operation the actors and the runtime
need, backend-neutral. ``LmdbStore`` is the embedded implementation (one directory,
several processes, no server).
"""

from __future__ import annotations

from foldloop.store.approvals import ApprovalChanges, ApprovalRecord
from foldloop.store.checkpoints import Checkpoint
from foldloop.store.framing import Lease
from foldloop.store.lmdb_store import LmdbStore, open_store
from foldloop.store.mapped import DEFAULT_MAP_SIZE, MAX_MAP_SIZE
from foldloop.store.owners import OwnerLock, owner_alive
from foldloop.store.payloads import Payload, encode_all
from foldloop.store.port import EventStore, OwnerHold, Pending, Snapshot, append_events
from foldloop.store.write_txn import WriteTxn
from foldloop.store.writer import WriteOp

__all__ = [
    "DEFAULT_MAP_SIZE",
    "ApprovalChanges",
    "ApprovalRecord",
    "Checkpoint",
    "EventStore",
    "Lease",
    "LmdbStore",
    "MAX_MAP_SIZE",
    "OwnerHold",
    "OwnerLock",
    "Payload",
    "Pending",
    "Snapshot",
    "WriteOp",
    "WriteTxn",
    "append_events",
    "encode_all",
    "open_store",
    "owner_alive",
]
