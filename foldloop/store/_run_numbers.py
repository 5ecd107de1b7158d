"""Run numbers: stored values name their run by a number given on its first append.

``run_numbers`` maps a run id to its number and ``run_ids`` the number back; a number is
given once, the next after the last one given, and never reused. Numbers never change once
committed, so a cached one is never stale; the cache is bounded (``KEPT``) so that a store
of a million runs costs a process no more than ~10 MiB for it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from foldloop.errors import CorruptRecord
from foldloop.store._env import Tables
from foldloop.store._framing import pack_run, unpack_run
from foldloop.store._tail import KEPT_HEADS

__all__ = ["KEPT", "RunNumbers"]

KEPT = KEPT_HEADS
"""Run numbers a process keeps cached (a run's number is read from LMDB when not): a
fleet's runs in flight, as the heads (fewer, and a fleet stepping through them all starts
the cache over again and again, reading each number at each append); ~10 MiB full."""


class RunNumbers:
    """A process's cache of run numbers, and their lookups in a transaction."""

    def __init__(self, tables: Tables) -> None:
        self._tables = tables
        self._kept = KEPT
        self._numbers: dict[str, int] = {}
        self._names: dict[int, str] = {}

    def __len__(self) -> int:
        """How many numbers are cached."""
        return max(len(self._names), len(self._numbers))

    @property
    def known(self) -> Mapping[str, int]:
        """The cached numbers by run id (a live view: it changes as runs are numbered)."""
        return self._numbers

    def cached(self, run_id: str) -> int | None:
        """The run's number if this process has it cached (no LMDB read)."""
        return self._numbers.get(run_id)

    def remember(self, run_id: str, number: int) -> None:
        """Cache a committed run number; past ``kept`` the cache starts over (the runs in
        use come back at one LMDB read each)."""
        if len(self._names) >= self._kept:
            self._names.clear()
            self._numbers.clear()
        self._names[number] = run_id
        self._numbers[run_id] = number

    def name(self, txn: Any, number: int, seq: int = 0) -> str:
        """The id of the run numbered ``number`` (``seq`` names the value asking, if the
        number is unknown: a damaged store)."""
        name = self._names.get(number)
        if name is None:
            raw = txn.get(pack_run(number), db=self._tables.run_ids)
            if raw is None:
                raise CorruptRecord(
                    "?", seq, f"a stored value names run number {number}, which the store lacks"
                )
            name = bytes(raw).decode()
            self.remember(name, number)
        return name

    def stored(self, txn: Any, run_id: str) -> int | None:
        """The run's committed number as ``txn`` sees it (None before its first append)."""
        number = self._numbers.get(run_id)
        if number is not None:
            return number
        raw = txn.get(run_id.encode(), db=self._tables.run_numbers)
        if raw is None:
            return None
        number = unpack_run(raw)
        self.remember(run_id, number)
        return number

    def give(self, txn: Any, run_id: str) -> int:
        """Give the run the next free number in write transaction ``txn`` (cached only
        once the caller's transaction commits: see ``WriteTxn.run_number``)."""
        with txn.cursor(db=self._tables.run_ids) as cur:  # closed before the first write
            number = unpack_run(cur.key()) + 1 if cur.last() else 1
        key = run_id.encode()
        txn.put(key, pack_run(number), db=self._tables.run_numbers)
        txn.put(pack_run(number), key, db=self._tables.run_ids)
        return number
