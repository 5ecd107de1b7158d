"""The log: an append-only, checksummed, hash-chained event store.

``EventStore`` (``port``) is the store port: every operation the actors and the runtime
need, backend-neutral. ``LmdbStore`` is the embedded implementation (one directory,
several processes, no server); ``connect_store`` also opens one on NATS JetStream
(``nats://...``, shared by many machines).
"""

from __future__ import annotations

from foldloop.store._answer_by import answer_by
from foldloop.store._approvals import ApprovalChanges, ApprovalRecord
from foldloop.store._checkpoints import Checkpoint
from foldloop.store._framing import Lease
from foldloop.store._lmdb_store import LmdbStore, open_store
from foldloop.store._mapped import DEFAULT_MAP_SIZE, MAX_MAP_SIZE
from foldloop.store._open import connect_store
from foldloop.store._owners import OwnerLock, owner_alive
from foldloop.store._payloads import MAX_EVENT_BYTES, Payload, encode_all
from foldloop.store._port import (
    EventStore,
    OwnerHold,
    Pending,
    RemoteCancel,
    Snapshot,
    WorkItem,
    WorkQueue,
    append_events,
)

__all__ = [
    "MAX_EVENT_BYTES",
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
    "RemoteCancel",
    "Snapshot",
    "WorkItem",
    "WorkQueue",
    "answer_by",
    "append_events",
    "connect_store",
    "encode_all",
    "open_store",
    "owner_alive",
]
