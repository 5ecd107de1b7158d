"""The store port's contract (``store_contract.py``), run against JetStream on a real
nats-server started for these tests (each test in a namespace of its own)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings

from foldloop.store import EventStore
from foldloop.store._jetstream_store import open_jetstream
from tests.nats_servers import NatsServer, binary_problem, start_server
from tests.store_contract import StoreContract, contract_machine

pytestmark = pytest.mark.skipif(binary_problem() is not None, reason=str(binary_problem()))

_SERVER: list[NatsServer] = []


@pytest.fixture(scope="module", autouse=True)
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    server = start_server(tmp_path_factory.mktemp("nats"))
    _SERVER.append(server)
    try:
        yield server
    finally:
        _SERVER.remove(server)
        server.stop()


def _open(path: Path) -> EventStore:
    # The temp dir names the namespace: each test (and each machine run) a store of its own.
    namespace = hashlib.blake2b(str(path).encode(), digest_size=8).hexdigest()
    return open_jetstream(f"{_SERVER[0].url}/{namespace}")


class TestJetStreamStore(StoreContract):
    def open_store(self, path: Path) -> EventStore:
        return _open(path)


TestJetStreamPortMachine = contract_machine(_open).TestCase
TestJetStreamPortMachine.settings = settings(max_examples=30, stateful_step_count=30, deadline=None)
