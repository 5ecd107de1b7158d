"""Failover on a three-node JetStream cluster (replicas=3): three `foldloop worker`
processes drive 300 runs of a non-idempotent tool with an external ledger; one worker and
one NATS node are SIGKILLed mid-way. Every run completes, no ledger entry is written
twice, every run's log is whole (gapless, verified by replay)."""

from __future__ import annotations

import asyncio
import collections
import os
import subprocess
import sys
from pathlib import Path

import nats
import pytest

import foldloop as fl
from foldloop.store import Checkpoint, Lease
from foldloop.store import _nats_tables as nats_tables
from foldloop.store._jetstream_store import open_jetstream
from tests.failover_agents import payer
from tests.nats_servers import binary_problem, start_cluster
from tests.waiting import wait_until

RUNS = 300
ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(binary_problem() is not None, reason=str(binary_problem()))


def _log_leader(url: str) -> str:
    """The name of the node leading the store's event stream."""

    async def ask() -> str:
        nc = await nats.connect(url)
        try:
            info = await nc.jetstream().stream_info("fl_failover_log")
            assert info.cluster is not None and info.cluster.leader
            return str(info.cluster.leader)
        finally:
            await nc.close()

    return asyncio.run(ask())


def _ledger(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


@pytest.mark.timeout(300)
def test_a_worker_and_a_nats_node_killed_mid_way_lose_nothing(tmp_path: Path) -> None:
    nodes = start_cluster(tmp_path / "cluster")
    url = (
        ",".join(n.url for n in nodes).replace(",nats://", ",") + "/failover?replicas=3&owner_ttl=2"
    )
    ledger = tmp_path / "ledger"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "FOLDLOOP_TEST_LEDGER": str(ledger)}
    command = [sys.executable, "-m", "foldloop", "worker", url]
    command += ["--agents", "tests.failover_agents:payer"]
    workers: list[subprocess.Popen[bytes]] = []
    try:
        with fl.Runtime.open(url) as host:  # makes the store (replicated) and enqueues
            workers = [subprocess.Popen(command, env=env, cwd=ROOT) for _ in range(3)]
            handles = host.spawn_many(payer, [f"p{i}" for i in range(RUNS)])
            wait_until(lambda: len(_ledger(ledger)) >= RUNS // 3, 120, "a third of the charges")
            workers[0].kill()
            leader = _log_leader(nodes[0].url)  # its loss puts appends in flight to the test
            next(n for n in nodes if n.name == leader).kill()
            results = [h.wait(timeout=240) for h in handles]
        assert [r.status for r in results] == [fl.RunStatus.COMPLETED] * RUNS
        charged = collections.Counter(_ledger(ledger))
        assert max(charged.values()) == 1, "a non-idempotent charge ran twice"
        for worker in workers[1:]:
            worker.terminate()
            assert worker.wait(30) == 0
        with fl.Runtime.open(url, agents=[payer]) as checker:
            for handle in handles:
                state = checker.verify(handle.id)  # replayed whole: no event missing
                events = [r.event for r in checker.events(handle.id)]
                done = [e for e in events if e.type == "tool.completed"]
                lost = [e for e in events if e.type == "tool.failed"]
                assert len(done) + len(lost) == 1, (handle.id, [e.type for e in events])
                assert all(e.kind == "interrupted" for e in lost)  # type: ignore[attr-defined]
                if done:  # charged exactly once; an interrupted call at most once
                    assert charged[state.input] == 1
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
        for node in nodes:
            node.stop()


@pytest.mark.timeout(120)
def test_a_listing_a_catching_up_replica_answers_empty_asks_the_leader(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Any replica answers a direct get, and one catching up after a pause answers that
    there is nothing (a probe saw checkpoints() and leases() come back empty so): a listing
    that finds nothing asks the stream's leader, and reads on from what it says. A replica
    cannot be made to lag to order here: direct gets that find nothing stand for it."""
    nodes = start_cluster(tmp_path / "cluster")
    try:
        url = ",".join(n.url for n in nodes).replace(",nats://", ",") + "/lists?replicas=3"
        store = open_jetstream(url)
        try:
            names = [f"p{i:04d}" for i in range(1_100)]  # past a direct get's 1,024 keys
            for op in [store.put_checkpoint(Checkpoint(name=n, position=1)) for n in names]:
                op.wait()
            for op in [store.delete_checkpoint(n) for n in names[::3]]:
                op.wait()
            store.acquire_lease("r", "x").wait()

            async def catching_up(nc: object, stream: str, request: object) -> list[object]:
                return []

            monkeypatch.setattr(nats_tables, "direct_batch", catching_up)
            kept = sorted(set(names) - set(names[::3]))
            assert sorted(c.name for c in store.checkpoints()) == kept
            assert store.leases() == {"r": Lease("x", 1)}
        finally:
            store.close()
    finally:
        for node in nodes:
            node.stop()
