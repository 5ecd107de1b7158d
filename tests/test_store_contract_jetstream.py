"""The store port's contract (``store_contract.py``), run against JetStream on a real
nats-server started for these tests (each test in a namespace of its own)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from hypothesis import settings

from foldloop.store import EventStore
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
