"""How a store's LMDB environment is opened, and the named databases it holds.

One place for both, so that creating a store (``create``) and opening it (``lmdb_store``)
cannot disagree.
"""

from __future__ import annotations

from pathlib import Path

import lmdb

from foldloop.errors import StoreError

__all__ = ["DATABASES", "initialise", "open_databases", "open_env"]

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


def open_env(path: Path, *, map_size: int) -> lmdb.Environment:
    """Open the environment in the existing directory ``path``."""
    try:
        return lmdb.open(
            str(path),
            map_size=map_size,
            max_dbs=MAX_DBS,
            max_readers=1024,
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
        raise StoreError(f"cannot open the store at {str(path)!r}: {exc}") from None


def open_databases(env: lmdb.Environment) -> dict[bytes, lmdb._Database]:
    """Every named database of ``env``, by name (creating those it lacks)."""
    return {name: env.open_db(name, create=True) for name in DATABASES}


def initialise(path: Path, *, map_size: int) -> None:
    """Make a new environment in ``path`` with all its databases, and close it."""
    env = open_env(path, map_size=map_size)
    try:
        open_databases(env)
    except lmdb.Error as exc:
        raise StoreError(f"cannot create the store at {str(path)!r}: {exc}") from None
    finally:
        env.close()
