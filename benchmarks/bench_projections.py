"""Projection throughput against a bare fold of the same events, in one process.

    python benchmarks/bench_projections.py            # 100,000 events, 5 pairs
    python benchmarks/bench_projections.py --quick    # 20,000 events, 3 pairs

The store is filled with real run events (20-step runs: model requested/responded, tool
requested/completed) written through the store's append. Then, alternately:
- bare fold: page through the log with ``store.read_all`` (read + checksum + decode) and
  call the projection's ``apply`` in a plain loop;
- projection: ``rt.attach(p)`` from an empty checkpoint to ``catch_up()`` (the
  ProjectionActor: pages, apply, publish, checkpoint).
Both are timed for ``RunMetrics`` and for a trivial counting projection (where the
machinery's overhead shows most). The figure is events/s and the ratio projection / bare.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import structlog

import foldloop as fl
from foldloop.events import (
    ModelRequested,
    ModelResponded,
    RunCompleted,
    RunStarted,
    ToolCall,
    ToolCompleted,
    ToolRequested,
    Usage,
)
from foldloop.projections import RunMetrics
from foldloop.store import encode_all

STEPS = 20


def fill(store: Any, events: int) -> int:
    """Append 20-step runs until the log holds about ``events`` records."""
    per_run = 2 + STEPS * 4
    runs = max(1, events // per_run)
    at = time.time_ns()
    for r in range(runs):
        run_id = f"run-{r:06d}"
        batch: list[Any] = [RunStarted(agent="bench", input="go")]
        for step in range(1, STEPS + 1):
            call = f"c{step}"
            batch += [
                ModelRequested(step=step, prompt_digest="d" * 16),
                ModelResponded(
                    step=step,
                    tool_calls=(ToolCall(id=call, name="note", args='{"i": 1}'),),
                    usage=Usage(input_tokens=120, output_tokens=12),
                    latency_ms=0.4,
                ),
                ToolRequested(call_id=call, tool="note", args='{"i": 1}', step=step),
                ToolCompleted(call_id=call, result="noted", duration_ms=0.05),
            ]
        batch.append(RunCompleted(output="done"))
        store.submit(
            lambda w, rid=run_id, b=batch: w.append(rid, encode_all(b, at), expected_seq=0),
            durable=False,
        ).wait()
    return int(store.last_position())


def bare(store: Any, projection: fl.projections.Projection[Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    state = projection.initial()
    apply = projection.apply
    position = 1
    while True:
        page = store.read_all(position, limit=1024)
        for rec in page:
            state = apply(state, rec)
        if len(page) < 1024:
            break
        position = page[-1].position + 1
    return time.perf_counter() - started, state


def attached(rt: fl.Runtime, projection: fl.projections.Projection[Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    handle = rt.attach(projection, reset=True)
    handle.catch_up(timeout=600)
    took = time.perf_counter() - started
    state = handle.state
    handle.detach()
    return took, state


class Count(fl.projections.Projection[int]):
    name = "bench.count"

    def initial(self) -> int:
        return 0

    def apply(self, state: int, record: fl.types.Recorded) -> int:
        return state + 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--events", type=int)
    parser.add_argument("--pairs", type=int)
    args = parser.parse_args()
    events = args.events or (20_000 if args.quick else 100_000)
    pairs = args.pairs or (3 if args.quick else 5)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    with tempfile.TemporaryDirectory() as tmp, fl.Runtime.open(Path(tmp) / "s") as rt:
        total = fill(rt.store, events)
        print(f"log: {total:,} events ({total // (2 + STEPS * 4)} runs of {STEPS} steps)")
        for make in (Count, RunMetrics):
            ratios, bare_rates, proj_rates = [], [], []
            for i in range(pairs):
                # alternate which side runs first, so warm caches favour neither
                if i % 2:
                    p, p_state = attached(rt, make())
                    b, b_state = bare(rt.store, make())
                else:
                    b, b_state = bare(rt.store, make())
                    p, p_state = attached(rt, make())
                assert b_state == p_state, "projection and bare fold disagree"
                bare_rates.append(total / b)
                proj_rates.append(total / p)
                ratios.append(b / p)
            print(
                f"{make.__name__:>10}: bare {statistics.median(bare_rates):>10,.0f} ev/s  "
                f"projection {statistics.median(proj_rates):>10,.0f} ev/s  "
                f"ratio {statistics.median(ratios):.2f} "
                f"(min {min(ratios):.2f}, max {max(ratios):.2f}; target >= 0.80)"
            )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
