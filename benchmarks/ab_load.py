"""One runtime's load, short, for comparing two commits: run it alternately per commit.

The machine's speed drifts by half from one minute to the next, so a change is judged by
processes of each commit alternated (A, B, A, B, ...) and the medians of what they print,
not by one run of ``bench_steps.py`` before and one after::

    git worktree add /tmp/before HEAD~1
    for i in 1 2 3 4 5 6 7 8; do
        PYTHONPATH=/tmp/before python benchmarks/ab_load.py 100 3   # before
        python benchmarks/ab_load.py 100 3                         # after
    done

Prints the foldloop it imported (so a wrong PYTHONPATH shows), then the median steps/s of
``rounds`` rounds of ``runs`` concurrent 20-step runs (after one untimed round that starts
the actor threads) and the process's CPU a step over them.
"""

from __future__ import annotations

import argparse
import logging
import resource
import statistics
import tempfile
from pathlib import Path

import structlog
from bench_steps import STEPS, _load_round, _rounds, agent

import foldloop as fl


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("runs", nargs="?", type=int, default=100, help="runs at once (100)")
    parser.add_argument("rounds", nargs="?", type=int, default=3, help="rounds (3)")
    args = parser.parse_args()
    runs, rounds = args.runs, args.rounds
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    with tempfile.TemporaryDirectory() as d, fl.Runtime.open(Path(d) / "fl") as rt:
        a = agent(STEPS, "load")
        _load_round(rt, a, runs, STEPS)
        before = resource.getrusage(resource.RUSAGE_SELF)
        rates, _handles = _rounds(rt, a, runs, STEPS, rounds)
        after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    print(f"foldloop from {Path(fl.__file__).parent}")
    print(
        f"{runs} runs x {STEPS} steps, {rounds} rounds: median {statistics.median(rates):.0f} "
        f"steps/s, CPU {cpu / (runs * STEPS * rounds) * 1e6:.0f} us a step"
    )


if __name__ == "__main__":
    main()
