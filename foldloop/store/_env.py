"""How a store's LMDB environment is opened, and the named databases it holds.

One place for both, so that creating a store (``create``) and opening it (``lmdb_store``)
cannot disagree.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lmdb
import msgspec

from foldloop.errors import StoreAccessError, StoreCorrupted, StoreError

__all__ = [
    "DATABASES",
    "Tables",
    "UNDECODABLE",
    "initialise",
    "lmdb_failure",
    "open_databases",
    "open_env",
    "undecodable",
]

DATABASES = (
    b"log",
    b"index",
    b"leases",
    b"snapshots",
    b"meta",
    b"approvals",
    b"tokens",
    b"approvals_open",
    b"checkpoints",
    b"history_chunks",
    b"run_numbers",
    b"run_ids",
)
"""Every named database of a store (lmdb_store's docstring says what each holds)."""
MAX_DBS = 16
MAX_READERS = 4096
"""Read transactions open at once across every process of a store (64 bytes each in
lock.mdb); a read past them waits for a slot (``MappedEnv.begin``)."""


def open_env(path: Path, *, map_size: int) -> lmdb.Environment:
    """Open the environment in the existing directory ``path``."""
    try:
        return lmdb.open(
            str(path),
            map_size=map_size,
            max_dbs=MAX_DBS,
            max_readers=MAX_READERS,
            subdir=True,
            sync=True,
            metasync=True,
            writemap=False,
            map_async=False,
            readahead=False,
            meminit=True,
            lock=True,
            create=False,  # the directory exists already; a missing one is an error
            mode=0o600,
            max_spare_txns=0,
        )
    except lmdb.Error as exc:
        raise lmdb_failure(path, "open", exc) from None


def lmdb_failure(path: Path, doing: str, exc: lmdb.Error, *, then: str = "") -> StoreError:
    """What an LMDB failure means for the host: damage found in the store's pages, or the
    system refusing (permissions, a full disk); ``then`` ends the message (what became of
    the work, say)."""
    where = f"the store at {str(path)!r}"
    # A transaction goes bad (MDB_BAD_TXN) only after LMDB met a damaged page in it.
    damage = lmdb.CorruptedError | lmdb.PageNotFoundError | lmdb.InvalidError | lmdb.BadTxnError
    if isinstance(exc, damage):
        # damage met opening it leaves nothing to read; met later, other runs may still read
        readable = (
            "" if doing == "open" else " (`foldloop doctor` lists the runs it can still read)"
        )
        return StoreCorrupted(
            f"{where} is damaged: LMDB could not {doing} it ({exc}){then}",
            advice=f"restore it from a backup{readable}",
        )
    if isinstance(exc, lmdb.ReadersFullError):
        return StoreAccessError(
            f"LMDB could not {doing} {where}: every reader slot is taken ({exc}): more "
            f"threads read it at once, across its processes, than its {MAX_READERS} slots, "
            f"for longer than a read waits for one; read from fewer threads at once{then}"
        )
    return StoreAccessError(
        f"LMDB could not {doing} {where} ({exc}): is the disk full, or are its files not "
        f"this user's to read and write? Free space or fix their permissions{then}"
    )


UNDECODABLE = (msgspec.MsgspecError, struct.error, UnicodeDecodeError, IndexError, OverflowError)
"""What reading a damaged key, index entry or table row raises (values have checksums)."""


def undecodable(path: Path, exc: Exception) -> StoreCorrupted:
    """A read met stored data that does not decode: damage past the values' checksums."""
    return StoreCorrupted(
        f"the store at {str(path)!r} holds data that does not decode ({exc}); "
        "restore it from a backup (`foldloop doctor` lists the runs it can read)"
    )


@dataclass(frozen=True, slots=True)
class Tables:
    """The handles of a store's named databases (``lmdb_store`` says what each holds)."""

    log: Any
    index: Any
    leases: Any
    snapshots: Any
    meta: Any
    approvals: Any
    tokens: Any
    approvals_open: Any
    checkpoints: Any
    history_chunks: Any
    run_numbers: Any
    run_ids: Any


def open_databases(env: lmdb.Environment) -> Tables:
    """Every named database of ``env`` (creating those it lacks)."""
    return Tables(**{name.decode(): env.open_db(name, create=True) for name in DATABASES})


def initialise(path: Path, *, map_size: int) -> None:
    """Make a new environment in ``path`` with all its databases, and close it."""
    env = open_env(path, map_size=map_size)
    try:
        open_databases(env)
    except lmdb.Error as exc:
        raise lmdb_failure(path, "create", exc) from None
    finally:
        env.close()
