"""Step cost, load and fold speed, each against a reference run in the same process.

    python benchmarks/bench_steps.py            # all three
    python benchmarks/bench_steps.py --quick    # fewer repetitions
    python benchmarks/bench_steps.py --only steps   # one section: steps, load or fold

1. Sequential durable steps: a 20-step run (scripted reply + trivial non-idempotent tool)
   against the floor: a plain Python loop writing the same events to raw LMDB in one
   durable (fsync'd) transaction per step.
2. Load: 100 and 1,000 concurrent runs of 20 steps, several rounds in one runtime: aggregate
   steps/s (the median round after the first, which starts the threads), fsyncs per step;
   then the same over a WorkerPool of two worker processes (one per core) on one store.
3. Fold: rebuilding the state of a 1,000-step run from the log (no snapshot), against a
   bare cursor + decode loop over the same records.

Absolute times drift between machines and runs; the ratios are what to compare.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import os
import resource
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import lmdb
import msgspec
import structlog

import foldloop as fl
from foldloop.core import fold_events
from foldloop.events import (
    ModelRequested,
    ModelResponded,
    ToolCall,
    ToolCompleted,
    ToolRequested,
    decode_event,
    encode_event,
)
from foldloop.store import append_events
from foldloop.store._framing import decode_stored, unseal

STEPS = 20


@fl.tool(timeout=30)
def note(i: int) -> str:
    """Record a note (non-idempotent, trivial)."""
    return f"noted {i}"


def scripted(steps: int) -> fl.ScriptedLLM:
    replies = [fl.Reply(tool_calls=[fl.ToolCall("note", {"i": i})]) for i in range(steps - 1)]
    return fl.ScriptedLLM([*replies, fl.Reply(text="done")])


_AGENTS: dict[tuple[int, str], fl.Agent] = {}


def agent(steps: int, name: str = "bench") -> fl.Agent:
    """One agent per (steps, name): a runtime refuses two different agents with one name."""
    key = (steps, name)
    if key not in _AGENTS:
        _AGENTS[key] = fl.Agent(
            name=name, llm=scripted(steps), tools=[note], limits=fl.Limits(max_steps=steps + 1)
        )
    return _AGENTS[key]


def load_agent() -> fl.Agent:
    """The load's agent, by import path (``bench_steps:load_agent``) for a WorkerPool."""
    return agent(STEPS, "load")


class Floor:
    """The hand-made floor: one durable LMDB transaction per step with the same events."""

    def __init__(self, directory: Path) -> None:
        self.env = lmdb.open(str(directory), map_size=1 << 30, sync=True, metasync=True, max_dbs=2)
        self.db = self.env.open_db(b"log")
        self.position = 0
        self.runs = 0

    def run(self, steps: int) -> float:
        """µs per step of one run of ``steps`` steps."""
        self.runs += 1
        tag = f"r{self.runs}".encode()
        start = time.perf_counter()
        for step in range(1, steps + 1):
            events = [
                ModelRequested(step=step, prompt_digest="0" * 32),
                ModelResponded(
                    step=step,
                    tool_calls=(ToolCall(id=f"c{step}", name="note", args='{"i":1}'),),
                ),
                ToolRequested(call_id=f"c{step}", tool="note", args='{"i":1}', step=step),
                ToolCompleted(call_id=f"c{step}", result=f"noted {step}"),
            ]
            with self.env.begin(write=True) as txn:
                for event in events:
                    self.position += 1
                    key = self.position.to_bytes(8, "big") + tag
                    txn.put(key, encode_event(event), db=self.db, append=True)
        return (time.perf_counter() - start) / steps * 1e6


def foldloop_run(rt: fl.Runtime, a: fl.Agent, steps: int) -> float:
    """µs per step of one run, spawn to result.

    After the result, anything still queued for the next group commit (a non-durable
    op) is flushed, untimed, so that its fsync does not land inside the next floor run.
    """
    start = time.perf_counter()
    result = rt.spawn(a, "go").wait(timeout=120)
    elapsed = time.perf_counter() - start
    assert result.ok and result.steps == steps, result
    rt.store.submit(lambda w: None).wait()
    return elapsed / steps * 1e6


def bench_sequential(quick: bool) -> None:
    pairs = 15 if quick else 60
    a = agent(STEPS)
    with tempfile.TemporaryDirectory() as d, fl.Runtime.open(Path(d) / "fl") as rt:
        floor = Floor(Path(d) / "floor")
        for _ in range(3):  # warm up imports, actors, pools, page cache
            floor.run(STEPS)
            foldloop_run(rt, a, STEPS)
        # Alternate one floor run and one foldloop run, so disk-speed drift hits both alike.
        samples = [(floor.run(STEPS), foldloop_run(rt, a, STEPS)) for _ in range(pairs)]
        floor.env.close()
    ratios = sorted(ours / ref for ref, ours in samples)
    floor_us = statistics.median(ref for ref, _ in samples)
    ours_us = statistics.median(ours for _, ours in samples)
    q1, q3 = ratios[len(ratios) // 4], ratios[3 * len(ratios) // 4]
    print(f"1. sequential durable steps ({STEPS}-step run, non-idempotent tool), {pairs} pairs")
    print(f"   floor (raw LMDB, 1 durable txn/step):  {floor_us:8.1f} us/step (median)")
    print(f"   foldloop:                              {ours_us:8.1f} us/step (median)")
    print(
        f"   ratio foldloop/floor, paired:          {statistics.median(ratios):8.2f}x "
        f"(quartiles {q1:.2f}-{q3:.2f})"
    )


def bench_load(quick: bool) -> None:
    _one_at_a_time(10 if quick else 50)
    for concurrent, rounds in ((100, 7), (1000, 3)):
        _load(concurrent, 10 if quick else STEPS, 2 if quick else rounds)
    # What a host driving a thousand runs in one process may set (README, WorkerPool):
    # threads waiting for the interpreter lock wake every switch interval to ask for it.
    default = sys.getswitchinterval()
    sys.setswitchinterval(0.05)
    try:
        _load(1000, 10 if quick else STEPS, 2 if quick else 3, note=", switch interval 0.05 s")
    finally:
        sys.setswitchinterval(default)
    for concurrent, rounds in ((100, 7), (1000, 3)):
        _pool_load(concurrent, 2 if quick else rounds, processes=2)


def _cpu_line(usage0: Any, usage1: Any, steps: int) -> str:
    cpu = usage1.ru_utime + usage1.ru_stime - usage0.ru_utime - usage0.ru_stime
    system = usage1.ru_stime - usage0.ru_stime
    switches = usage1.ru_nvcsw - usage0.ru_nvcsw + usage1.ru_nivcsw - usage0.ru_nivcsw
    return (
        f"{cpu / steps * 1e6:6.0f} us ({system / steps * 1e6:.0f} us in the kernel), "
        f"{switches / steps:.1f} context switches a step"
    )


def _one_at_a_time(runs: int) -> None:
    """The reference for the load's CPU: the same runs, one after another."""
    with tempfile.TemporaryDirectory() as d, fl.Runtime.open(Path(d) / "fl") as rt:
        a = agent(STEPS, "load")
        rt.spawn(a, "warm").wait(timeout=60)
        usage0 = resource.getrusage(resource.RUSAGE_SELF)
        for _ in range(runs):
            assert rt.spawn(a, "go").wait(timeout=60).ok
        usage1 = resource.getrusage(resource.RUSAGE_SELF)
    print(f"2. load reference: {runs} runs x {STEPS} steps, one at a time")
    print(f"   CPU a step:       {_cpu_line(usage0, usage1, runs * STEPS)}")


def _load(concurrent: int, steps: int, rounds: int, note: str = "") -> None:
    """``concurrent`` runs at once, ``rounds`` times in one runtime: steps/s of each round
    (the first one starts the actor threads, later ones find them pooled, as a busy
    service does), fsyncs per step, and step latency from the log (the time between a
    run's consecutive model.requested events)."""
    with tempfile.TemporaryDirectory() as d, fl.Runtime.open(Path(d) / "fl") as rt:
        a = agent(steps, "load")
        rt.spawn(a, "warm").wait(timeout=60)
        commits0 = rt.store.writer.commits
        usage0 = resource.getrusage(resource.RUSAGE_SELF)
        rates, handles = _rounds(rt, a, concurrent, steps, rounds)
        usage1 = resource.getrusage(resource.RUSAGE_SELF)
        total = concurrent * steps * rounds
        _report(
            f"2. load: {concurrent} concurrent runs x {steps} steps, {rounds} rounds{note}",
            rates,
            _latencies(rt, handles),
            rt.store.writer.commits - commits0,
            total,
            _cpu_line(usage0, usage1, total),
        )


def _pool_load(concurrent: int, rounds: int, processes: int) -> None:
    """``_load`` over a WorkerPool: runs spawned by the host, driven by ``processes``
    worker processes on one store. Commits are counted by LMDB's transaction id (every
    process's write transactions), CPU over the host and the workers."""
    with (
        tempfile.TemporaryDirectory() as d,
        fl.WorkerPool(
            Path(d) / "fl", agents=["bench_steps:load_agent"], processes=processes
        ) as pool,
    ):
        for _ in range(processes):
            assert pool.spawn("load", "warm").wait(timeout=60).ok
        env = pool.runtime.store.env
        txn0 = env.info()["last_txnid"]
        cpu0 = _cpu_seconds([w.pid for w in pool.workers])
        rates, handles = _rounds(pool, "load", concurrent, STEPS, rounds)
        cpu = _cpu_seconds([w.pid for w in pool.workers]) - cpu0
        total = concurrent * STEPS * rounds
        _report(
            f"2. load over a WorkerPool of {processes} processes: {concurrent} concurrent runs "
            f"x {STEPS} steps, {rounds} rounds",
            rates,
            _latencies(pool.runtime, handles),
            env.info()["last_txnid"] - txn0,
            total,
            f"{cpu / total * 1e6:6.0f} us (host and workers)",
        )


def _rounds(
    rt: fl.Runtime | fl.WorkerPool, a: fl.Agent | str, concurrent: int, steps: int, rounds: int
) -> tuple[list[float], list[fl.types.RunHandle]]:
    """``rounds`` load rounds: the steps/s of each, and every run's handle."""
    rates: list[float] = []
    handles: list[fl.types.RunHandle] = []
    for _ in range(rounds):
        rate, mine = _load_round(rt, a, concurrent, steps)
        rates.append(rate)
        handles += mine
    return rates, handles


def _report(
    title: str,
    rates: list[float],
    latency: tuple[float, float],
    commits: int,
    total: int,
    cpu: str,
) -> None:
    """A load section's lines: rates (the median round after the first), p50/p99 step
    latency in µs, commits for ``total`` steps, and the CPU line."""
    later = sorted(rates[1:]) or rates
    p50, p99 = latency
    print(title)
    print(
        f"   aggregate:        {statistics.median(later):8.0f} steps/s (median of rounds "
        f"2-{len(rates)}: {later[0]:.0f}-{later[-1]:.0f}; the first: {rates[0]:.0f})"
    )
    print(f"   step latency:     p50 {p50 / 1000:6.1f} ms, p99 {p99 / 1000:6.1f} ms")
    print(f"   commits (fsyncs): {commits} for {total} steps = {commits / total:.3f} per step")
    print(f"   CPU a step:       {cpu}")


def _cpu_seconds(pids: list[int]) -> float:
    """User + system CPU of this process and of ``pids`` (Linux: /proc/PID/stat)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    total = usage.ru_utime + usage.ru_stime
    tick = os.sysconf("SC_CLK_TCK")
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
    return total


def _latencies(rt: fl.Runtime, handles: list[fl.types.RunHandle]) -> tuple[float, float]:
    """p50 and p99 µs between a run's consecutive model.requested events."""
    latencies: list[float] = []
    for h in handles:
        asks = [r.at for r in rt.events(h.id) if r.type == "model.requested"]
        latencies += [(b - a_) / 1e3 for a_, b in itertools.pairwise(asks)]
    latencies.sort()
    return latencies[len(latencies) // 2], latencies[int(len(latencies) * 0.99)]


def _load_round(
    rt: fl.Runtime | fl.WorkerPool, a: fl.Agent | str, concurrent: int, steps: int
) -> tuple[float, list[fl.types.RunHandle]]:
    """One round: ``concurrent`` runs spawned from 100 threads, all waited for."""
    handles: list[fl.types.RunHandle] = []
    lock = threading.Lock()
    start = time.perf_counter()

    def spawn(n: int) -> None:
        mine: list[fl.types.RunHandle] = [rt.spawn(a, "go") for _ in range(n)]  # type: ignore[arg-type]
        with lock:
            handles.extend(mine)

    spawners = 100
    threads = [
        threading.Thread(target=spawn, args=(concurrent // spawners,)) for _ in range(spawners)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    results = [h.wait(timeout=600) for h in handles]
    elapsed = time.perf_counter() - start
    assert all(r.ok for r in results)
    return concurrent * steps / elapsed, handles


def bench_fold(quick: bool) -> None:
    reps = 3 if quick else 7
    with (
        tempfile.TemporaryDirectory() as d,
        fl.Runtime.open(Path(d) / "fl", snapshot_every=0) as rt,
    ):
        steps = 1000
        run = rt.spawn(agent(steps, "long"), "go")
        assert run.wait(timeout=600).ok
        _fold_vs_bare(rt.store, run.id, f"a {steps}-step run", reps)
        data = Path(d) / "fl" / "data.mdb"
        per_step = data.stat().st_size / steps
        print(f"   data.mdb: {per_step:.0f} bytes per step (file size, free pages included)")
    with (
        tempfile.TemporaryDirectory() as d,
        fl.Runtime.open(Path(d) / "fl", snapshot_every=0) as rt,
    ):
        run_id = _synthetic_run(rt.store, 100_000)
        _fold_vs_bare(rt.store, run_id, "a 100,000-event run (written by the store)", 3)
        _ = msgspec  # keeps the import for readers comparing encoders


def _synthetic_run(store: Any, events: int) -> str:
    """Append one valid run of about ``events`` events (20-step-run shapes), 4,000 at a time."""
    run_id = "synthetic"
    started = fl.events.RunStarted(agent="a", input="go")
    seq = len(append_events(store, run_id, [started], expected_seq=0, at=1))
    step = 0
    while seq < events - 1:
        batch: list[Any] = []
        for _ in range(1000):
            step += 1
            call = f"c{step}"
            batch += [
                ModelRequested(step=step, prompt_digest="0" * 32),
                ModelResponded(
                    step=step, tool_calls=(ToolCall(id=call, name="note", args='{"i":1}'),)
                ),
                ToolRequested(call_id=call, tool="note", args='{"i":1}', step=step),
                ToolCompleted(call_id=call, result=f"noted {step}"),
            ]
        seq += len(append_events(store, run_id, batch, expected_seq=seq, at=1))
    return run_id


def bare_decode(store: Any) -> int:
    """The reference of the fold: a bare cursor over the whole log, each stored value's
    checksum checked, its envelope and each of its events decoded; returns how many
    events it read."""

    def walk(txn: Any) -> int:
        count = 0
        for _key, value in txn.cursor(db=store.tables.log):
            _prev, body = unseal(value)
            for raw in decode_stored(body).events:
                decode_event(bytes(raw))
                count += 1
        return count

    return int(store.read_txn(walk))


def quiet_threads() -> None:
    """Wait (up to 10 s) until the threads an earlier section left are gone: pool threads
    ending together would land in the middle of a timing."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and threading.active_count() > 8:
        time.sleep(0.1)


def _fold_vs_bare(store: Any, run_id: str, what: str, reps: int) -> None:
    n = store.head(run_id)

    def read() -> int:
        return len(store.read_events(run_id)[0])

    def ours() -> int:  # what Runtime.state does when there is no snapshot
        return int(store.consume_events(run_id, lambda pairs: fold_events(run_id, pairs).seq))

    quiet_threads()
    t_bare = t_read = t_ours = float("inf")
    for _ in range(reps):  # alternated, so that drift touches all three alike
        t_bare = min(t_bare, _timed(lambda: bare_decode(store)))
        t_read = min(t_read, _timed(read))
        t_ours = min(t_ours, _timed(ours))
    print(f"3. fold of {what} ({n} events, no snapshot)")
    print(f"   bare cursor+checksum+decode: {n / t_bare:10.0f} events/s")
    print(f"   read (store.read_events):    {n / t_read:10.0f} events/s ({t_bare / t_read:.0%})")
    print(f"   read + fold (Runtime.state): {n / t_ours:10.0f} events/s")
    print(f"   ratio fold/bare:             {t_bare / t_ours:10.0%}")


def _timed(fn: object) -> float:
    start = time.perf_counter()
    fn()  # type: ignore[operator]
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    parser.add_argument(
        "--only", choices=("steps", "load", "fold"), help="run one section (default: all)"
    )
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    print(
        f"foldloop {fl.__version__}, python {sys.version.split()[0]}, {time.strftime('%Y-%m-%d')}"
    )
    # The fold before the load: after a thousand runs, the same process read the log at 60%
    # of the bare loop where a fresh one read it at 102-126% (not their threads, which are
    # gone by then; what else they leave behind is not pinned down).
    sections = {"steps": bench_sequential, "fold": bench_fold, "load": bench_load}
    for name, bench in sections.items():
        if args.only in (None, name):
            bench(args.quick)


if __name__ == "__main__":
    main()
