"""WorkerPool: runs driven by real worker processes on one store.

Every test starts real subprocesses (``python -m foldloop.runtime._pool_worker``); the
agents come from ``pool_agents``, which the workers import through the host's sys.path.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import msgspec
import pytest

import foldloop as fl
from foldloop.runtime import _pool as pool_module
from foldloop.runtime import _pool_args as pool_args
from foldloop.runtime._lifecycle import CLOSED, REOPEN
from foldloop.runtime._pool_process import WorkerProcess
from foldloop.runtime._pool_protocol import (
    Failed,
    Ready,
    Refused,
    Spawn,
    Spawned,
    SpawnedMany,
    decode_reply,
)
from foldloop.runtime._waiting import Waiter
from tests import pool_agents
from tests.waiting import wait_until

WORKER = [sys.executable, "-m", "foldloop.runtime._pool_worker"]


def _env() -> dict[str, str]:
    """This process's environment with its sys.path, as a pool gives its workers."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p or os.getcwd() for p in sys.path)}


def _wait_for_type(rt: fl.Runtime, run_id: str, kind: str, timeout: float = 30) -> None:
    wait_until(
        lambda: any(r.type == kind for r in rt.events(run_id)), timeout, f"{kind} in {run_id}"
    )


def test_runs_are_spread_over_the_workers_and_complete(store_path: Path) -> None:
    with fl.WorkerPool(store_path, agents=["pool_agents:calc"], processes=2) as pool:
        workers = pool.workers
        assert len({w.pid for w in workers}) == 2
        assert os.getpid() not in {w.pid for w in workers}
        handles = [pool.spawn("calc", f"sum {i}") for i in range(4)]
        results = [h.wait(timeout=30) for h in handles]
        assert [r.status for r in results] == [fl.RunStatus.COMPLETED] * 4
        assert {r.output for r in results} == {"5"}
        assert [w.spawned for w in pool.workers] == [2, 2]
        # The host's runtime knows no agent: every step was decided in a worker.
        assert pool.runtime.agent_named("calc") is None
        types = [r.type for r in pool.runtime.events(handles[0].id)]
        assert types.count("tool.completed") == 1
        assert types[-1] == "run.completed"


def test_a_handle_hears_how_its_run_ended_from_the_worker_that_drove_it(
    store_path: Path,
) -> None:
    """A wait on a run a worker drove to its end needs no read of the log: the worker tells
    the host's handle (white-box: ``_ended`` is what a wait returns without a read), also
    of a run that ended before its spawn returned. A run that may move on is not told."""
    with fl.WorkerPool(store_path, agents=["pool_agents:calc", "pool_agents:short"]) as pool:
        ended = pool.spawn_many("calc", [f"sum {i}" for i in range(10)])
        stopped = pool.spawn("short", "count")  # limit_reached: a resume can change it
        wait_until(lambda: all(h._ended is not None for h in ended), 30, "the ends to arrive")
        told = {h.id: h.wait() for h in ended}
        assert stopped.wait(timeout=30).status is fl.RunStatus.LIMIT_REACHED
    with fl.Runtime.open(store_path) as rt:
        for run_id, result in told.items():
            assert result == rt.handle(run_id).wait(timeout=5)
            assert result.status is fl.RunStatus.COMPLETED
    assert stopped._ended is None


def test_spawn_many_spreads_the_runs_over_the_workers_in_input_order(
    store_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pool_module, "SPAWN_WINDOW", 20)  # 200 runs go 20 in flight at a time,
    monkeypatch.setattr(pool_module, "SPAWN_CHUNK", 10)  # 10 a request, workers taking turns
    with fl.WorkerPool(store_path, agents=["pool_agents:calc"], processes=2) as pool:
        with pytest.raises(fl.ConfigError, match=r"^inputs\[1\]: input must be a str; got int$"):
            pool.spawn_many("calc", ["fine", 7])  # type: ignore[list-item]
        with pytest.raises(fl.ConfigError, match=r"^inputs\[2\]: input contains an unpaired"):
            pool.spawn_many("calc", ["fine", "ok", "\ud800"])
        with pytest.raises(fl.ConfigError, match=r"^inputs\[1\]: input is 2,000,000 bytes"):
            pool.spawn_many("calc", ["fine", "x" * 2_000_000])
        assert [w.spawned for w in pool.workers] == [0, 0]  # checked before any request is sent
        handles = pool.spawn_many("calc", [f"sum {i}" for i in range(200)])
        results = [h.wait(timeout=60) for h in handles]
        assert {r.status for r in results} == {fl.RunStatus.COMPLETED}
        states = [pool.runtime.state(h.id) for h in handles]
        inputs = [next(m.content for m in st.messages if m.role == "user") for st in states]
        assert inputs == [f"sum {i}" for i in range(200)]
        assert [w.spawned for w in pool.workers] == [100, 100]
        # a str subclass (numpy's str_, say) is sent and recorded as its text
        mixed = pool.spawn_many("calc", [Text("sum 1"), "sum 2"], metadata={"k": Text("v")})
        lone = pool.spawn("calc", Text("sum 3"), metadata={Text("k"): "v"})
        assert all(h.wait(timeout=60).ok for h in (*mixed, lone))


def test_spawn_many_of_fewer_runs_than_a_request_holds_gives_each_worker_a_share(
    store_path: Path,
) -> None:
    # 12 runs went in one request to one worker: a worker's max_active_runs then capped them.
    with fl.WorkerPool(store_path, agents=["pool_agents:calc"], processes=2) as pool:
        handles = pool.spawn_many("calc", [f"sum {i}" for i in range(12)])
        assert [w.spawned for w in pool.workers] == [6, 6]
        handles += pool.spawn_many("calc", [f"sum {i}" for i in range(3)])
        assert sorted(w.spawned for w in pool.workers) == [7, 8]
        assert all(h.wait(timeout=60).ok for h in handles)


def test_spawn_many_refuses_an_input_its_run_started_cannot_hold_before_sending_any(
    store_path: Path,
) -> None:
    """Under an event's limit alone, over it beside the agent's instructions: refused on the
    host, named by its place among all the inputs, before a chunk goes to a worker."""
    with fl.WorkerPool(store_path, agents=["pool_agents:wordy"], processes=1) as pool:
        inputs = [f"q{i}" for i in range(300)] + ["x" * 600_000]
        with pytest.raises(fl.ConfigError, match=r"^inputs\[300\]: input is 600,000 bytes; with"):
            pool.spawn_many("wordy", inputs)
        assert [w.spawned for w in pool.workers] == [0]
        assert pool.runtime.runs() == []


class Text(str):
    """A str subclass."""


def test_a_worker_killed_mid_tool_is_replaced_and_its_run_recovered(
    store_path: Path, tmp_path: Path
) -> None:
    gate = tmp_path / "go"
    with fl.WorkerPool(store_path, agents=["pool_agents:blocker"], processes=1) as pool:
        handle = pool.spawn("blocker", str(gate))
        _wait_for_type(pool.runtime, handle.id, "tool.requested")
        victim = pool.workers[0]
        os.kill(victim.pid, signal.SIGKILL)
        gate.touch()  # too late for the killed tool: its outcome stays unknown

        def replaced() -> bool:  # nobody spawns or waits: the pool replaces it by itself
            worker = pool.workers[0]
            return worker.pid != victim.pid and bool(worker.owner)

        wait_until(replaced, 30, "the killed worker's replacement to be ready")
        replacement = pool.workers[0]
        assert replacement.alive
        result = handle.wait(timeout=30)
        assert result.status is fl.RunStatus.COMPLETED, result
        assert replacement.recovered == (handle.id,)
        records = list(pool.runtime.events(handle.id))
        failed = [r.event for r in records if r.type == "tool.failed"]
        assert [f.kind for f in failed] == ["interrupted"]  # type: ignore[attr-defined]
        resumed = [r.event for r in records if r.type == "run.resumed"]
        assert [e.owner for e in resumed] == [replacement.owner]  # type: ignore[attr-defined]
        assert result.output.startswith("tool said: error (interrupted)")


def test_a_decision_taken_in_the_host_is_carried_by_a_worker(store_path: Path) -> None:
    with fl.WorkerPool(store_path, agents=["pool_agents:gated"], processes=2) as pool:
        handle = pool.spawn("gated", "one plus one")
        parked = handle.wait(timeout=30)
        assert parked.status is fl.RunStatus.AWAITING_APPROVAL, parked
        (pending,) = pool.runtime.pending_approvals()
        pool.runtime.approve(run_id=handle.id, call_id=pending.call_id, by="alice")
        result = handle.wait(timeout=30)
        assert result.status is fl.RunStatus.COMPLETED and result.output == "2", result


def test_a_pooled_cancel_of_a_parked_run_returns_once_it_is_recorded(store_path: Path) -> None:
    """No worker holds a run parked at an approval: the host cancels it itself, and
    returns once run.cancelled is in the log, as any cancel does."""
    with fl.WorkerPool(store_path, agents=["pool_agents:gated"], processes=1) as pool:
        handle = pool.spawn("gated", "one plus one")
        assert handle.wait(timeout=30).status is fl.RunStatus.AWAITING_APPROVAL
        handle.cancel("no")
        assert pool.runtime.state(handle.id).status is fl.RunStatus.CANCELLED


def test_a_worker_refusal_reaches_the_host_as_the_same_error(store_path: Path) -> None:
    with fl.WorkerPool(store_path, agents=["pool_agents:calc"], processes=1) as pool:
        assert pool.spawn("calc", "first", run_id="same").wait(timeout=30).ok
        with pytest.raises(fl.ConfigError, match="run 'same' already exists"):
            pool.spawn("calc", "second", run_id="same")
        with pytest.raises(fl.ConfigError, match="do not know agent 'blocker'"):
            pool.spawn("blocker", "x")
        with pytest.raises(fl.ConfigError, match=r"metadata\['k'\] must be a str"):
            pool.spawn("calc", "x", metadata={"k": 1})  # type: ignore[dict-item]
        with pytest.raises(fl.ConfigError, match="run_id must be"):
            pool.spawn("calc", "x", run_id=7)  # type: ignore[arg-type]
        assert pool.workers[0].spawned == 1  # none of those left the host
        types = [r.type for r in pool.runtime.events("same")]
        assert types.count("run.started") == 1 and types[-1] == "run.completed"


def test_bad_pool_arguments_are_refused_before_any_process_starts(store_path: Path) -> None:
    with pytest.raises(fl.ConfigError, match="module:attr"):
        fl.WorkerPool(store_path, agents=["no_colon_here"])
    with pytest.raises(fl.ConfigError, match="cannot load agent 'pool_agents:nobody'"):
        fl.WorkerPool(store_path, agents=["pool_agents:nobody"])
    with pytest.raises(fl.ConfigError, match="raised RuntimeError: the settings file is missing"):
        fl.WorkerPool(store_path, agents=["pool_broken:agent"])
    with pytest.raises(fl.ConfigError, match="importing pool_exits raised SystemExit: 3"):
        fl.WorkerPool(store_path, agents=["pool_exits:agent"])  # not the host's exit
    with pytest.raises(
        fl.ConfigError, match=r"calling unconfigured\(\) raised RuntimeError: no API"
    ):
        fl.WorkerPool(store_path, agents=["pool_agents:unconfigured"])
    with pytest.raises(fl.ConfigError, match="processes must be an int >= 1"):
        fl.WorkerPool(store_path, agents=["pool_agents:calc"], processes=0)
    with pytest.raises(fl.ConfigError, match="import paths of agents"):
        fl.WorkerPool(store_path, agents=[])
    for bad in (0, -1, 2.0, "0.05", True, math.nan, math.inf):
        with pytest.raises(fl.ConfigError, match="switch_interval is the workers'"):
            fl.WorkerPool(store_path, agents=["pool_agents:calc"], switch_interval=bad)  # type: ignore[arg-type]
    assert not any(w.name.startswith("foldloop-pool-") for w in threading.enumerate())


_TOO_MANY = pool_args.MAX_PROCESSES + 1
_CPUS = pool_args.CPUS


@pytest.mark.parametrize(
    ("given", "message"),
    [
        (
            {"processes": True},
            f"processes must be an int >= 1, or None for one per CPU ({_CPUS} here); got True",
        ),
        (
            {"processes": _TOO_MANY},
            f"processes={_TOO_MANY} is more than the {_TOO_MANY - 1} workers a pool starts here "
            f"(4 per CPU, at least 8; this process may use {_CPUS} CPUs): each worker is a whole "
            "Python process driving thousands of runs, so more workers than CPUs buy nothing; "
            f"pass processes=None for one per CPU, or a number up to {_TOO_MANY - 1}",
        ),
        *(
            (
                {"start_timeout": bad},
                f"start_timeout must be a number of seconds from 0.001 to 86400; got {bad!r}",
            )
            for bad in (0, -1, math.nan, math.inf, True, "60")
        ),
        *(
            (
                {"log_level": bad},
                "log_level must be the name of a logging level, one of debug, info, warning, "
                f"error, critical (any case); got {bad!r}",
            )
            for bad in ("bogus", 5, None, "", "notset")
        ),
    ],
)
def test_a_bad_pool_setting_says_what_to_pass_before_any_process_starts(
    store_path: Path, given: dict[str, object], message: str
) -> None:
    """processes=True, 1000 processes (a typo that would start 1000 interpreters), a
    start_timeout of nan, a log_level the worker cannot log at: each is refused up front."""
    with pytest.raises(fl.ConfigError, match=f"^{re.escape(message)}$"):
        fl.WorkerPool(store_path, agents=["pool_agents:calc"], **{"processes": 1, **given})  # type: ignore[arg-type]
    assert not store_path.exists()  # refused before the pool even opened its store
    assert not any(w.name.startswith("foldloop-pool-") for w in threading.enumerate())


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no CPU affinity here")
def test_a_pool_counts_the_cpus_this_process_may_use_not_the_hosts() -> None:
    # Pinned to one CPU (taskset, a cpuset), a process gets one worker by default.
    script = (
        "import os; os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]}); "
        "from foldloop.runtime import _pool_args as a; print(a.CPUS, a.check_processes(None))"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.split() == ["1", "1"]  # before: os.cpu_count(), the host's


def test_a_log_level_is_taken_in_any_case_as_the_worker_takes_it() -> None:
    names = ("DEBUG", "Info", "warning", "WARN", "Error", "critical", "fatal")
    assert [pool_args.check_log_level(n) for n in names] == [n.lower() for n in names]


@pytest.mark.parametrize(
    ("given", "seen"),
    [({}, 0.05), ({"switch_interval": 0.02}, 0.02), ({"switch_interval": None}, 0.005)],
)
def test_workers_run_with_the_switch_interval_asked_for(
    store_path: Path, given: dict[str, float | None], seen: float
) -> None:
    """A worker drives hundreds of runs on threads: the pool sets its interpreter's switch
    interval (0.05 s unless told otherwise; None keeps Python's 0.005), and leaves the
    host's alone. A tool run in the worker reports the worker's own."""
    before = sys.getswitchinterval()
    with fl.WorkerPool(store_path, agents=["pool_agents:probe"], processes=1, **given) as pool:
        run = pool.spawn("probe", "go")
        assert run.wait(timeout=30).output == "seen"
        (done,) = [r.event for r in pool.runtime.events(run.id) if r.type == "tool.completed"]
        assert float(done.result) == pytest.approx(seen, abs=1e-6)  # type: ignore[attr-defined]
    assert sys.getswitchinterval() == before


def test_a_worker_that_cannot_start_says_why_and_exits(store_path: Path) -> None:
    fl.Runtime.open(store_path).close()
    out = subprocess.run(
        [*WORKER, "--store", str(store_path), "--agent", "pool_agents:nobody"],
        capture_output=True,
        timeout=60,
        env=_env(),
        check=False,
    )
    assert out.returncode == 1
    reply = decode_reply(out.stdout.splitlines()[0])
    assert isinstance(reply, Failed)
    assert "cannot load agent 'pool_agents:nobody'" in reply.message
    with pytest.raises(msgspec.DecodeError):
        decode_reply(b"not a protocol line")


def test_a_run_left_going_at_close_is_continued_by_the_next_pool(
    store_path: Path, tmp_path: Path
) -> None:
    gate = tmp_path / "go"
    with fl.WorkerPool(store_path, agents=["pool_agents:blocker"], processes=1) as pool:
        run_id = pool.spawn("blocker", str(gate)).id
        _wait_for_type(pool.runtime, run_id, "tool.requested")
    # Closed with the tool still blocked: the worker stopped driving the run, which waits.
    gate.touch()
    with fl.WorkerPool(store_path, agents=["pool_agents:blocker"], processes=1) as pool:
        assert pool.workers[0].recovered == (run_id,)
        result = pool.handle(run_id).wait(timeout=30)
        assert result.status is fl.RunStatus.COMPLETED, result
        with pytest.raises(fl.RunNotFound):
            pool.handle("no-such-run")


def test_cancel_of_a_run_in_a_worker_reaches_it_at_once(store_path: Path, tmp_path: Path) -> None:
    gate = tmp_path / "never"
    with fl.WorkerPool(store_path, agents=["pool_agents:blocker"], processes=1) as pool:
        handle = pool.spawn("blocker", str(gate))
        _wait_for_type(pool.runtime, handle.id, "tool.requested")
        handle.cancel("not needed")  # the worker holds the lease: the host alone could not
        result = handle.wait(timeout=10)
        assert result.status is fl.RunStatus.CANCELLED, result
        assert "not needed" in result.reason
        types = [r.type for r in pool.runtime.events(handle.id)]
        assert types[-1] == "run.cancelled" and "tool.completed" not in types
        handle.cancel()  # cancelling a finished run again changes nothing
        assert [r.type for r in pool.runtime.events(handle.id)] == types
        gate.touch()  # lets the abandoned tool thread end


def _exited(pid: int) -> bool:
    """The process is gone or a zombie (its parent was killed before reaping it)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
    return "\nState:\tZ" in status


def test_workers_of_a_killed_host_stop_and_leave_their_runs_resumable(
    store_path: Path, tmp_path: Path
) -> None:
    gate = tmp_path / "go"
    host = f"""
import sys, time
import foldloop as fl
pool = fl.WorkerPool({str(store_path)!r}, agents=["pool_agents:blocker"], processes=2)
run = pool.spawn("blocker", {str(gate)!r})
while not any(r.type == "tool.requested" for r in pool.runtime.events(run.id)):
    time.sleep(0.01)
print("DRIVING", run.id, *[w.pid for w in pool.workers], flush=True)
time.sleep(600)
"""
    proc = subprocess.Popen(
        [sys.executable, "-c", host], stdout=subprocess.PIPE, env=_env(), text=True
    )
    assert proc.stdout is not None
    line = ""
    while not line.startswith("DRIVING "):  # past the host's log lines
        line = proc.stdout.readline()
        assert line, "the host exited before its run reached the tool"
    _, run_id, *pids = line.split()
    proc.kill()  # SIGKILL: the host cannot close its pool
    proc.wait()
    wait_until(lambda: all(_exited(int(pid)) for pid in pids), 30, "the workers to exit")
    gate.touch()
    with fl.WorkerPool(store_path, agents=["pool_agents:blocker"], processes=1) as pool:
        assert pool.workers[0].recovered == (run_id,)
        assert pool.handle(run_id).wait(timeout=30).ok


def test_a_run_at_its_limit_is_resumed_on_a_worker(store_path: Path) -> None:
    with fl.WorkerPool(store_path, agents=["pool_agents:short"], processes=2) as pool:
        handle = pool.spawn("short", "count")
        stopped = handle.wait(timeout=30)
        assert stopped.status is fl.RunStatus.LIMIT_REACHED, stopped
        with pytest.raises(fl.ConfigError, match="does not know"):
            pool.runtime.resume(handle.id)  # the host drives nothing
        resumed = pool.resume(handle.id, extend=fl.Limits(max_steps=10))
        assert resumed.id == handle.id
        result = resumed.wait(timeout=30)
        assert result.status is fl.RunStatus.COMPLETED and result.steps == 4, result
        with pytest.raises(fl.ConfigError, match="cannot be resumed"):
            pool.resume(handle.id)  # the worker's refusal, raised here as the same class
        with pytest.raises(fl.RunNotFound):
            pool.resume("no-such-run")


def test_a_closed_pool_says_to_open_a_new_pool(store_path: Path) -> None:
    with fl.WorkerPool(store_path, agents=["pool_agents:calc"], processes=1) as pool:
        handle = pool.spawn("calc", "sum")
        assert handle.wait(timeout=30).ok
    closed = r"^this WorkerPool is closed; open a new one with fl\.WorkerPool\(\.\.\.\)$"
    with pytest.raises(fl.ConfigError, match=closed):
        pool.spawn("calc", "sum")
    with pytest.raises(fl.ConfigError, match=closed):
        pool.spawn_many("calc", ["sum"])
    with pytest.raises(fl.ConfigError, match=closed):
        pool.resume(handle.id)
    with pytest.raises(fl.ConfigError, match=closed):
        pool.handle(handle.id)
    gone = r"^this handle's WorkerPool is closed; open a new one .* with pool\.handle\(run_id\)$"
    with pytest.raises(fl.ConfigError, match=gone):
        handle.wait(timeout=1)
    with pytest.raises(fl.ConfigError, match=gone):
        handle.cancel()


def test_a_spawn_that_a_close_overtakes_after_its_check_says_the_pool_is_closed(
    store_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The close lands between the spawn's first check and the spawn counting itself as
    # under way (which a close waits for): the spawn must still see the close, not read a
    # store the close has shut.
    pool = fl.WorkerPool(store_path, agents=["pool_agents:calc"], processes=1)
    spawns = pool._spawns  # the seam where the close overtakes
    enter = spawns.call

    @contextlib.contextmanager
    def overtaken() -> Iterator[None]:
        closing = threading.Thread(target=pool.close)  # another thread's close, done here
        closing.start()
        closing.join(60)
        with enter():
            yield

    monkeypatch.setattr(spawns, "call", overtaken)
    closed = r"^this WorkerPool is closed; open a new one with fl\.WorkerPool\(\.\.\.\)$"
    with pytest.raises(fl.ConfigError, match=closed):
        pool.spawn("calc", "sum")
    assert pool.runtime.closed


def test_a_request_to_a_worker_whose_process_ended_fails_at_once() -> None:
    """A child of the worker still holds its stdin, so a write there succeeds: the request
    must fail all the same, not wait for an answer that cannot come."""
    child = "import sys; sys.stdin.read()"  # holds the pipe until the host hangs up
    script = (
        "import subprocess, sys; "
        f"subprocess.Popen([sys.executable, '-c', {child!r}], stdout=subprocess.DEVNULL)"
    )
    worker = WorkerProcess(
        [sys.executable, "-c", script], os.environ, lambda: None, lambda ended: None
    )
    try:
        wait_until(lambda: not worker.alive, 30, "the worker process to end")
        with pytest.raises(fl.errors.WorkerError, match=r"exited \(code 0\) before answering"):
            worker.request(Spawn(0, "calc", "sum"))
    finally:
        worker.stop(10)


def test_a_worker_answers_a_malformed_request_instead_of_dropping_it(store_path: Path) -> None:
    """The protocol at the pipe: a request that does not decode is refused under its id
    (a host waiting on it would otherwise wait for ever); the worker goes on serving."""
    fl.Runtime.open(store_path).close()
    worker = subprocess.Popen(
        [*WORKER, "--store", str(store_path), "--agent", "pool_agents:calc"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=_env(),
    )
    assert worker.stdin is not None and worker.stdout is not None
    try:
        assert isinstance(decode_reply(worker.stdout.readline()), Ready)
        worker.stdin.write(b'{"type":"spawn","id":7,"agent":"calc","input":5}\n')
        worker.stdin.write(b'{"type":"spawn","id":8,"agent":"calc","input":"2+3"}\n')
        worker.stdin.flush()
        worker.stdin.write(b'{"type":"spawn_many","id":9,"agent":"calc","inputs":["1",2]}\n')
        worker.stdin.write(b'{"type":"spawn_many","id":10,"agent":"nope","inputs":["1"]}\n')
        many = b'{"type":"spawn_many","id":11,"agent":"calc","inputs":["a","b","c"]}\n'
        worker.stdin.write(many)
        worker.stdin.flush()
        replies = {r.id: r for r in (decode_reply(worker.stdout.readline()) for _ in range(5))}
        refused, spawned = replies[7], replies[8]
        assert isinstance(refused, Refused) and refused.error == "ConfigError"
        assert "malformed request" in refused.message and "input" in refused.message
        assert isinstance(spawned, Spawned)
        bad_input, unknown, started = replies[9], replies[10], replies[11]
        assert isinstance(bad_input, Refused) and "malformed request" in bad_input.message
        assert isinstance(unknown, Refused) and "'nope'" in unknown.message
        assert isinstance(started, SpawnedMany) and len(set(started.run_ids)) == 3
        with fl.Runtime.open(store_path) as rt:  # started in input order, nothing else
            states = [rt.state(i) for i in started.run_ids]
            inputs = [next(m.content for m in st.messages if m.role == "user") for st in states]
            assert inputs == ["a", "b", "c"]
            assert len(rt.runs()) == 4
    finally:
        worker.stdin.close()
        assert worker.wait(timeout=30) == 0


def test_one_damaged_run_stops_nothing_else(store_path: Path, tmp_path: Path) -> None:
    """A flipped byte in one finished run: that run is reported damaged, and the rest go on:
    the listing lists every run, recover() resumes the orphan, a pool starts and recovers."""
    echo = fl.Agent(
        name="echo",
        llm=fl.ScriptedLLM(lambda messages, tools: fl.Reply(text=messages[-1].content)),
        tools=[],
    )
    with fl.Runtime.open(store_path) as rt:
        rt.spawn(echo, "MARKER-0123456789", run_id="damaged").wait(timeout=30)
        rt.spawn(echo, "intact", run_id="intact").wait(timeout=30)
    gate = tmp_path / "gate"
    code = textwrap.dedent(
        f"""
        import time
        import foldloop as fl
        from pool_agents import blocker
        rt = fl.Runtime.open({str(store_path)!r}, agents=[blocker])
        rt.spawn(blocker, {str(gate)!r}, run_id="orphan")
        while not any(r.type == "tool.requested" for r in rt.events("orphan")):
            time.sleep(0.01)
        print("IN_TOOL", flush=True)
        time.sleep(60)
        """
    )
    child = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=_env()
    )
    assert child.stdout is not None
    while child.stdout.readline().strip() != "IN_TOOL":
        assert child.poll() is None, "the child died before its tool ran"
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=30)
    data = (store_path / "data.mdb").read_bytes()
    assert b"MARKER-0123456789" in data  # only the damaged run's values hold it
    (store_path / "data.mdb").write_bytes(data.replace(b"MARKER-0123456789", b"MARKER-0000000000"))
    gate.write_text("open")
    with fl.Runtime.open(store_path) as rt:
        rows = {row.run_id: row for row in rt.runs()}
        assert set(rows) == {"damaged", "intact", "orphan"}
        assert rows["damaged"].damaged and "checksum mismatch" in rows["damaged"].reason
        assert rows["damaged"].status is fl.RunStatus.FAILED
        assert rows["intact"].status is fl.RunStatus.COMPLETED and not rows["intact"].damaged
        assert rows["orphan"].status is fl.RunStatus.INTERRUPTED
        with pytest.raises(fl.errors.CorruptRecord):
            rt.state("damaged")
    with fl.WorkerPool(store_path, agents=["pool_agents:blocker"], processes=1) as pool:
        result = pool.handle("orphan").wait(timeout=30)
        assert result.status is fl.RunStatus.COMPLETED, result.reason


def test_workers_of_a_host_killed_before_they_are_ready_exit_without_a_traceback(
    store_path: Path, tmp_path: Path
) -> None:
    """The host dies while its workers start: each finds its Ready unread (a broken pipe)
    and exits quietly, as on a hang-up; the host's stderr, which they share, stays clean."""
    gate, arrived = tmp_path / "gate", tmp_path / "arrived"
    arrived.mkdir()
    # Workers (not the host, which imports it too) stop in this import until the gate
    # opens, so the host is killed before any of them has said Ready.
    (tmp_path / "gated_start.py").write_text(
        textwrap.dedent(
            f"""
            import os, time
            from pathlib import Path
            if os.environ["HOST_PID"] != str(os.getpid()):
                Path({str(arrived)!r}, str(os.getpid())).touch()
                while not Path({str(gate)!r}).exists():
                    time.sleep(0.01)
            from pool_agents import calc
            """
        )
    )
    host = textwrap.dedent(
        f"""
        import os, sys
        sys.path.insert(0, {str(tmp_path)!r})
        os.environ["HOST_PID"] = str(os.getpid())
        import foldloop as fl
        fl.WorkerPool({str(store_path)!r}, agents=["gated_start:calc"], processes=2)
        """
    )
    with (tmp_path / "stderr").open("w+") as err:
        proc = subprocess.Popen(
            [sys.executable, "-c", host], stdout=subprocess.DEVNULL, stderr=err, env=_env()
        )

        def arrived_both() -> bool:
            assert proc.poll() is None, "the host died before its workers started"
            return len(list(arrived.iterdir())) >= 2

        wait_until(arrived_both, 30, "both workers to reach their agents' import")
        pids = [int(p.name) for p in arrived.iterdir()]
        proc.kill()  # SIGKILL: its ends of the workers' pipes close with it
        proc.wait(timeout=30)
        gate.touch()
        wait_until(lambda: all(_exited(pid) for pid in pids), 30, "the workers to exit")
        err.seek(0)
        printed = err.read()
    assert "Traceback" not in printed and "BrokenPipe" not in printed, printed


def _calc_worker(store_path: Path, err: IO[str]) -> subprocess.Popen[bytes]:
    """A worker started by hand (as a pool starts it), its stderr to ``err``."""
    return subprocess.Popen(
        [*WORKER, "--store", str(store_path), "--agent", "pool_agents:calc"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=err,
        env=_env(),
    )


def test_a_worker_whose_host_is_gone_exits_with_code_0_and_prints_nothing(
    store_path: Path, tmp_path: Path
) -> None:
    """What a killed host leaves a worker, at the pipe: both ends closed before its Ready
    (the exit code is seen here, where the worker's parent is still alive to reap it)."""
    fl.Runtime.open(store_path).close()
    with (tmp_path / "stderr").open("w+") as err:
        worker = _calc_worker(store_path, err)
        assert worker.stdin is not None and worker.stdout is not None
        worker.stdin.close()
        worker.stdout.close()
        code = worker.wait(timeout=30)
        err.seek(0)
        printed = err.read()
    assert code == 0, printed
    assert "Traceback" not in printed and "BrokenPipe" not in printed, printed


def test_a_ctrl_c_meant_for_the_host_does_not_stop_its_workers(
    store_path: Path, tmp_path: Path
) -> None:
    """SIGINT reaches the host's whole process group; a worker leaves stopping to the host
    (its hang-up), so it serves on and prints no KeyboardInterrupt."""
    fl.Runtime.open(store_path).close()
    with (tmp_path / "stderr").open("w+") as err:
        worker = _calc_worker(store_path, err)
        assert worker.stdin is not None and worker.stdout is not None
        assert isinstance(decode_reply(worker.stdout.readline()), Ready)
        worker.send_signal(signal.SIGINT)
        worker.stdin.write(b'{"type":"spawn","id":1,"agent":"calc","input":"2+3"}\n')
        worker.stdin.flush()
        assert isinstance(decode_reply(worker.stdout.readline()), Spawned)
        worker.stdin.close()
        code = worker.wait(timeout=30)
        err.seek(0)
        printed = err.read()
    assert code == 0, printed
    assert "Traceback" not in printed, printed


def test_a_worker_info_lists_few_recovered_runs_and_counts_many() -> None:
    few = fl.types.WorkerInfo(pid=7, owner="o", spawned=2, recovered=("r1", "r2"), alive=True)
    assert repr(few) == (
        "WorkerInfo(pid=7, owner='o', spawned=2, recovered=('r1', 'r2'), alive=True)"
    )
    many = fl.types.WorkerInfo(
        pid=7, owner="o", spawned=0, recovered=tuple(f"r{i}" for i in range(5000)), alive=False
    )
    assert repr(many) == (
        "WorkerInfo(pid=7, owner='o', spawned=0, recovered=<5,000 run ids>, alive=False)"
    )
    assert len(many.recovered) == 5000  # kept whole: only the repr is short


def test_a_closed_pool_leaves_no_pipe_open(store_path: Path) -> None:
    # Python's development mode warns of every file object collected still open.
    script = textwrap.dedent(
        """
        import gc, sys
        import foldloop as fl
        with fl.WorkerPool(sys.argv[1], agents=["pool_agents:calc"], processes=2) as pool:
            assert pool.spawn("calc", "sum").wait(timeout=30).ok
        gc.collect()
        print("closed")
        """
    )
    dev = ["-X", "dev", "-W", "error::ResourceWarning"]
    done = subprocess.run(
        [sys.executable, *dev, "-c", script, str(store_path)],
        capture_output=True,
        text=True,
        timeout=120,
        env=_env(),
        check=False,
    )
    assert done.stdout.strip() == "closed", done.stderr
    assert "ResourceWarning" not in done.stderr, done.stderr  # before: the workers' stdout pipes


@pytest.mark.parametrize("replaced_by", ["the wait", "the pool"])
def test_a_wait_keeps_to_its_timeout_while_a_replacement_worker_starts(
    store_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, replaced_by: str
) -> None:
    """The run's worker died and its replacement is slow to start: wait(timeout=0.5)
    returns about then (the run as it stands), not once the replacement is ready, whether
    the wait starts the replacement or the pool's own restart did a moment before; the
    replacement goes on starting and finishes the run."""
    hold = tmp_path / "hold-import"
    monkeypatch.setenv(pool_agents.HOLD_IMPORT_ENV, str(hold))
    gate = tmp_path / "go"
    with fl.WorkerPool(store_path, agents=["pool_agents:persistent"], processes=1) as pool:
        handle = pool.spawn("persistent", str(gate))
        wait_until(
            lambda: any(r.type == "tool.requested" for r in pool.runtime.events(handle.id)),
            30,
            "the run's tool call under way",
        )
        hold.touch()  # the replacement waits at its import until this goes
        letting_go = threading.Timer(30, lambda: hold.unlink(missing_ok=True))
        letting_go.start()
        try:
            victim = pool.workers[0].pid
            os.kill(victim, signal.SIGKILL)
            began = time.monotonic()
            if replaced_by == "the pool":  # its restart (1 s on) waits for the slow start
                wait_until(lambda: pool.workers[0].pid != victim, 10, "the pool's restart")
            result = handle.wait(timeout=0.5)
            took = time.monotonic() - began
        finally:
            letting_go.cancel()
            hold.unlink(missing_ok=True)
        assert took < 5, f"the restart's look and wait(timeout=0.5) took {took:.1f} s"
        assert result.status in (fl.RunStatus.INTERRUPTED, fl.RunStatus.RUNNING), result
        gate.touch()
        assert handle.wait(timeout=60).status is fl.RunStatus.COMPLETED


def test_a_wait_rides_out_its_runs_worker_dying_and_then_its_replacement(
    store_path: Path, tmp_path: Path
) -> None:
    # The handle's wait replaced the dead worker once: when the replacement died too, it
    # said "interrupted, no runtime is driving it" while the pool went on to finish the run.
    gate = tmp_path / "go"
    with fl.WorkerPool(store_path, agents=["pool_agents:persistent"], processes=1) as pool:
        handle = pool.spawn("persistent", str(gate))
        waited: list[fl.RunResult] = []

        def requests(n: int) -> bool:
            return sum(r.type == "tool.requested" for r in pool.runtime.events(handle.id)) >= n

        waiter = threading.Thread(target=lambda: waited.append(handle.wait(timeout=60)))
        waiter.start()
        for calls in (1, 2):  # the worker driving it, then the one that recovered it
            wait_until(
                lambda n=calls: (
                    sum(r.type == "tool.requested" for r in pool.runtime.events(handle.id)) >= n
                ),
                30,
                "the run's tool call under way",
            )
            victim = pool.workers[0]
            os.kill(victim.pid, signal.SIGKILL)
            wait_until(
                lambda v=victim: pool.workers[0].pid != v.pid and bool(pool.workers[0].owner),
                30,
                "a replacement ready",
            )
        gate.touch()
        waiter.join(60)
        (result,) = waited
        assert result.status is fl.RunStatus.COMPLETED, result


def test_a_wait_the_pools_close_cuts_short_says_the_pool_closed(
    store_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A wait whose read fails as the close lets the store go raises the closed runtime's
    # error; the runtime is the pool's, so it says to open the pool again, not a Runtime.
    # Which way a real close lands cannot be chosen here: the read's failure is made to.
    pool = fl.WorkerPool(store_path, agents=["pool_agents:calc"], processes=1)
    handle = pool.spawn("calc", "sum")

    def closed_under(self: Waiter, *args: object, **kwargs: object) -> fl.types.RunResult:
        pool.close()
        raise fl.ConfigError(CLOSED, advice=REOPEN)

    monkeypatch.setattr(Waiter, "wait", closed_under)
    with pytest.raises(fl.ConfigError, match="WorkerPool is closed"):
        handle.wait(timeout=30)
