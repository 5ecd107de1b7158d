"""Admission: ``max_active_runs`` caps the runs driven at once; the rest wait queued, FIFO.

Runs past the cap are recorded (``run.started`` + ``run.queued``) and start in spawn order
as slots free; a queued run can be cancelled (it never reaches the model); ``wait()`` waits
through the queue; ``recover()`` after a SIGKILL admits the dead runtime's queued runs in
spawn order. The models here are sync only (no ``acomplete``): they run on the model pool
and block until the test lets each run through.
"""

from __future__ import annotations

import operator
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import foldloop as fl
from foldloop.core import (
    Admit,
    Cancel,
    Command,
    ModelReplied,
    Resume,
    RunState,
    RunStatus,
    Start,
    decide,
    evolve,
    fold,
    replay,
)
from foldloop.events import Recorded
from foldloop.runtime._admission import Admission
from foldloop.runtime._pool_protocol import Failed, decode_reply
from tests.admission_worker import AGENT, agent
from tests.waiting import inside, wait_until

WORKER = Path(__file__).with_name("admission_worker.py")
CLI = [sys.executable, "-m", "foldloop.cli"]


class Turnstile:
    """A sync model that lets each run's calls through only when the test opens its gate;
    it records the order runs first reach it and how many calls were inside at once."""

    model = "turnstile"

    def __init__(self, *, open_all: bool = False, runtime: list[fl.Runtime] | None = None) -> None:
        self._lock = threading.Lock()
        self._gates: dict[str, threading.Event] = {}
        self._open_all = open_all
        self._runtime = runtime or []
        self.order: list[str] = []
        self.inside: set[str] = set()
        self.peak = 0
        self.peak_active = 0

    def gate(self, run: str) -> threading.Event:
        with self._lock:
            return self._gates.setdefault(run, threading.Event())

    def open(self, run: str) -> None:
        self.gate(run).set()

    def complete(
        self,
        messages: Sequence[fl.Message],
        tools: Sequence[fl.types.ToolSpec],
        *,
        max_tokens: int | None = None,
    ) -> fl.Reply:
        run = next(m.content for m in messages if m.role == "user")
        with self._lock:
            if run not in self.order:
                self.order.append(run)
            self.inside.add(run)
            self.peak = max(self.peak, len(self.inside))
            for rt in self._runtime:  # every actor of the runtime, not only those in a call
                self.peak_active = max(self.peak_active, rt.system.active_count())
        try:
            if not self._open_all:
                assert self.gate(run).wait(60), f"the test never opened {run}"
        finally:
            with self._lock:
                self.inside.discard(run)
        return fl.Reply(text=f"done {run}")


def statuses(rt: fl.Runtime) -> dict[str, str]:
    return {r.run_id: r.status.value for r in rt.runs()}


def admitted_order(rt: fl.Runtime) -> list[str]:
    """Runs in the order their run.admitted was committed (log position)."""
    return [r.run_id for r in rt.read_all() if r.type == "run.admitted"]


# -- the runtime -------------------------------------------------------------------------


def test_past_the_cap_runs_wait_queued_and_start_in_spawn_order(store_path: Path) -> None:
    model = Turnstile()
    queue = agent(model)
    with fl.Runtime.open(store_path, agents=[queue], max_active_runs=2) as rt:
        runs = [rt.spawn(queue, f"r{i}", run_id=f"r{i}") for i in range(5)]
        wait_until(lambda: model.inside == {"r0", "r1"}, 10, "r0 and r1 in their model calls")
        assert statuses(rt) == {
            "r0": "running",
            "r1": "running",
            "r2": "queued",
            "r3": "queued",
            "r4": "queued",
        }
        queued = rt.state("r2")
        assert queued.status is RunStatus.QUEUED and "max_active_runs" in queued.reason
        assert [r.type for r in rt.events("r2")] == ["run.started", "run.queued"]
        # One slot frees at a time: the next queued run, and only it, starts.
        for done, starts in (("r0", "r2"), ("r1", "r3"), ("r2", "r4")):
            model.open(done)
            wait_until(partial(operator.contains, model.inside, starts), 10, f"{starts} to start")
            assert runs[int(done[1:])].wait(10).ok
            assert len(model.inside) == 2
        model.open("r3")
        model.open("r4")
        assert all(h.wait(10).ok for h in runs)
        assert model.order == ["r0", "r1", "r2", "r3", "r4"]
        assert model.peak == 2
        assert admitted_order(rt) == ["r2", "r3", "r4"]
        for handle in runs:
            rt.verify(handle.id)  # the queued runs replay through decide() like any other


def test_the_cap_holds_under_a_burst_and_admission_keeps_spawn_order(store_path: Path) -> None:
    """Forty runs spawned from four threads at once against three slots: never more than
    three driven, every run completes, and admissions follow the order spawns queued."""
    seen: list[fl.Runtime] = []
    model = Turnstile(open_all=True, runtime=seen)
    queue = agent(model)
    with fl.Runtime.open(store_path, agents=[queue], max_active_runs=3) as rt:
        seen.append(rt)
        handles: list[fl.types.RunHandle] = []
        lock = threading.Lock()

        def spawn(worker: int) -> None:
            for i in range(10):
                handle = rt.spawn(queue, f"b{worker}-{i}", run_id=f"b{worker}-{i}")
                with lock:
                    handles.append(handle)

        threads = [threading.Thread(target=spawn, args=(w,)) for w in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        results = [h.wait(30) for h in handles]
        assert all(r.ok for r in results), [r for r in results if not r.ok]
        assert model.peak <= 3 and model.peak_active <= 3, (model.peak, model.peak_active)
        queued = [r.run_id for r in rt.read_all() if r.type == "run.queued"]
        assert queued, "a burst of 40 against 3 slots queues some"
        # Each thread spawns its runs one after another, so its queued runs keep its order.
        for w in range(4):
            mine = [run for run in admitted_order(rt) if run.startswith(f"b{w}-")]
            assert mine == sorted(mine, key=lambda run: int(run.split("-")[1]))


def test_a_cancelled_queued_run_never_starts_and_wait_goes_through_the_queue(
    store_path: Path,
) -> None:
    model = Turnstile()
    queue = agent(model)
    with fl.Runtime.open(store_path, agents=[queue], max_active_runs=1) as rt:
        first = rt.spawn(queue, "c0", run_id="c0")
        wait_until(lambda: "c0" in model.inside, 10, "c0 in its model call")
        doomed = rt.spawn(queue, "c1", run_id="c1")
        later = rt.spawn(queue, "c2", run_id="c2")
        # A wait with a deadline on a queued run returns it queued, saying why.
        early = later.wait(timeout=0.05)
        assert early.status is RunStatus.QUEUED and "max_active_runs" in early.reason
        assert not early.resumable
        with pytest.raises(fl.ConfigError, match="'c2' is queued"):
            rt.resume("c2")
        waited: list[fl.types.RunResult] = []
        waiter = threading.Thread(target=lambda: waited.append(later.wait(30)))
        waiter.start()
        doomed.cancel("not wanted")
        # A wait on it (no deadline) returns at once, while c0 still holds the only slot.
        cancelled: list[fl.types.RunResult] = []
        threading.Thread(target=lambda: cancelled.append(doomed.wait())).start()
        wait_until(lambda: cancelled, 5, "the wait on the cancelled queued run to return")
        assert cancelled[0].status is RunStatus.CANCELLED and "not wanted" in cancelled[0].reason
        assert "c0" in model.inside
        assert [r.type for r in rt.events("c1")] == ["run.started", "run.queued", "run.cancelled"]
        model.open("c0")
        wait_until(lambda: "c2" in model.inside, 10, "c2 to start")
        model.open("c2")
        waiter.join(10)
        assert waited and waited[0].ok, waited
        assert first.wait(5).ok
        assert model.order == ["c0", "c2"]  # c1 never reached the model
        assert statuses(rt)["c1"] == "cancelled"
        doomed.cancel()  # again: nothing changes
        assert [r.type for r in rt.events("c1")][-1] == "run.cancelled"
        assert len(list(rt.events("c1"))) == 3


def test_another_live_runtime_does_not_recover_queued_runs_it_does_not_hold(
    store_path: Path,
) -> None:
    model = Turnstile()
    queue = agent(model)
    with fl.Runtime.open(store_path, agents=[queue], max_active_runs=1) as rt:
        rt.spawn(queue, "h0", run_id="h0")
        waiting = rt.spawn(queue, "h1", run_id="h1")
        wait_until(lambda: "h0" in model.inside, 10, "h0 in its model call")
        with fl.Runtime.open(store_path, agents=[queue]) as other:
            assert other.recover() == []
            assert statuses(other)["h1"] == "queued"
            assert other.explain("h1").status is RunStatus.QUEUED
        model.open("h0")
        model.open("h1")
        assert waiting.wait(10).ok
        assert admitted_order(rt) == ["h1"]


def test_runs_queued_at_close_wait_for_the_next_runtime(store_path: Path) -> None:
    """Closing leaves queued runs queued (a wait on one returns, saying so); the next
    runtime's recover() admits them, in spawn order, after the run that was going."""
    model = Turnstile()
    queue = agent(model)
    rt = fl.Runtime.open(store_path, agents=[queue], max_active_runs=1)
    for run in ("k0", "k1", "k2"):
        rt.spawn(queue, run, run_id=run)
    wait_until(lambda: "k0" in model.inside, 10, "k0 in its model call")
    waited: list[fl.types.RunResult] = []
    last = rt.handle("k2")
    waiter = threading.Thread(target=lambda: waited.append(last.wait()))
    waiter.start()
    wait_until(lambda: inside(waiter, "wait_turn"), 10, "the wait to wait for k2's turn")
    rt.close()
    waiter.join(10)
    assert waited and waited[0].status is RunStatus.QUEUED, waited  # as runs() and its log say
    assert "recover()" in waited[0].reason and not waited[0].resumable
    model.open("k0")  # the closed runtime's model thread ends; its reply is dropped
    after = Turnstile(open_all=True)
    with fl.Runtime.open(store_path, agents=[agent(after)], max_active_runs=1) as again:
        handles = again.recover()
        assert [h.id for h in handles] == ["k0", "k1", "k2"]
        assert all(h.wait(10).ok for h in handles)
        assert after.order == ["k0", "k1", "k2"]
        assert admitted_order(again) == ["k1", "k2"]


def test_a_wait_the_close_wakes_says_queued_even_once_the_store_is_closed(
    store_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The close wakes a wait on a queued run and goes on to close the store: a wait that
    reads only after that (a loaded machine) still says queued, not that the runtime closed."""
    store_closed = threading.Event()
    wait_turn = Admission.wait_turn

    def slow_to_read(self: Admission, run_id: str, deadline: float | None) -> str:
        turn = wait_turn(self, run_id, deadline)
        if turn == "closed":
            store_closed.wait(10)
        return turn

    monkeypatch.setattr(Admission, "wait_turn", slow_to_read)
    model = Turnstile()
    queue = agent(model)
    rt = fl.Runtime.open(store_path, agents=[queue], max_active_runs=1)
    waited: list[fl.types.RunResult] = []
    try:
        for run in ("k0", "k1"):
            rt.spawn(queue, run, run_id=run)
        wait_until(lambda: "k0" in model.inside, 10, "k0 in its model call")
        waiter = threading.Thread(target=lambda: waited.append(rt.handle("k1").wait()))
        waiter.start()
        wait_until(lambda: inside(waiter, "wait_turn"), 10, "the wait to wait for k1's turn")
    finally:
        rt.close()
        store_closed.set()
        model.open("k0")  # the closed runtime's model thread ends; its reply is dropped
    waiter.join(10)
    assert waited and waited[0].status is RunStatus.QUEUED, waited
    assert "recover()" in waited[0].reason


def test_recover_off_the_main_thread_takes_queued_runs_sharing_commits(store_path: Path) -> None:
    """A host recovering from a thread of its own (a server's start-up task): the queued
    runs' leases are taken in a few commits, not one each."""
    model = Turnstile()
    queue = agent(model)
    rt = fl.Runtime.open(store_path, agents=[queue], max_active_runs=1)
    rt.spawn_many(queue, [f"q{i}" for i in range(200)])
    rt.close()
    model.open("q0")  # the closed runtime's model thread ends; its reply is dropped
    after = agent(Turnstile(open_all=True))
    with fl.Runtime.open(store_path, agents=[after], max_active_runs=1) as again:
        writer = again.store.writer  # type: ignore[attr-defined]
        outcome: list[tuple[int, list[fl.types.RunHandle]]] = []

        def recovering() -> None:
            commits = writer.commits
            handles = again.recover()
            outcome.append((writer.commits - commits, handles))

        thread = threading.Thread(target=recovering)
        thread.start()
        thread.join(60)
        assert not thread.is_alive() and len(outcome) == 1
        commits, handles = outcome[0]
        assert len(handles) == 200 and all(h.wait(30).ok for h in handles)
    assert commits < 40  # one commit a queued run: 199


def test_queued_runs_whose_turn_comes_together_are_admitted_sharing_commits(
    store_path: Path,
) -> None:
    """200 runs a closed runtime left queued, recovered where there is room for all: the
    admission thread starts them several at once, not each on two commits of its own."""
    model = Turnstile()
    queue = agent(model)
    rt = fl.Runtime.open(store_path, agents=[queue], max_active_runs=1)
    for i in range(201):
        rt.spawn(queue, f"q{i}", run_id=f"q{i}")
    rt.close()
    model.open("q0")  # the closed runtime's model thread ends; its reply is dropped
    gate = Turnstile()  # holds every admitted run in its model call: only admissions commit
    with fl.Runtime.open(store_path, agents=[agent(gate)]) as again:
        writer = again.store.writer  # type: ignore[attr-defined]
        commits = writer.commits
        handles = again.recover()
        wait_until(lambda: len(gate.inside) == 201, 30, "every run to be admitted")
        admitted = writer.commits - commits
        for i in range(201):
            gate.open(f"q{i}")
        assert len(handles) == 201 and all(h.wait(30).ok for h in handles)
        assert admitted_order(again) == [f"q{i}" for i in range(1, 201)]
    assert admitted < 60  # one at a time: two commits each, 400


@pytest.mark.parametrize("bad", [0, -1, True, 1.5, "2"])
def test_max_active_runs_must_be_a_whole_number_of_runs(store_path: Path, bad: object) -> None:
    with pytest.raises(fl.ConfigError, match=r"max_active_runs must be an int >= 1, or None"):
        fl.Runtime.open(store_path, max_active_runs=bad)  # type: ignore[arg-type]
    assert not store_path.exists()  # refused before the store was created
    from foldloop.store import open_store

    store = open_store(store_path)
    try:
        with pytest.raises(fl.ConfigError, match=rf"got {bad!r}"):
            fl.Runtime(store, max_active_runs=bad)  # type: ignore[arg-type]
    finally:
        store.close()


# -- the pure part -----------------------------------------------------------------------

COMMANDS = st.sampled_from(["admit", "cancel", "resume", "reply"])


@given(st.booleans(), st.lists(COMMANDS, max_size=8))
def test_queued_admitted_and_cancelled_fold_and_replay_as_decided(
    queued: bool, commands: list[str]
) -> None:
    """Any sequence of admissions, cancels, resumes and model replies on a run started
    queued (or not): the log folds to the state decide built, replays through decide, and
    keeps the queue's rules."""
    state = RunState(run_id="r")
    log: list[Recorded] = []

    def send(command: Command) -> bool:
        nonlocal state
        decision = decide(state, command)
        for event in decision.events:
            seq = state.seq + 1
            rec = Recorded(run_id="r", seq=seq, position=seq, at=command.now, event=event)
            log.append(rec)
            state = evolve(state, rec)
        assert decision.state is None or decision.state == state
        return not decision.rejected

    assert send(Start(now=1, agent="a", input="hi", queued=queued))
    for i, name in enumerate(commands, start=2):
        before = state
        if name == "admit":
            taken = send(Admit(now=i, owner="o"))
            assert taken == (before.status is RunStatus.QUEUED)
        elif name == "cancel":
            send(Cancel(now=i, reason="x"))
        elif name == "resume":
            taken = send(Resume(now=i, owner="o"))
            assert not (taken and before.status is RunStatus.QUEUED), "a queued run is admitted"
        elif state.model_pending and state.status is RunStatus.RUNNING:
            send(ModelReplied(now=i, step=state.model_pending, text="ok"))
    types = [r.type for r in log]
    assert fold(log, RunState(run_id="r")) == state
    assert replay(log) == state
    assert types.count("run.admitted") <= 1
    asked = types.index("model.requested") if "model.requested" in types else len(types)
    if queued:
        assert types[:2] == ["run.started", "run.queued"]
        # Nothing reaches the model before the run is admitted; a cancelled queued run never.
        assert "run.admitted" in types[:asked] or asked == len(types)
        if "run.cancelled" in types and "run.admitted" not in types:
            assert "model.requested" not in types
    else:
        assert "run.queued" not in types and "run.admitted" not in types
    if state.status is RunStatus.QUEUED:
        assert types[-1] == "run.queued" and state.settled is False and not state.resumable


def test_a_log_without_queue_events_folds_and_replays_as_before() -> None:
    """A start with a free slot decides exactly what it decided before admission existed."""
    decision = decide(RunState(run_id="r"), Start(now=1, agent="a", input="hi"))
    assert [e.type for e in decision.events] == ["run.started", "model.requested"]


# -- a SIGKILL with runs queued ------------------------------------------------------------


def _read_until(proc: subprocess.Popen[str], wanted: set[str], timeout: float = 60) -> None:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    missing = set(wanted)
    while missing:
        assert time.monotonic() < deadline, f"no {missing} within {timeout} s"
        line = proc.stdout.readline()
        if not line:
            err = proc.stderr.read() if proc.stderr else ""
            raise AssertionError(f"the worker exited before {missing}: {err}")
        missing.discard(line.strip())


def _cli(store: Path, *args: str) -> str:
    out = subprocess.run(
        [*CLI, "--store", str(store), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_the_cli_cancel_of_a_run_queued_in_a_live_runtime_says_it_is_held_queued(
    store_path: Path,
) -> None:
    proc = subprocess.Popen(
        [sys.executable, str(WORKER), str(store_path), "--ids", "z0,y1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        _read_until(proc, {"QUEUED"})
        out = subprocess.run(
            [*CLI, "--store", str(store_path), "cancel", "y1"],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=30)
    said = " ".join(out.stderr.split())
    assert out.returncode == 1, out.stderr
    assert "a live runtime in another process holds it queued" in said, said
    assert "drives it" not in said


def test_queued_runs_survive_a_sigkill_and_recover_admits_them_in_spawn_order(
    store_path: Path,
) -> None:
    # Spawned in this order, which is not the order of their ids (the store lists runs
    # by id): recovery must follow the log, not the listing.
    spawned = ["z0", "y1", "x2", "w3", "v4", "u5"]
    command = [sys.executable, str(WORKER), str(store_path), "--ids", ",".join(spawned)]
    proc = subprocess.Popen(
        [*command, "--cancel", "w3"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        _read_until(proc, {"QUEUED", "IN_MODEL z0"})
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=30)

    # The CLI reads the dead runtime's runs: the queued ones are listed queued.
    cells = [
        [cell.strip() for cell in line.split("\u2502")[1:-1]]
        for line in _cli(store_path, "runs", "--wide").splitlines()
    ]
    rows = {row[0]: row[2] for row in cells if row and row[0] in spawned}
    assert rows == {
        "z0": "interrupted",
        "y1": "queued",
        "x2": "queued",
        "w3": "cancelled",
        "v4": "queued",
        "u5": "queued",
    }
    shown = _cli(store_path, "show", "x2")
    assert "status=queued" in shown and "no live runtime holds it" in shown
    assert "next: the runtime that queued it is gone" in shown
    explained = _cli(store_path, "explain", "v4")
    assert "is queued" in explained and "no live runtime holds it" in explained
    assert "next: the runtime that queued it is gone" in explained  # not "wait"

    model = Turnstile(open_all=True)
    with fl.Runtime.open(store_path, agents=[agent(model)], max_active_runs=1) as rt:
        handles = rt.recover()
        assert [h.id for h in handles] == ["z0", "y1", "x2", "v4", "u5"]
        assert all(h.wait(30).ok for h in handles)
        assert model.order == ["z0", "y1", "x2", "v4", "u5"]
        assert admitted_order(rt) == ["y1", "x2", "v4", "u5"]
        # z0 was in flight: resumed at once (admitted before), its model call asked again.
        assert [r.type for r in rt.events("z0")][:3] == [
            "run.started",
            "model.requested",
            "run.resumed",
        ]
        cancelled = [r.type for r in rt.events("w3")]
        assert cancelled == ["run.started", "run.queued", "run.cancelled"]
        assert statuses(rt) == {run: "completed" for run in spawned} | {"w3": "cancelled"}
        assert rt.state("y1").agent == AGENT


# -- WorkerPool ----------------------------------------------------------------------------


def test_a_pool_passes_its_caps_to_every_worker(store_path: Path, tmp_path: Path) -> None:
    with pytest.raises(fl.ConfigError, match="max_active_runs must be an int >= 1"):
        fl.WorkerPool(store_path, agents=["pool_agents:blocker"], max_active_runs=0)
    with pytest.raises(fl.ConfigError, match="max_model_calls must be an int >= 1"):
        fl.WorkerPool(store_path, agents=["pool_agents:blocker"], max_model_calls=0)
    gates = [tmp_path / f"gate{i}" for i in range(3)]
    with fl.WorkerPool(
        store_path,
        agents=["pool_agents:blocker"],
        processes=1,
        max_active_runs=1,
        max_model_calls=2,
    ) as pool:
        (worker,) = pool.workers
        argv = Path(f"/proc/{worker.pid}/cmdline").read_text().split("\0")
        assert argv[argv.index("--max-model-calls") + 1] == "2"
        assert argv[argv.index("--max-active-runs") + 1] == "1"
        first, second, third = (pool.spawn("blocker", str(g)) for g in gates)
        wait_until(
            lambda: any(r.type == "tool.requested" for r in pool.runtime.events(first.id)),
            30,
            "the first run in its tool",
        )
        now = {r.run_id: r.status.value for r in pool.runtime.runs()}
        assert now == {first.id: "running", second.id: "queued", third.id: "queued"}
        third.cancel("no")  # goes to the worker that holds the queued run
        assert third.wait(10).status is RunStatus.CANCELLED
        gates[0].touch()
        gates[1].touch()
        assert first.wait(30).ok and second.wait(30).ok
        assert [r.type for r in pool.runtime.events(third.id)][-1] == "run.cancelled"


def test_a_worker_hands_its_caps_to_its_runtime(store_path: Path) -> None:
    """A cap the worker's Runtime refuses comes back as the worker's start failure."""
    fl.Runtime.open(store_path).close()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p or os.getcwd() for p in sys.path)}
    for flag, name in (
        ("--max-active-runs", "max_active_runs"),
        ("--max-model-calls", "max_model_calls"),
    ):
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "foldloop.runtime._pool_worker",
                "--store",
                str(store_path),
                "--agent",
                "pool_agents:calc",
                flag,
                "0",
            ],
            capture_output=True,
            timeout=60,
            env=env,
            check=False,
        )
        assert out.returncode == 1, out.stderr
        reply = decode_reply(out.stdout.splitlines()[0])
        assert isinstance(reply, Failed)
        assert f"{name} must be an int >= 1" in reply.message


def test_a_run_the_store_failed_to_admit_keeps_its_place_at_the_head() -> None:
    """An admission the store fails (a server away) is tried again a little later; the
    runs queued behind it wait for it rather than overtake it (FIFO holds)."""
    admitted: list[str] = []
    failed: list[str] = []
    all_in = threading.Event()

    def admit(run_ids: list[str]) -> list[str]:
        retry = []
        for run_id in run_ids:
            if run_id == "r1" and not failed:
                failed.append(run_id)
                retry.append(run_id)
            else:
                admitted.append(run_id)
        if len(admitted) == 5:
            all_in.set()
        return retry

    admission = Admission(1, active=lambda: 0, admit=admit)
    try:
        admission.enqueue(["r1", "r2", "r3", "r4", "r5"])
        assert admission.wait_turn("r1", time.monotonic() + 30) == "now"
        assert all_in.wait(30)
        assert failed == ["r1"]
        assert admitted == ["r1", "r2", "r3", "r4", "r5"]
    finally:
        admission.close()
