"""The store port's contract (``store_contract.py``), run against the LMDB store."""

from __future__ import annotations

from pathlib import Path

from hypothesis import settings

from foldloop.store import EventStore, open_store
from tests.store_contract import StoreContract, contract_machine


def _open(path: Path) -> EventStore:
    # A tiny index threshold: reads cross indexed records and the unindexed tail.
    return open_store(path, map_size=1 << 20, index_every=4)


class TestLmdbStore(StoreContract):
    def open_store(self, path: Path) -> EventStore:
        return _open(path)


TestLmdbPortMachine = contract_machine(_open).TestCase
TestLmdbPortMachine.settings = settings(max_examples=30, stateful_step_count=30, deadline=None)
