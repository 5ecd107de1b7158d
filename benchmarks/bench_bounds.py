"""Bounds: the least the speed issue's workloads can cost under DESIGN's rules.

    python benchmarks/bench_bounds.py               # all five sections (~5 min)
    python benchmarks/bench_bounds.py --only step   # or: disk, fold, cold, handoff

The other scripts measure foldloop against a floor; this one measures what is left between
them once the work DESIGN requires is counted, so a target can be judged reachable or not
before anyone rewrites the runtime for it.

1. Step: three loops alternate in one process on the same disk, each one durable LMDB
   transaction a step: the floor (raw LMDB, the step's four events encoded), the *lean
   loop* (the floor plus what DESIGN requires of every step whatever the runtime around
   it: ``decide`` on each command, evolving the state, the tool's argument check, and the
   step's events sealed as the store seals them: one value, checksum and chain hash), and
   foldloop itself. lean/floor is the best ratio any shell around this core could reach;
   foldloop/lean is what the shell (actors, the group-commit writer, leases, timers,
   approvals) costs.
2. Disk: where a step's bytes go in today's format (store format 4), measured on the
   stored values of 20- and 1,000-step runs: the values' envelopes (checksum, chain hash,
   run number, seq, position, time), the events themselves, LMDB's cost per entry, and
   the other databases, against the 450 bytes-a-step target.
3. Fold: a 100,000-event run read back as the public ``Recorded`` envelopes with nothing
   folded (``store.read``), against the bare cursor+checksum+decode loop: what is left of
   the 85% target for the fold itself.
4. Cold: what CPU work costs between two fsyncs. The floor's loop with, before each commit,
   a few rounds of real ``decide`` work, or a busy-wait as long as that work takes when run
   back to back; with and without fsync. A step's Python runs after its thread slept through
   the last fsync, with the code and data it touches gone from the CPU's caches: on this
   machine it costs about twice its hot time, which is why each µs of Python weighs double
   in the step's ratio to the floor.
5. Hand-off: what two thread hand-offs cost, the least a step pays to run its tool on the
   tool's pool and come back to its run's shard: one item sent back and forth between two
   Python threads over ``queue.SimpleQueue`` (the inboxes foldloop's actors and pools use),
   a round trip against the floor's step.
"""

from __future__ import annotations

import argparse
import logging
import queue
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import lmdb
import structlog
from bench_steps import Floor, _synthetic_run, _timed, agent, bare_decode, foldloop_run

import foldloop as fl
from foldloop.actors._tool_actor import outcome_command
from foldloop.core import fold_events
from foldloop.core._commands import ModelReplied
from foldloop.core._decide import decide
from foldloop.core._effects import CallModel, RunTools
from foldloop.core._state import RunState
from foldloop.events import ModelResponded, ToolCall, Usage
from foldloop.store._framing import GENESIS, batch_frame, decode_stored, open_fast, seal
from foldloop.store._layout import encode_all

STEPS = 20
TARGET_RATIO = 1.3
TARGET_BYTES = 450
TARGET_FOLD = 0.85


class LeanLoop:
    """The floor plus DESIGN's per-step work, with no runtime around it.

    Per step: the model's reply goes through ``decide`` (which evolves the state), its
    events are encoded and sealed (CRC, chain hash) and committed durably (the tool is not
    idempotent); the tool's arguments are checked and it runs; its result goes through
    ``decide`` (tool.completed, then model.requested), whose events ride in the next
    step's transaction, as the runtime holds them back too. A transaction's events are
    sealed into one stored value, as the store seals an append.
    """

    def __init__(self, directory: Path, a: fl.Agent) -> None:
        self.env = lmdb.open(str(directory), map_size=1 << 30, sync=True, metasync=True, max_dbs=2)
        self.db = self.env.open_db(b"log")
        self.agent = a
        self.tool = a.tools[0]
        self.position = 0
        self.runs = 0
        self.types: list[str] = []
        """The event types the last run wrote, in order (checked against foldloop's)."""

    def run(self, steps: int) -> float:
        """µs per step of one run of ``steps`` steps."""
        self.runs += 1
        self.types = []
        run_id = f"lean-{self.runs}"
        now = time.time_ns()
        start = time.perf_counter()
        state = RunState(run_id=run_id)
        decision = decide(state, self.agent.start("go", now=now))
        held = list(decision.events)
        state, chain, seq = decision.state or state, GENESIS, 0
        for step in range(1, steps + 1):
            effect = decision.effects[-1]
            assert isinstance(effect, CallModel), decision
            last = step == steps
            calls = () if last else (ToolCall(id="", name="note", args=f'{{"i":{step}}}'),)
            reply = ModelReplied(
                now=now,
                step=effect.step,
                text="done" if last else "",
                tool_calls=calls,
                usage=Usage(input_tokens=48, output_tokens=8),
                model="scripted",
            )
            decision = decide(state, reply)
            assert decision.state is not None
            state = decision.state
            payloads = encode_all([*held, *decision.events], now)
            self.types += [event.type for event, _raw, _at in payloads]
            with self.env.begin(write=True) as txn:
                frame = batch_frame(self.runs, seq + 1, self.position + 1, payloads)
                value, chain = seal(frame, chain)
                txn.put((self.position + 1).to_bytes(8, "big"), value, db=self.db, append=True)
                seq += len(payloads)
                self.position += len(payloads)
            held = []
            if last:
                break
            run = decision.effects[-1]
            assert isinstance(run, RunTools), decision
            call = run.calls[0]
            outcome = outcome_command(call.call_id, self.tool.invoke(call.args), now)
            decision = decide(state, outcome)
            assert decision.state is not None
            state, held = decision.state, list(decision.events)
        assert state.output == "done", state
        return (time.perf_counter() - start) / steps * 1e6


def bench_step(pairs: int) -> None:
    a = agent(STEPS)
    with tempfile.TemporaryDirectory() as d, fl.Runtime.open(Path(d) / "fl") as rt:
        floor, lean = Floor(Path(d) / "floor"), LeanLoop(Path(d) / "lean", a)
        for _ in range(3):
            floor.run(STEPS), lean.run(STEPS), foldloop_run(rt, a, STEPS)
        samples = [
            (floor.run(STEPS), lean.run(STEPS), foldloop_run(rt, a, STEPS)) for _ in range(pairs)
        ]
        run = rt.spawn(a, "go")
        assert run.wait(timeout=60).ok
        ours = [r.type for r in rt.events(run.id)]
        assert lean.types == ours, f"the lean loop wrote {lean.types}, foldloop {ours}"
        for loop in (floor, lean):
            loop.env.close()
    med = statistics.median
    lean_ratio = med(b / f for f, b, _ in samples)
    ours_ratio = med(o / f for f, _, o in samples)
    print(f"1. a {STEPS}-step run, {pairs} rounds (median µs a step; paired ratios)")
    print(f"   floor (raw LMDB, 1 durable txn/step):  {med(f for f, _, _ in samples):8.1f}")
    print(f"   lean loop (floor + DESIGN's work):     {med(b for _, b, _ in samples):8.1f}")
    print(f"   foldloop:                              {med(o for _, _, o in samples):8.1f}")
    print(f"   lean/floor:      {lean_ratio:5.2f}x  (the best any runtime shell could reach)")
    print(f"   foldloop/floor:  {ours_ratio:5.2f}x  (target {TARGET_RATIO}x)")
    room = (TARGET_RATIO - lean_ratio) / (ours_ratio - lean_ratio) if ours_ratio > lean_ratio else 1
    print(f"   the target leaves the shell {max(0.0, room):.0%} of what it costs now")


# -- disk --------------------------------------------------------------------------------


def _entry_overhead(values: list[bytes]) -> float:
    """LMDB's bytes per entry beyond the value, appending these values under 8-byte keys."""
    with tempfile.TemporaryDirectory() as d:
        env = lmdb.open(d, map_size=1 << 30, max_dbs=2)
        db = env.open_db(b"log")
        with env.begin(write=True) as txn:
            for i, value in enumerate(values * 20, start=1):
                txn.put(i.to_bytes(8, "big"), value, db=db, append=True)
        with env.begin() as txn:
            st = txn.stat(db)
        pages = st["leaf_pages"] + st["branch_pages"] + st["overflow_pages"]
        env.close()
    return float(pages * st["psize"] / (len(values) * 20) - statistics.mean(map(len, values)))


def _other_pages(store: Any) -> int:
    """Bytes of the store's pages outside the log (index, leases, meta, ...)."""

    def walk(txn: Any) -> int:
        total = 0
        for name, db in vars(store).items():
            if name.startswith("_") and name != "_log" and type(db).__name__ == "_Database":
                st = txn.stat(db)
                total += (st["leaf_pages"] + st["branch_pages"] + st["overflow_pages"]) * 4096
        return total

    return int(store.read_txn(walk))


def bench_disk() -> None:
    print("2. bytes a step in store format 4 (stored values measured; LMDB's cost an entry too)")
    for steps in (STEPS, 1000):
        runs = max(1, 2000 // steps)
        with tempfile.TemporaryDirectory() as d:
            path = Path(d) / "s"
            with fl.Runtime.open(path) as rt:
                rt.spawn(agent(2, "warm"), "go").wait(timeout=60)
                other0 = _other_pages(rt.store)
                skip = rt.store.read_txn(lambda txn: txn.stat(rt.store.tables.log)["entries"])
                for _ in range(runs):  # one after another, as bench_footprint runs them
                    assert rt.spawn(agent(steps), "go").wait(timeout=600).ok
                values = rt.store.read_txn(
                    lambda txn: [bytes(v) for _k, v in txn.cursor(db=rt.store.tables.log)]
                )[skip:]
                other = (_other_pages(rt.store) - other0) / (runs * steps)
        events = sum(len(raw) for v in values for raw in decode_stored(v[20:]).events)
        envelope = sum(map(len, values)) - events
        overhead = _entry_overhead(values) * len(values)
        total = (events + envelope + overhead) / (runs * steps) + other
        mark = "<=" if total <= TARGET_BYTES else "> "
        per = runs * steps
        print(
            f"   {runs} run(s) of {steps} steps, {len(values) / per:.1f} values a step: "
            f"{total:4.0f} B a step {mark} {TARGET_BYTES}"
        )
        print(
            f"     events {events / per:4.0f}, envelopes {envelope / per:4.0f} (crc, chain hash, "
            f"run number, seq, position, time), LMDB entries {overhead / per:4.0f}, "
            f"other databases {other:4.0f} (index, snapshots, run numbers)"
        )
    print("   (bench_footprint.py measures the same as the data file's growth, free pages in)")


# -- fold --------------------------------------------------------------------------------


def bench_fold(reps: int = 5) -> None:
    with (
        tempfile.TemporaryDirectory() as d,
        fl.Runtime.open(Path(d) / "fl", snapshot_every=0) as rt,
    ):
        store = rt.store
        run_id = _synthetic_run(store, 100_000)
        n = store.head(run_id)

        def bare_in_place() -> int:
            def walk(txn: Any) -> int:
                count = 0
                for _key, value in txn.cursor(db=store.tables.log):
                    open_fast(value)  # checksum, then envelope and event in one pass
                    count += 1
                return count

            return int(store.read_txn(walk))

        events, ats = store.read_events(run_id)
        pairs = list(zip(events, ats, strict=True))

        def touch() -> int:
            # The least a fold does: look at each record's event type and time.
            seq = last = kinds = 0
            for event, at in pairs:
                kinds += type(event) is ModelResponded
                seq += 1
                last = at
            return seq + last + kinds

        t_touch = min(_timed(touch) for _ in range(reps))
        t_bare = min(_timed(lambda: bare_decode(store)) for _ in range(reps))
        t_fast = min(_timed(bare_in_place) for _ in range(reps))
        t_read = min(_timed(lambda: store.read_events(run_id)) for _ in range(reps))
        t_fold = min(_timed(lambda: fold_events(run_id, pairs)) for _ in range(reps))
    per = 1e6 / n
    budget = t_bare / TARGET_FOLD - t_read
    print(f"3. a {n}-event run (best of {reps}; µs an event)")
    print(f"   bare cursor+checksum+decode:   {t_bare * per:5.2f}  (bench_steps' reference)")
    print(f"   ... in one pass, in place:      {t_fast * per:5.2f}  (the store's own decode)")
    print(
        f"   store.read_events (no fold):    {t_read * per:5.2f}  ({t_bare / t_read:.0%} of bare)"
    )
    print(f"   fold_events of what was read:   {t_fold * per:5.2f}")
    print(f"   a loop touching each record:    {t_touch * per:5.2f}  (type and time; no state)")
    print(
        f"   read + fold:                    {(t_read + t_fold) * per:5.2f}  "
        f"({t_bare / (t_read + t_fold):.0%} of bare; target {TARGET_FOLD:.0%})"
    )
    print(
        f"   the target leaves the fold {max(0.0, budget) * per:.2f} µs an event "
        f"({max(0.0, budget) / t_fold:.0%} of what it costs now)"
    )


class ColdFloor(Floor):
    """The floor's loop with ``work()`` done before each step's commit."""

    def __init__(self, directory: Path, *, sync: bool) -> None:
        super().__init__(directory)
        if not sync:
            self.env.close()
            self.env = lmdb.open(
                str(directory), map_size=1 << 30, sync=False, metasync=False, max_dbs=2
            )
            self.db = self.env.open_db(b"log")
        self.work: Any = None

    def run(self, steps: int) -> float:
        self.runs += 1
        tag = f"r{self.runs}".encode()
        raw = encode_all([ModelResponded(step=1)], 0)[0][1]
        start = time.perf_counter()
        for _ in range(steps):
            if self.work is not None:
                self.work()
            with self.env.begin(write=True) as txn:
                for _ in range(4):
                    self.position += 1
                    txn.put(self.position.to_bytes(8, "big") + tag, raw, db=self.db, append=True)
        return (time.perf_counter() - start) / steps * 1e6


def bench_cold(pairs: int = 25, rounds: int = 3) -> None:
    a = agent(STEPS)
    reply = ModelReplied(
        now=2,
        step=1,
        tool_calls=(ToolCall(id="", name="note", args='{"i":1}'),),
        usage=Usage(),
        model="m",
    )

    def python_work() -> None:
        for _ in range(rounds):
            started = decide(RunState(run_id="x"), a.start("go", now=1)).state
            assert started is not None
            decide(started, reply)

    t0 = time.perf_counter()
    for _ in range(300):
        python_work()
    hot = (time.perf_counter() - t0) / 300

    def busy() -> None:
        end = time.perf_counter() + hot
        while time.perf_counter() < end:
            pass

    print(f"4. cold work: {rounds} rounds of decide before each commit, {hot * 1e6:.0f} µs hot")
    for sync in (True, False):
        with tempfile.TemporaryDirectory() as d:
            floor = ColdFloor(Path(d) / "f", sync=sync)
            works = {"nothing": None, "busy-wait": busy, "decide": python_work}
            times: dict[str, list[float]] = {name: [] for name in works}
            for i in range(pairs + 3):
                for name, work in works.items():
                    floor.work = work
                    took = floor.run(STEPS)
                    if i >= 3:  # the first rounds warm the file up
                        times[name].append(took)
            base = statistics.median(times["nothing"])
            added = {n: statistics.median(t) - base for n, t in times.items() if n != "nothing"}
            print(
                f"   {'with' if sync else 'without'} fsync: the floor {base:6.1f} µs a step; "
                f"a busy-wait adds {added['busy-wait']:5.1f}, decide adds {added['decide']:5.1f} "
                f"({added['decide'] / (hot * 1e6):.1f}x its hot time)"
            )


def bench_handoff(rounds: int = 5, trips: int = 5000) -> None:
    there: queue.SimpleQueue[int | None] = queue.SimpleQueue()
    back: queue.SimpleQueue[int] = queue.SimpleQueue()

    def echo() -> None:
        while (item := there.get()) is not None:
            back.put(item)

    thread = threading.Thread(target=echo, daemon=True)
    thread.start()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        for i in range(trips):
            there.put(i)
            back.get()
        times.append((time.perf_counter() - start) / trips * 1e6)
    there.put(None)
    thread.join()
    with tempfile.TemporaryDirectory() as d:
        floor = Floor(Path(d))
        floor.run(STEPS)
        step = statistics.median(floor.run(STEPS) for _ in range(10))
    trip = statistics.median(times)
    print("5. two thread hand-offs (one round trip between two threads)")
    print(
        f"   {trip:6.1f} µs a round trip (rounds {min(times):.1f}-{max(times):.1f}); the floor's "
        f"step {step:6.1f} µs: {trip / step:.2f}x of it"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--only", choices=("step", "disk", "fold", "cold", "handoff"), help="run one section"
    )
    parser.add_argument("--pairs", type=int, default=40, help="rounds of step runs (default 40)")
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    print(
        f"foldloop {fl.__version__}, python {sys.version.split()[0]}, {time.strftime('%Y-%m-%d')}"
    )
    if args.only in (None, "step"):
        bench_step(args.pairs)
    if args.only in (None, "disk"):
        bench_disk()
    if args.only in (None, "fold"):
        bench_fold()
    if args.only in (None, "cold"):
        bench_cold()
    if args.only in (None, "handoff"):
        bench_handoff()


if __name__ == "__main__":
    main()
