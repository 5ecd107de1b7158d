"""Fleet: thousands of runs in flight, each waiting on a slow model, against the latency bound.

    python benchmarks/bench_fleet.py                       # every case that can run here
    python benchmarks/bench_fleet.py --quick               # a tenth of the runs in each case
    python benchmarks/bench_fleet.py --case 1k openai      # chosen cases
    python benchmarks/bench_fleet.py --case 10k --one-by-one     # rt.spawn in a loop instead

The workload: N runs spawned at once, each making S model calls; every reply but the last
asks for one call of a trivial idempotent tool (``fleet_agents.py``); the model answers
after L seconds. If each run only ever waited on its model, the fleet would do its N*S
steps in S*L seconds: the bound, N/L steps/s. Each case prints the steps/s it reached, its
share of the bound (the reference measured here is the latency itself), and against its
target from issue 20:

- ``1k``: 1,000 runs x 10 steps, L = 1 s, one Runtime, ScriptedLLM(latency_s=L)
- ``10k``: 10,000 runs x 5 steps, one Runtime
- ``10k-lean``: the 10k workload through the least shell DESIGN allows, no Runtime
  (``fleet_lean.py``: foldloop's ``decide``, encoding and sealing, one loop, one thread for
  the runs, one for the tool, one writer): what foldloop's shell costs over it
- ``10k-pool``: the same over a WorkerPool of 2 processes
- ``openai``: the 1k case through ``fl.OpenAIChat`` against ``fleet_server.py``, a local
  OpenAI-compatible server started here, answering after L seconds
- ``openai-sdk``: the openai case's requests made by the SDK alone, no foldloop
  (``fleet_sdk.py``), all conversations started at once (``--one-by-one``, ``--spawners``
  and ``--max-model-calls`` do not apply; its CPU a step is the client's alone)
- ``langgraph`` (when installed): the 1k case as a LangGraph StateGraph (model node, tool
  node) over ``graph.ainvoke`` with ``AsyncSqliteSaver``, all runs gathered on one loop

Each case runs in a fresh child process (one case's threads and memory do not reach the
next) and stops at ``--timeout-s``, printing how far it got. Runs are started with one
``spawn_many`` (as the README advises for many runs: their starts share commits);
``--one-by-one`` calls ``spawn`` in a loop instead, as a host loop that does not know them
all at once would (``--spawners K``: from K threads, as request handlers would). Wall time
runs from the first spawn to the last result, spawning included. Threads peak: the
process's OS threads (for a pool, the host's plus its workers'), sampled every 50 ms, the
sampler and spawners excluded. RSS/run: peak RSS during the case less RSS
before the first spawn, over the runs. CPU a step: user + system CPU of the same processes
over the case (spawning included; not the openai case's server), over the steps done.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import importlib.util
import json
import logging
import os
import resource
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
from fleet_agents import LATENCY_ENV, STEPS_ENV, fleet_agent, ping, script

import foldloop as fl

HERE = Path(__file__).resolve().parent
GRACE_S = 120.0
"""How long past its timeout a case may take to close before its process is killed."""


@dataclass(frozen=True)
class Case:
    name: str
    runs: int
    steps: int
    latency_s: float
    min_share: float | None = None
    max_threads: int | None = None
    max_rss_kib: float | None = None

    @property
    def target(self) -> str:
        parts = [f">= {self.min_share:.0%}"] if self.min_share is not None else []
        if self.max_threads is not None:
            parts.append(f"<= {self.max_threads} threads")
        if self.max_rss_kib is not None:
            parts.append(f"<= {self.max_rss_kib:.0f} KiB/run")
        return ", ".join(parts) or "-"


CASES = {
    # threads: 64 plus the tool's own pool (its concurrency)
    "1k": Case("1k", 1_000, 10, 1.0, min_share=0.9, max_threads=64 + ping.concurrency),
    "10k": Case("10k", 10_000, 5, 1.0, min_share=0.5, max_rss_kib=100),
    "10k-lean": Case("10k-lean", 10_000, 5, 1.0),
    "10k-pool": Case("10k-pool", 10_000, 5, 1.0, min_share=0.8),
    "openai": Case("openai", 1_000, 10, 1.0, min_share=0.8),
    "openai-sdk": Case("openai-sdk", 1_000, 10, 1.0),
    "langgraph": Case("langgraph", 1_000, 10, 1.0),
}
NEEDS = {
    "openai": ("openai",),
    "openai-sdk": ("openai",),
    "langgraph": ("langgraph", "langgraph.checkpoint.sqlite", "aiosqlite"),
}


def installed(module: str) -> bool:
    """Whether ``module`` can be imported (a submodule of a missing package cannot)."""
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


@dataclass
class Outcome:
    """What one case measured (a child process prints it as one JSON line)."""

    case: str
    runs: int
    steps: int
    latency_s: float
    spawned: int = 0
    completed: int = 0
    steps_done: int = 0
    wall_s: float = 0.0
    spawn_s: float = 0.0
    cpu_s: float = 0.0
    host_cpu_s: float = 0.0
    threads_peak: int | None = None
    rss_per_run_kib: float | None = None
    timed_out: bool = False
    skipped: str = ""
    problem: str = ""
    foldloop: str = ""

    @property
    def rate(self) -> float:
        return self.steps_done / self.wall_s if self.wall_s else 0.0

    @property
    def share(self) -> float:
        """Steps/s over the bound: ``runs / latency_s`` steps/s."""
        return self.rate * self.latency_s / self.runs


# --- sampling threads and RSS ----------------------------------------------------------


def _status(pid: int | str) -> tuple[int, int] | None:
    """(threads, RSS KiB) of a process from /proc, or None if it cannot be read."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    return int(fields["Threads"]), int(fields["VmRSS"].split()[0])


def _cpu_s(pids: Sequence[int]) -> tuple[float, float]:
    """User + system CPU seconds of this process, and of ``pids`` (from /proc/PID/stat)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    own, total = usage.ru_utime + usage.ru_stime, 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return own, total


class Sampler:
    """Peak threads and RSS of this process plus ``others()`` (pids), every 50 ms."""

    def __init__(self, others: Callable[[], Sequence[int]] = list) -> None:
        self._others = others
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="fleet-sampler", daemon=True)
        self.reachable = True
        self.base_rss = self._sample()[1]
        self.threads_peak = 0
        self.rss_peak = self.base_rss
        self.cpu_s = 0.0
        self.host_cpu_s = 0.0  # this process's share of cpu_s

    def _sample(self) -> tuple[int, int]:
        threads, rss = _status("self") or (0, 0)
        for pid in self._others():
            seen = _status(pid)
            if seen is None:
                self.reachable = False
                continue
            threads, rss = threads + seen[0], rss + seen[1]
        return threads, rss

    def _loop(self) -> None:
        while not self._stop.wait(0.05):
            threads, rss = self._sample()
            ours = sum(t.name.startswith("fleet-") for t in threading.enumerate())
            self.threads_peak = max(self.threads_peak, threads - ours)
            self.rss_peak = max(self.rss_peak, rss)

    def __enter__(self) -> Sampler:
        own, others = _cpu_s(self._others())
        self.host_cpu_s, self.cpu_s = -own, -(own + others)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        own, others = _cpu_s(self._others())
        self.host_cpu_s, self.cpu_s = self.host_cpu_s + own, self.cpu_s + own + others
        self._stop.set()
        self._thread.join()

    def fill(self, out: Outcome) -> None:
        out.cpu_s, out.host_cpu_s = self.cpu_s, self.host_cpu_s
        if self.reachable:
            out.threads_peak = self.threads_peak
            if out.spawned:
                out.rss_per_run_kib = (self.rss_peak - self.base_rss) / out.spawned


# --- the cases, each in its own process --------------------------------------------------


def drive(
    spawn: Callable[[], fl.types.RunHandle],
    out: Outcome,
    deadline: float,
    sampler: Sampler,
    spawners: int,
    spawn_all: Callable[[int], Sequence[Any]] | None = None,
) -> None:
    """Spawn ``out.runs`` runs, one after another as a host would (or from ``spawners``
    threads, as many request handlers would, or all with ``spawn_all``), then wait for them
    all, both until ``deadline`` (time.monotonic); fill ``out`` with what got done."""
    start = time.perf_counter()
    handles: list[fl.types.RunHandle] = []

    def spawn_some(n: int) -> None:
        if spawn_all is not None:
            handles.extend(spawn_all(n))
            return
        mine: list[fl.types.RunHandle] = []
        for _ in range(n):
            if time.monotonic() > deadline:
                break
            mine.append(spawn())
        handles.extend(mine)

    with sampler:
        shares = [out.runs // spawners + (i < out.runs % spawners) for i in range(spawners)]
        threads = [
            threading.Thread(target=spawn_some, args=(n,), name=f"fleet-spawner-{i}")
            for i, n in enumerate(shares[1:])
        ]
        for t in threads:
            t.start()
        spawn_some(shares[0])
        for t in threads:
            t.join()
        out.spawn_s = time.perf_counter() - start
        results = [h.wait(timeout=max(0.0, deadline - time.monotonic())) for h in handles]
        out.wall_s = time.perf_counter() - start
    out.spawned = len(handles)
    out.completed = sum(r.ok for r in results)
    out.steps_done = sum(r.steps for r in results)
    out.timed_out = out.completed < out.runs and time.monotonic() > deadline
    odd = [r for r in results if not r.ok and r.status is not fl.RunStatus.RUNNING]
    if odd:
        out.problem = f"{len(odd)} runs ended {odd[0].status.value}: {odd[0].reason}"
    sampler.fill(out)


def case_runtime(
    out: Outcome, deadline: float, args: argparse.Namespace, llm: fl.LLM | None
) -> None:
    """One Runtime, over a ScriptedLLM or the given model."""
    if llm is None:
        llm = fl.ScriptedLLM(script(out.steps), latency_s=out.latency_s)
    agent = fleet_agent(llm, out.steps)
    with (
        tempfile.TemporaryDirectory(prefix="fleet-") as d,
        fl.Runtime.open(Path(d) / "fl", agents=[agent], max_model_calls=args.max_model_calls) as rt,
    ):
        spawn_all = None if args.one_by_one else (lambda n: rt.spawn_many(agent, ["go"] * n))
        drive(lambda: rt.spawn(agent, "go"), out, deadline, Sampler(), args.spawners, spawn_all)


def case_pool(out: Outcome, deadline: float, args: argparse.Namespace) -> None:
    """A WorkerPool of two processes; threads and RSS summed over the host and workers."""
    os.environ[STEPS_ENV], os.environ[LATENCY_ENV] = str(out.steps), str(out.latency_s)
    with (
        tempfile.TemporaryDirectory(prefix="fleet-") as d,
        fl.WorkerPool(Path(d) / "fl", agents=["fleet_agents:pool_agent"], processes=2) as pool,
    ):
        sampler = Sampler(lambda: [w.pid for w in pool.workers if w.alive])
        spawn_all = None if args.one_by_one else (lambda n: pool.spawn_many("fleet", ["go"] * n))
        drive(lambda: pool.spawn("fleet", "go"), out, deadline, sampler, args.spawners, spawn_all)


@contextlib.contextmanager
def fleet_server(steps: int, latency_s: float) -> Iterator[str]:
    """``fleet_server.py`` in a subprocess; yields its base URL."""
    server = subprocess.Popen(
        [
            sys.executable,
            str(HERE / "fleet_server.py"),
            f"--steps={steps}",
            f"--latency-s={latency_s}",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        yield server.stdout.readline().split()[-1]
    finally:
        assert server.stdin is not None
        server.stdin.close()  # the server exits when its stdin closes
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()


def case_openai(out: Outcome, deadline: float, args: argparse.Namespace) -> None:
    """The runtime case through fl.OpenAIChat against fleet_server.py in a subprocess."""
    with fleet_server(out.steps, out.latency_s) as url:
        llm = fl.OpenAIChat("fleet", base_url=url, api_key="x")
        case_runtime(out, deadline, args, llm)


def case_openai_sdk(out: Outcome, deadline: float) -> None:
    """The openai case's requests made by the SDK alone (``fleet_sdk.py``), no foldloop."""
    import fleet_sdk  # noqa: PLC0415 - a reference, imported when it runs

    with fleet_server(out.steps, out.latency_s) as url, Sampler() as sampler:
        got = asyncio.run(fleet_sdk.fleet(out.runs, out.steps, deadline, url))
    out.spawned, out.completed, out.steps_done = out.runs, got.completed, got.steps_done
    out.wall_s, out.timed_out, out.problem = got.wall_s, got.timed_out, got.problem
    sampler.fill(out)


def case_lean(out: Outcome, deadline: float) -> None:
    """The same workload through the least shell DESIGN allows (``fleet_lean.py``)."""
    import fleet_lean  # noqa: PLC0415 - a reference, imported when it runs

    with tempfile.TemporaryDirectory(prefix="fleet-lean-") as d, Sampler() as sampler:
        fleet = fleet_lean.LeanFleet(Path(d), out.runs, out.steps, out.latency_s)
        out.wall_s = fleet.run(deadline)
    out.spawned, out.completed = out.runs, fleet.settled
    out.steps_done = fleet.settled * out.steps
    out.timed_out = fleet.settled < out.runs
    sampler.fill(out)


def case_langgraph(out: Outcome, deadline: float) -> None:
    """The same workload as a LangGraph agent loop (``fleet_langgraph.py``)."""
    import fleet_langgraph  # noqa: PLC0415 - an optional reference, imported when it runs

    with tempfile.TemporaryDirectory(prefix="fleet-lg-") as d, Sampler() as sampler:
        db = Path(d) / "checkpoints.sqlite"
        got = asyncio.run(fleet_langgraph.fleet(out.runs, out.steps, out.latency_s, deadline, db))
    out.spawned, out.completed, out.steps_done = out.runs, got.completed, got.steps_done
    out.wall_s, out.timed_out, out.problem = got.wall_s, got.timed_out, got.problem
    sampler.fill(out)


def child(args: argparse.Namespace) -> None:
    """Run one case here and print its outcome (``RESULT {json}``, the last line)."""
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    out = Outcome(args.child, args.runs, args.steps, args.latency_s, foldloop=revision())
    deadline = time.monotonic() + args.timeout_s
    if args.child in ("1k", "10k"):
        case_runtime(out, deadline, args, None)
    elif args.child == "10k-pool":
        case_pool(out, deadline, args)
    elif args.child == "openai":
        case_openai(out, deadline, args)
    elif args.child == "openai-sdk":
        case_openai_sdk(out, deadline)
    elif args.child == "10k-lean":
        case_lean(out, deadline)
    else:
        case_langgraph(out, deadline)
    print("RESULT " + json.dumps(dataclasses.asdict(out)), flush=True)


# --- the host: one child per case, a table at the end -----------------------------------


def run_case(case: Case, runs: int, args: argparse.Namespace) -> Outcome:
    missing = [m for m in NEEDS.get(case.name, ()) if not installed(m)]
    if missing:
        return Outcome(case.name, runs, case.steps, case.latency_s, skipped=missing[0])
    command = [
        sys.executable,
        __file__,
        f"--child={case.name}",
        f"--runs={runs}",
        f"--steps={case.steps}",
        f"--latency-s={args.latency_s or case.latency_s}",
        f"--timeout-s={args.timeout_s}",
        f"--spawners={args.spawners}",
    ]
    if args.max_model_calls:
        command.append(f"--max-model-calls={args.max_model_calls}")
    if args.one_by_one:
        command.append("--one-by-one")
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    watchdog = threading.Timer(args.timeout_s + GRACE_S, proc.kill)
    watchdog.start()
    result: Outcome | None = None
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("RESULT "):
            result = Outcome(**json.loads(line.removeprefix("RESULT ")))
        else:
            print("   " + line, end="", flush=True)
    proc.wait()
    watchdog.cancel()
    if result is None:
        result = Outcome(case.name, runs, case.steps, args.latency_s or case.latency_s)
        result.problem = f"the case's process ended with code {proc.returncode} and no result"
    return result


def describe(case: Case, out: Outcome) -> str:
    if out.skipped:
        return f"{out.skipped} not installed: skipped"
    head = (
        f"{case.name}: {out.runs:,} runs x {out.steps} steps, model {out.latency_s:g} s: "
        f"{out.wall_s:.1f} s, {out.rate:,.0f} steps/s = {out.share:.0%} of the bound "
        f"({out.runs / out.latency_s:,.0f} steps/s)"
    )
    if out.steps_done:
        head += f"\n   CPU {out.cpu_s / out.steps_done * 1e6:,.0f} us a step (spawn included)"
        workers_s = out.cpu_s - out.host_cpu_s
        if workers_s > 0:  # a pool: the workers' CPU beside the host's (a replaced one's lost)
            head += f" (the host {out.host_cpu_s:.1f} s, its workers {workers_s:.1f} s)"
    if out.spawn_s:
        head += f", spawning took {out.spawn_s:.1f} s"
        if out.spawn_s > out.steps * out.latency_s:
            head += " (longer than a run: the runs were never all in flight, see RSS/run)"
    if out.timed_out:
        head += (
            f"\n   timed out: {out.spawned:,} of {out.runs:,} runs spawned, {out.completed:,} "
            f"completed, {out.steps_done:,} of {out.runs * out.steps:,} steps"
        )
    if out.problem:
        head += f"\n   problem: {out.problem}"
    return head


def met(case: Case, out: Outcome) -> str:
    if out.skipped or case.min_share is None:
        return "-"
    checks = [out.share >= case.min_share]
    if case.max_threads is not None:
        checks.append(out.threads_peak is not None and out.threads_peak <= case.max_threads)
    if case.max_rss_kib is not None:
        checks.append(out.rss_per_run_kib is not None and out.rss_per_run_kib <= case.max_rss_kib)
    return "yes" if all(checks) and not out.timed_out else "no"


def _rss(out: Outcome) -> str:
    """RSS growth a run; ``*`` when spawning outlasted a run, so fewer were ever in flight."""
    if out.rss_per_run_kib is None:
        return "n/a"
    partial = "*" if out.spawn_s > out.steps * out.latency_s else ""
    return f"{out.rss_per_run_kib:.0f} KiB{partial}"


def table(rows: list[tuple[Case, Outcome]]) -> None:
    header = (
        "case",
        "runs x steps",
        "latency",
        "wall s",
        "steps/s",
        "share of bound",
        "target",
        "threads peak",
        "RSS/run",
        "met",
    )
    lines = [header]
    for case, out in rows:
        if out.skipped:
            lines.append((case.name, "skipped", "", "", "", "", "", "", "", ""))
            continue
        lines.append(
            (
                case.name,
                f"{out.runs:,} x {out.steps}",
                f"{out.latency_s:g} s",
                f"{out.wall_s:.1f}" + (" (timeout)" if out.timed_out else ""),
                f"{out.rate:,.0f}",
                f"{out.share:.0%}",
                case.target,
                "n/a" if out.threads_peak is None else f"{out.threads_peak:,}",
                _rss(out),
                met(case, out),
            )
        )
    widths = [max(len(row[i]) for row in lines) for i in range(len(header))]
    for row in lines:
        print(" | ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    if any(_rss(out).endswith("*") for _, out in rows):
        print("* spawning outlasted a run: fewer runs than N were ever in flight at once")


def revision() -> str:
    """foldloop's git revision (``+dirty`` with uncommitted changes), and where it is."""
    root = Path(fl.__file__).resolve().parent.parent
    try:
        rev = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return f"unknown ({root})"
    return f"{rev}{'+dirty' if dirty else ''} ({root})"


def host(args: argparse.Namespace) -> None:
    names = args.case or list(CASES)
    rows: list[tuple[Case, Outcome]] = []
    for name in names:
        case = CASES[name]
        runs = args.runs or (case.runs // 10 if args.quick else case.runs)
        print(f"{name}: {runs:,} runs x {case.steps} steps ...", flush=True)
        out = run_case(case, runs, args)
        print(describe(case, out), flush=True)
        rows.append((case, out))
    done = {case.name: out for case, out in rows if not out.skipped and out.wall_s}
    if "1k" in done and "langgraph" in done and done["langgraph"].rate:
        ours, theirs = done["1k"], done["langgraph"]
        print(
            f"foldloop (1k) / LangGraph ainvoke + AsyncSqliteSaver: "
            f"{ours.rate / theirs.rate:.2f}x the steps/s ({ours.share:.0%} against "
            f"{theirs.share:.0%} of the bound)"
        )
    if "10k" in done and "10k-lean" in done:
        ours_us, lean_us = (done[n].cpu_s / done[n].steps_done * 1e6 for n in ("10k", "10k-lean"))
        print(
            f"foldloop (10k) / the lean shell (10k-lean): {ours_us / lean_us:.2f}x the CPU a "
            f"step ({ours_us:,.0f} us against {lean_us:,.0f} us)"
        )
    print()
    table(rows)
    print(f"\ncommand: {shlex.join([Path(sys.executable).name, *sys.argv])}")
    seen = {out.foldloop for _, out in rows if out.foldloop}
    if len(seen) > 1:  # the tree changed between cases
        for case, out in rows:
            print(f"foldloop ({case.name}): {out.foldloop}")
    else:
        print(f"foldloop: {seen.pop() if seen else revision()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--case", nargs="+", choices=list(CASES), help="default: all of them")
    parser.add_argument("--quick", action="store_true", help="a tenth of the runs")
    parser.add_argument("--runs", type=int, help="runs in flight, instead of the case's")
    parser.add_argument("--latency-s", type=float, help="model latency, instead of 1 s")
    parser.add_argument("--timeout-s", type=float, default=300.0, help="per case (default 300)")
    parser.add_argument("--max-model-calls", type=int, help="Runtime.open(max_model_calls=...)")
    parser.add_argument(
        "--spawners",
        type=int,
        default=1,
        help="threads starting the runs, each with spawn_many (or spawn, --one-by-one); default 1",
    )
    spawning = parser.add_mutually_exclusive_group()
    spawning.add_argument(
        "--spawn-many",
        action="store_true",
        help="start the runs with spawn_many, their starts sharing commits (the default)",
    )
    spawning.add_argument(
        "--one-by-one",
        action="store_true",
        help="start the runs with spawn in a loop (from each of --spawners threads)",
    )
    parser.add_argument("--child", choices=list(CASES), help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
    else:
        host(args)


if __name__ == "__main__":
    main()
