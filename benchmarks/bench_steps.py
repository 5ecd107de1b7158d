"""Step cost, load and fold speed, each against a reference run in the same process.

    python benchmarks/bench_steps.py            # all three
    python benchmarks/bench_steps.py --quick    # fewer repetitions

1. Sequential durable steps: a 20-step run (scripted reply + trivial non-idempotent tool)
   against the floor: a plain Python loop writing the same events to raw LMDB in one
   durable (fsync'd) transaction per step.
2. Load: 100 concurrent runs of 20 steps: aggregate steps/s and fsyncs (commits) per step.
3. Fold: rebuilding the state of a 1,000-step run from the log (no snapshot), against a
   bare cursor + decode loop over the same records.

Absolute times drift between machines and runs; the ratios are what to compare.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import lmdb
import msgspec
import structlog

import foldloop as fl
from foldloop.core import fold
from foldloop.events import (
    ModelRequested,
    ModelResponded,
    ModelToolCall,
    ToolCompleted,
    ToolRequested,
    decode_event,
    encode_event,
)
from foldloop.store.framing import decode_frame, unseal

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


def floor_us_per_step(directory: Path, steps: int, runs: int) -> float:
    """The hand-made floor: one durable LMDB transaction per step with the same events."""
    env = lmdb.open(str(directory), map_size=1 << 30, sync=True, metasync=True, max_dbs=2)
    db = env.open_db(b"log")
    position = 0
    times = []
    for r in range(runs):
        start = time.perf_counter()
        for step in range(1, steps + 1):
            events = [
                ModelRequested(step=step, prompt_digest="0" * 32),
                ModelResponded(
                    step=step,
                    tool_calls=(ModelToolCall(id=f"c{step}", name="note", args='{"i":1}'),),
                ),
                ToolRequested(call_id=f"c{step}", tool="note", args='{"i":1}', step=step),
                ToolCompleted(call_id=f"c{step}", result=f"noted {step}"),
            ]
            with env.begin(write=True) as txn:
                for event in events:
                    position += 1
                    key = position.to_bytes(8, "big") + f"r{r}".encode()
                    txn.put(key, encode_event(event), db=db, append=True)
        times.append((time.perf_counter() - start) / steps * 1e6)
    env.close()
    return statistics.median(times)


def foldloop_us_per_step(rt: fl.Runtime, steps: int, runs: int) -> float:
    times = []
    a = agent(steps)
    for _ in range(runs):
        start = time.perf_counter()
        result = rt.spawn(a, "go").wait(timeout=120)
        elapsed = time.perf_counter() - start
        assert result.ok and result.steps == steps, result
        times.append(elapsed / steps * 1e6)
    return statistics.median(times)


def bench_sequential(quick: bool) -> None:
    runs = 5 if quick else 15
    with tempfile.TemporaryDirectory() as d:
        rounds = []
        with fl.Runtime.open(Path(d) / "fl") as rt:
            foldloop_us_per_step(rt, STEPS, 2)  # warm up imports, actors, pools
            for i in range(3):
                floor = floor_us_per_step(Path(d) / f"floor{i}", STEPS, runs)
                ours = foldloop_us_per_step(rt, STEPS, runs)
                rounds.append((floor, ours))
        floor = statistics.median(f for f, _ in rounds)
        ours = statistics.median(o for _, o in rounds)
        print("1. sequential durable steps (20-step run, non-idempotent tool)")
        print(f"   floor (raw LMDB, 1 durable txn/step):  {floor:8.1f} us/step")
        print(f"   foldloop:                              {ours:8.1f} us/step")
        print(f"   ratio foldloop/floor:                  {ours / floor:8.2f}x")


def bench_load(quick: bool) -> None:
    concurrent = 100
    steps = 10 if quick else STEPS
    with tempfile.TemporaryDirectory() as d, fl.Runtime.open(Path(d) / "fl") as rt:
        a = agent(steps, "load")
        rt.spawn(a, "warm").wait(timeout=60)
        commits0 = rt.store.writer.commits
        handles: list[fl.RunHandle] = []
        start = time.perf_counter()
        lock = threading.Lock()

        def spawn() -> None:
            h = rt.spawn(a, "go")
            with lock:
                handles.append(h)

        threads = [threading.Thread(target=spawn) for _ in range(concurrent)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        results = [h.wait(timeout=300) for h in handles]
        elapsed = time.perf_counter() - start
        assert all(r.ok for r in results)
        total = concurrent * steps
        commits = rt.store.writer.commits - commits0
        print(f"2. load: {concurrent} concurrent runs x {steps} steps")
        print(f"   aggregate:        {total / elapsed:8.0f} steps/s ({elapsed:.2f} s)")
        print(f"   commits (fsyncs): {commits} for {total} steps = {commits / total:.3f} per step")


def bench_fold(quick: bool) -> None:
    steps = 1000
    with (
        tempfile.TemporaryDirectory() as d,
        fl.Runtime.open(Path(d) / "fl", snapshot_every=0) as rt,
    ):
        run = rt.spawn(agent(steps, "long"), "go")
        assert run.wait(timeout=600).ok
        n = rt.store.head(run.id)
        store = rt.store
        reps = 3 if quick else 7

        def bare() -> int:
            def walk(txn: object) -> int:
                count = 0
                cur = txn.cursor(db=store._log)  # type: ignore[attr-defined]
                for _key, value in cur:
                    _prev, body = unseal(value)
                    frame = decode_frame(body)
                    decode_event(bytes(frame.event), frame.v)
                    count += 1
                return count

            return store.read_txn(walk)

        def ours() -> int:
            return fold(store.read(run.id)).seq

        t_bare = min(_timed(bare) for _ in range(reps))
        t_ours = min(_timed(ours) for _ in range(reps))
        print(f"3. fold of a {steps}-step run ({n} events, no snapshot)")
        print(f"   bare cursor+checksum+decode: {n / t_bare:10.0f} events/s")
        print(f"   read + fold (RunState):      {n / t_ours:10.0f} events/s")
        print(f"   ratio fold/bare:             {t_bare / t_ours:10.0%}")
        data = Path(d) / "fl" / "data.mdb"
        per_step = data.stat().st_size / steps
        print(f"   data.mdb: {per_step:.0f} bytes per step (file size, free pages included)")
        _ = msgspec  # keeps the import for readers comparing encoders


def _timed(fn: object) -> float:
    start = time.perf_counter()
    fn()  # type: ignore[operator]
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    print(
        f"foldloop {fl.__version__}, python {sys.version.split()[0]}, {time.strftime('%Y-%m-%d')}"
    )
    bench_sequential(args.quick)
    bench_load(args.quick)
    bench_fold(args.quick)


if __name__ == "__main__":
    main()
