"""Run trees: what a child run costs, and a tree of 1,000 leaves, each against a reference
measured in the same process.

    python benchmarks/bench_trees.py            # ~1 min
    python benchmarks/bench_trees.py --quick    # fewer pairs, a tree of 200 leaves

1. A child run, spawn to result back in its parent: a lead that hands one task to a
   sub-agent (a child run answering at once) and then answers, against the same lead
   calling a plain tool instead (the same steps and events in the lead's log, no child),
   alternated pair by pair; and a plain run of the child's agent alone.
2. A tree of N leaves (a root, 10 middle runs, N/10 leaves each, all answering at once,
   every level fanned out at once): wall time, CPU and peak threads, against N plain runs
   started together with ``spawn_many`` in the same runtime.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import foldloop as fl


def answers(messages: Sequence[fl.Message], tools: Sequence[object]) -> fl.Reply:
    task = next(m.content for m in messages if m.role == "user")
    return fl.Reply(text=f"done: {task}")


def asks(name: str, n: int) -> fl.ScriptedLLM:
    """A model that asks ``name`` n times at once, then joins the answers."""

    def reply(messages: Sequence[fl.Message], tools: Sequence[object]) -> fl.Reply:
        if not any(m.role == "tool" for m in messages):
            return fl.Reply(tool_calls=[fl.ToolCall(name, {"input": f"t{i}"}) for i in range(n)])
        return fl.Reply(text=f"{sum(1 for m in messages if m.role == 'tool')} answers")

    return fl.ScriptedLLM(reply)


@fl.tool(name="helper", idempotent=True)
def helper_tool(input: str) -> str:
    """The reference: a plain tool where the sub-agent would be."""
    return f"done: {input}"


def _timed(rt: fl.Runtime, agent: fl.Agent) -> float:
    start = time.perf_counter()
    result = rt.spawn(agent, "go").wait(timeout=60)
    elapsed = time.perf_counter() - start
    assert result.ok, result
    return elapsed * 1e6


def bench_child(pairs: int) -> None:
    child = fl.Agent(name="helper", llm=fl.ScriptedLLM(answers))
    with_child = fl.Agent(name="lead", llm=asks("helper", 1), agents=[child])
    with_tool = fl.Agent(name="lead-tool", llm=asks("helper", 1), tools=[helper_tool])
    with tempfile.TemporaryDirectory() as d, fl.Runtime.open(Path(d) / "fl") as rt:
        for _ in range(5):  # warm up: threads, page cache
            _timed(rt, with_child), _timed(rt, with_tool), _timed(rt, child)
        samples = [(_timed(rt, with_tool), _timed(rt, with_child)) for _ in range(pairs)]
        plain = statistics.median(_timed(rt, child) for _ in range(pairs))
    tool_us = statistics.median(t for t, _ in samples)
    child_us = statistics.median(c for _, c in samples)
    extra = statistics.median(c - t for t, c in samples)
    print(f"1. a child run, spawn to result back in its parent ({pairs} alternated pairs)")
    print(f"   lead calling a plain tool:        {tool_us:8.0f} us (median)")
    print(f"   lead calling a sub-agent:         {child_us:8.0f} us (median)")
    print(f"   a plain run of the child agent:   {plain:8.0f} us (median)")
    ratio = extra / plain
    print(f"   the child's cost in its parent:   {extra:8.0f} us = {ratio:.2f}x a plain run")


class PeakThreads:
    def __init__(self) -> None:
        self.peak = threading.active_count()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, threading.active_count())

    def __enter__(self) -> PeakThreads:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def bench_tree(leaves: int) -> None:
    per_mid = leaves // 10
    leaf = fl.Agent(name="leaf", llm=fl.ScriptedLLM(answers))
    mid = fl.Agent(
        name="mid",
        llm=asks("leaf", per_mid),
        agents=[leaf],
        limits=fl.Limits(max_steps=2 * per_mid + 10, max_children=per_mid),
    )
    root = fl.Agent(
        name="root",
        llm=asks("mid", 10),
        agents=[mid],
        limits=fl.Limits(max_steps=30 * per_mid + 100, max_children=10),
    )
    with tempfile.TemporaryDirectory() as d, fl.Runtime.open(Path(d) / "fl") as rt:
        _timed(rt, leaf)  # warm up
        cpu0, start = _cpu(), time.perf_counter()
        with PeakThreads() as threads:
            result = rt.spawn(root, "go").wait(timeout=600)
        tree_s, tree_cpu = time.perf_counter() - start, _cpu() - cpu0
        assert result.ok, result
        assert len(rt.tree(result.run_id).walk()) == 1 + 10 + leaves
        cpu0, start = _cpu(), time.perf_counter()
        handles = rt.spawn_many(leaf, ["go"] * leaves)
        assert all(h.wait(timeout=600).ok for h in handles)
        flat_s, flat_cpu = time.perf_counter() - start, _cpu() - cpu0
    runs = 1 + 10 + leaves
    print(f"2. a tree of {leaves:,} leaves (root -> 10 middle runs -> {per_mid} leaves each)")
    print(
        f"   the tree:                   {tree_s:6.2f} s, {tree_s / runs * 1e3:.2f} ms a run, "
        f"CPU {tree_cpu / runs * 1e3:.2f} ms a run, {threads.peak} threads at most"
    )
    print(
        f"   {leaves:,} plain runs (spawn_many): {flat_s:6.2f} s, {flat_s / leaves * 1e3:.2f} ms a "
        f"run, CPU {flat_cpu / leaves * 1e3:.2f} ms a run"
    )
    print(f"   ratio tree/plain, a run:   {(tree_s / runs) / (flat_s / leaves):.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer pairs, 200 leaves")
    args = parser.parse_args()
    print(f"foldloop {fl.__version__} from {Path(fl.__file__).parent}")
    bench_child(30 if args.quick else 100)
    bench_tree(200 if args.quick else 1_000)


if __name__ == "__main__":
    main()
