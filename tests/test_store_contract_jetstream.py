"""The store port's contract (``store_contract.py``), run against JetStream on a real
nats-server started for these tests (each test in a namespace of its own)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings

from foldloop.store import Checkpoint, EventStore
from foldloop.store import _nats_tables as nats_tables
from foldloop.store._jetstream_store import open_jetstream
from tests.nats_servers import NatsServer
from tests.store_contract import StoreContract, contract_machine

_SERVER: list[NatsServer] = []


@pytest.fixture(autouse=True)
def _server(nats_server: NatsServer) -> None:
    _SERVER[:] = [nats_server]


def _open(path: Path) -> EventStore:
    # The temp dir names the namespace: each test (and each machine run) a store of its own.
    namespace = hashlib.blake2b(str(path).encode(), digest_size=8).hexdigest()
    return open_jetstream(f"{_SERVER[0].url}/{namespace}")


class TestJetStreamStore(StoreContract):
    def open_store(self, path: Path) -> EventStore:
        return _open(path)


TestJetStreamPortMachine = contract_machine(_open).TestCase
TestJetStreamPortMachine.settings = settings(max_examples=30, stateful_step_count=30, deadline=None)


def test_a_listing_a_lagging_replica_cuts_short_is_finished_from_the_leader(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past 1,024 keys a bucket is listed by walking its stream with direct gets, which any
    replica answers; one behind the leader ends the walk early. A lagging replica of a
    three-node cluster cannot be made to order here: its empty answer past seq 600 is."""
    store = _open(tmp_path)
    try:
        names = [f"p{i:04d}" for i in range(1_100)]
        for op in [store.put_checkpoint(Checkpoint(name=n, position=1)) for n in names]:
            op.wait()
        real = nats_tables.direct_batch

        async def lagging(nc: Any, stream: str, request: dict[str, Any]) -> list[Any]:
            if request.get("seq", 0) > 600:
                return []
            return await real(nc, stream, request)

        monkeypatch.setattr(nats_tables, "direct_batch", lagging)
        assert sorted(c.name for c in store.checkpoints()) == names
    finally:
        store.close()
