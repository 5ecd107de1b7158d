"""Footprint: import time, bytes per step, resume time, and the cost of parked runs.

    python benchmarks/bench_footprint.py            # 10,000 parked runs
    python benchmarks/bench_footprint.py --parked 2000

1. ``import foldloop`` in a fresh interpreter (best of 5), against ``import json``.
2. Bytes on disk per step at 20 and 1,000 steps (data.mdb growth / steps, after the
   store indexed its tail on close), runs one after another; and 100 20-step runs at once,
   whose records interleave in the log (the index then holds an entry per step).
3. Resume time of a 1,000-step run: state rebuilt from the whole log vs from a snapshot.
4. Parked runs: RSS and thread count before and after parking N runs (each stopped by
   its step ceiling, so it holds no actor and no thread).
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import structlog
from bench_steps import quiet_threads

import foldloop as fl


@fl.tool(timeout=30)
def note(i: int) -> str:
    """Record a note."""
    return f"noted {i}"


def agent(name: str, steps: int) -> fl.Agent:
    replies = [fl.Reply(tool_calls=[fl.ToolCall("note", {"i": i})]) for i in range(steps - 1)]
    return fl.Agent(
        name=name,
        llm=fl.ScriptedLLM([*replies, fl.Reply(text="done")]),
        tools=[note],
        limits=fl.Limits(max_steps=steps + 1),
    )


def import_time() -> None:
    def best(module: str) -> float:
        times = []
        for _ in range(5):
            out = subprocess.run(
                [
                    sys.executable,
                    "-I",
                    "-c",
                    f"import time; t=time.perf_counter(); import {module}; "
                    "print(time.perf_counter()-t)",
                ],
                capture_output=True,
                text=True,
                check=True,
            )
            times.append(float(out.stdout))
        return min(times)

    ours, ref = best("foldloop"), best("json")
    print(f"1. import foldloop: {ours * 1000:.0f} ms (import json: {ref * 1000:.1f} ms)")


def rss_kib(field: str = "VmRSS") -> int:
    """Resident memory in KiB; RssAnon leaves out LMDB's memory-mapped file pages."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def bytes_per_step() -> None:
    for steps, together in ((20, False), (1000, False), (20, True)):
        with tempfile.TemporaryDirectory() as d:
            path = Path(d) / "s"
            with fl.Runtime.open(path) as rt:
                rt.spawn(agent("warm", 2), "go").wait(timeout=60)
            base = (path / "data.mdb").stat().st_size
            with fl.Runtime.open(path) as rt:
                runs = max(1, 2000 // steps)
                a = agent(f"b{steps}", steps)
                if together:  # their records interleave in the log
                    handles = [rt.spawn(a, "go") for _ in range(runs)]
                    assert all(h.wait(timeout=600).ok for h in handles)
                else:
                    for _ in range(runs):
                        assert rt.spawn(a, "go").wait(timeout=600).ok
            grown = (path / "data.mdb").stat().st_size - base
            how = f", {runs} at once" if together else ""
            per_step = grown / (runs * steps)
            print(f"2. {steps:>5}-step runs{how}: {per_step:6.0f} bytes per step on disk")


def resume_time() -> None:
    with tempfile.TemporaryDirectory() as d:
        for every in (0, 200):
            path = Path(d) / f"s{every}"
            with fl.Runtime.open(path, snapshot_every=every) as rt:
                run = rt.spawn(agent(f"long{every}", 1000), "go")
                assert run.wait(timeout=600).ok
                rt.store.submit(lambda w: None).wait()
                quiet_threads()
                best = min(_timed(lambda r=rt, i=run.id: r.state(i)) for _ in range(5))
                label = "from the whole log" if not every else f"snapshot every {every}"
                print(f"3. state of a 1,000-step run, {label}: {best * 1000:.1f} ms")


def parked(n: int, *, by_approval: bool = False) -> None:
    with tempfile.TemporaryDirectory() as d, fl.Runtime.open(Path(d) / "s") as rt:
        a = fl.Agent(
            name="parked",
            llm=fl.ScriptedLLM([fl.Reply(tool_calls=[fl.ToolCall("note", {"i": 1})])] * 2),
            tools=[note],
            limits=fl.Limits(max_steps=10 if by_approval else 1),
            approvals=fl.RequireApproval({"note"}) if by_approval else None,
        )
        rt.spawn(a, "warm").wait(timeout=60)
        for pending in rt.pending_approvals():
            rt.deny(pending.token)
        time.sleep(0.2)
        rss0, anon0, threads0 = rss_kib(), rss_kib("RssAnon"), threading.active_count()
        handles = [rt.spawn(a, "go") for _ in range(n)]
        statuses = {h.wait(timeout=600).status for h in handles}
        time.sleep(0.5)
        rss1, anon1, threads1 = rss_kib(), rss_kib("RssAnon"), threading.active_count()
        expected = fl.RunStatus.AWAITING_APPROVAL if by_approval else fl.RunStatus.LIMIT_REACHED
        assert statuses == {expected}, statuses
        why = "awaiting approval" if by_approval else "at their step ceiling"
        print(
            f"4. {n} runs parked {why}: +{(rss1 - rss0) / 1024:.1f} MiB RSS "
            f"(+{(anon1 - anon0) / 1024:.1f} MiB anonymous; the rest is LMDB's mapped file), "
            f"threads {threads0} -> {threads1}"
        )


def waiting_in_a_fresh_process(n: int) -> None:
    """What n runs waiting for approval cost a runtime that opens their store afresh."""
    code = (
        "import sys, time, threading, logging, structlog\n"
        "structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))\n"
        "import foldloop as fl\n"
        "from pathlib import Path\n"
        "def rss(f):\n"
        "    for l in Path('/proc/self/status').read_text().splitlines():\n"
        "        if l.startswith(f + ':'): return int(l.split()[1])\n"
        "rt = fl.Runtime.open(sys.argv[1])\n"
        "time.sleep(1.0)\n"
        "n = len(rt.pending_approvals())\n"
        "time.sleep(1.0)\n"
        "print(n, rss('VmRSS'), rss('RssAnon'), threading.active_count())\n"
        "rt.close()\n"
    )
    with tempfile.TemporaryDirectory() as d:
        empty, full = Path(d) / "empty", Path(d) / "full"
        with fl.Runtime.open(empty):
            pass
        with fl.Runtime.open(full) as rt:
            a = fl.Agent(
                name="waiting",
                llm=fl.ScriptedLLM([fl.Reply(tool_calls=[fl.ToolCall("note", {"i": 1})])] * 2),
                tools=[note],
                approvals=fl.RequireApproval({"note"}),
            )
            handles = [rt.spawn(a, "go") for _ in range(n)]
            assert {h.wait(timeout=600).status for h in handles} == {fl.RunStatus.AWAITING_APPROVAL}
        rows = []
        for store in (empty, full):
            out = subprocess.run(
                [sys.executable, "-c", code, str(store)], capture_output=True, text=True, check=True
            )
            rows.append([int(x) for x in out.stdout.split()])
        (_n0, rss0, anon0, t0), (n1, rss1, anon1, t1) = rows
        assert n1 == n, n1
        print(
            f"5. a fresh runtime over {n} runs awaiting approval vs an empty store: "
            f"+{(rss1 - rss0) / 1024:.1f} MiB RSS (+{(anon1 - anon0) / 1024:.1f} MiB anonymous), "
            f"threads {t0} vs {t1}"
        )


def pickup_latency(rounds: int = 15) -> None:
    """How long a runtime takes to carry a decision made by another process into its run.

    Measured from the deciding process's ``approve`` returning (it prints the time, after
    its commit) to this runtime seeing approval.decided in the run's log.
    """
    code = (
        "import sys, time, logging, structlog, foldloop as fl\n"
        "structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))\n"
        "rt = fl.Runtime.open(sys.argv[1])\n"
        "rt.approve(run_id=sys.argv[2], call_id=sys.argv[3], by='remote')\n"
        "print(time.time_ns(), flush=True)\n"
        "rt.close()\n"
    )
    lags = []
    with tempfile.TemporaryDirectory() as d, fl.Runtime.open(Path(d) / "s") as rt:
        a = fl.Agent(
            name="remote",
            llm=fl.ScriptedLLM([fl.Reply(tool_calls=[fl.ToolCall("note", {"i": 1})])] * 2),
            tools=[note],
            approvals=fl.RequireApproval({"note"}),
        )
        for _ in range(rounds):
            run = rt.spawn(a, "go")
            assert run.wait(timeout=60).status is fl.RunStatus.AWAITING_APPROVAL
            (pending,) = [p for p in rt.pending_approvals() if p.run_id == run.id]
            proc = subprocess.Popen(
                [sys.executable, "-c", code, str(Path(d) / "s"), run.id, pending.call_id],
                stdout=subprocess.PIPE,
                text=True,
            )
            assert proc.stdout is not None
            decided_at = int(proc.stdout.readline())
            while not any(r.type == "approval.decided" for r in rt.events(run.id)):
                time.sleep(0.001)
            lags.append((time.time_ns() - decided_at) / 1e6)
            proc.wait()
    lags.sort()
    print(
        f"6. a decision made in another process reaches the run in "
        f"{lags[len(lags) // 2]:.0f} ms (median of {rounds}; max {lags[-1]:.0f} ms)"
    )


def _timed(fn: object) -> float:
    start = time.perf_counter()
    fn()  # type: ignore[operator]
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parked", type=int, default=10_000, help="runs to park (default 10,000)")
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    print(
        f"foldloop {fl.__version__}, python {sys.version.split()[0]}, pid {os.getpid()}, "
        f"{time.strftime('%Y-%m-%d')}"
    )
    import_time()
    bytes_per_step()
    resume_time()
    parked(args.parked)
    parked(args.parked, by_approval=True)
    waiting_in_a_fresh_process(args.parked)
    pickup_latency()


if __name__ == "__main__":
    main()
