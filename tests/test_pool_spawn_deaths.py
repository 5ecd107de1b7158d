"""WorkerPool spawns in flight to a worker that dies: nothing lost, nothing duplicated.

Real worker processes and a real SIGKILL. Where the test needs a request to be in flight
for sure, it stops the worker (SIGSTOP) first: the request then waits in its pipe, unanswered,
until the kill.
"""

from __future__ import annotations

import collections
import functools
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

import foldloop as fl
from foldloop.events._catalogue import RunStarted
from foldloop.runtime import _pool as pool_module
from foldloop.runtime import _pool_spawns as spawns_module
from tests.log_capture import capture_logs
from tests.waiting import logged, wait_until

LOST = "pool_spawns_lost_their_worker"

_DIES_UNPUBLISHED = textwrap.dedent(
    """
    import os, signal, struct, sys, time
    from foldloop.core._decide import decide
    from foldloop.core._state import RunState
    from foldloop.store import encode_all, open_store
    from pool_agents import calc

    path, run_id, text = sys.argv[1:4]
    store = open_store(path, create=False)
    command = calc.start(text, now=time.time_ns())
    events = decide(RunState(run_id=run_id), command).events
    store.start_run(run_id, encode_all(events, command.now), owner="killed-writer").wait()
    env = store.mapped.env
    held = env.begin(write=True)  # this process dies owning LMDB's write lock
    reader = env.begin()
    published = reader.id()
    reader.abort()
    assert env.info()["last_txnid"] == published, "the start was not the last commit"
    # LMDB's lock file keeps the published transaction id at offset 48 (Linux, 64-bit):
    # one back is the state of a writer killed after its meta page, before publishing it
    with open(os.path.join(path, "lock.mdb"), "r+b") as lock:
        assert struct.unpack("<Q", os.pread(lock.fileno(), 8, 48))[0] == published
        os.pwrite(lock.fileno(), struct.pack("<Q", published - 1), 48)
    assert store.head(run_id) == 0, "readers still see the start"
    print("unpublished", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
    """
)


def _inputs(pool: fl.WorkerPool) -> dict[str, str]:
    """Every run of the log (its run.started, read from the whole log) and its input."""
    records = pool.runtime.store.read_all()
    return {r.run_id: r.event.input for r in records if isinstance(r.event, RunStarted)}


def _started_inputs(pool: fl.WorkerPool) -> collections.Counter[str]:
    """How many runs the whole log holds for each input."""
    return collections.Counter(_inputs(pool).values())


def _start_and_die_unpublished(store_path: Path, run_id: str, text: str) -> None:
    """Start a run in another process that is then killed as a worker can be inside a
    commit: the commit stored (LMDB's meta page written), its transaction id not yet
    published, LMDB's write lock still its own; reads miss the run until someone writes."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run(
        [sys.executable, "-c", _DIES_UNPUBLISHED, str(store_path), run_id, text],
        capture_output=True,
        env=env,
        timeout=60,
    )
    assert proc.stdout == b"unpublished\n", proc.stderr.decode()
    assert proc.returncode == -signal.SIGKILL


def _in_flight(pool: fl.WorkerPool, index: int) -> int:
    """Requests sent to worker ``index`` and not answered yet (the pool's own count)."""
    return len(pool._workers[index]._pending)


class _Call:
    """``fn()`` on a thread of its own: what it returned or raised."""

    def __init__(self, fn: Callable[[], object]) -> None:
        self.result: object = None
        self.error: BaseException | None = None
        self._fn = fn
        self._thread = threading.Thread(target=self._run)
        self._thread.start()

    def _run(self) -> None:
        try:
            self.result = self._fn()
        except BaseException as exc:
            self.error = exc

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the call did not return"


def test_a_worker_killed_under_spawn_many_costs_no_input_and_doubles_none(
    store_path: Path,
) -> None:
    inputs = [f"sum {i}" for i in range(4000)]
    with (
        capture_logs(logging.WARNING) as logs,
        fl.WorkerPool(store_path, agents=["pool_agents:calc"], processes=2) as pool,
    ):
        victim = pool.workers[0]
        call = _Call(lambda: pool.spawn_many("calc", inputs))
        # its first chunk's runs are started, the rest of its share is still to come
        wait_until(lambda: pool.workers[0].spawned >= pool_module.SPAWN_CHUNK, 60, "a chunk")
        assert call.running
        os.kill(victim.pid, signal.SIGKILL)
        call.join(120)
        assert call.error is None, call.error
        handles = call.result
        assert isinstance(handles, list)
        assert logged(logs, LOST, call="spawn_many")  # the kill did land mid-call
        assert len(handles) == len(inputs)
        assert len({h.id for h in handles}) == len(inputs)
        assert _started_inputs(pool) == collections.Counter(inputs)  # each once, none twice
        assert len(pool.runtime.store.run_ids()) == len(inputs)
        runs = _inputs(pool)
        assert [runs[h.id] for h in handles] == inputs  # in input order
        results = [h.wait(timeout=120) for h in handles]
        assert {r.status for r in results} == {fl.RunStatus.COMPLETED}
        assert victim.pid not in {w.pid for w in pool.workers}


def test_a_pool_closed_under_spawn_many_says_which_inputs_started(store_path: Path) -> None:
    """Closed from another thread once a first chunk started: a SpawnError whose .started
    are exactly the runs in the log and whose .missing are the other inputs."""
    inputs = [f"sum {i}" for i in range(10_000)]
    pool = fl.WorkerPool(store_path, agents=["pool_agents:calc"], processes=2)
    call = _Call(lambda: pool.spawn_many("calc", inputs))
    wait_until(lambda: pool.workers[0].spawned >= pool_module.SPAWN_CHUNK, 60, "a chunk")
    pool.close()
    call.join(60)
    error = call.error
    assert isinstance(error, fl.errors.SpawnError), error  # not ConfigError, and not all
    started = {h.id for h in error.started}
    with fl.Runtime.open(store_path) as rt:
        logged_runs = {
            r.run_id: r.event.input for r in rt.read_all() if isinstance(r.event, RunStarted)
        }
    assert started == set(logged_runs) and 0 < len(started) < len(inputs)
    missing = set(error.missing)
    assert sorted(logged_runs.values()) == sorted(
        text for i, text in enumerate(inputs) if i not in missing
    )


def test_a_spawn_whose_worker_dies_before_answering_is_sent_again(store_path: Path) -> None:
    with (
        capture_logs(logging.WARNING) as logs,
        fl.WorkerPool(store_path, agents=["pool_agents:calc"], processes=1) as pool,
    ):
        victim = pool.workers[0]
        os.kill(victim.pid, signal.SIGSTOP)  # it reads nothing more: the spawn stays in flight
        call = _Call(lambda: pool.spawn("calc", "sum once"))
        wait_until(lambda: _in_flight(pool, 0) == 1, 30, "the spawn to be sent")
        os.kill(victim.pid, signal.SIGKILL)
        call.join(60)
        assert call.error is None, call.error
        handle = call.result
        assert isinstance(handle, fl.types.RunHandle)
        assert logged(logs, LOST, call="spawn", started=0, resent=1, attempt=1)
        assert handle.wait(timeout=60).status is fl.RunStatus.COMPLETED
        assert _started_inputs(pool) == {"sum once": 1}
        assert pool.workers[0].pid != victim.pid


def test_spawns_racing_a_killed_worker_all_return_a_run_each(store_path: Path) -> None:
    """Spawns from ten threads, under run ids of their own, while a worker is SIGKILLed:
    every one returns its handle (none raises), and each run id has one run."""
    handles: list[fl.types.RunHandle] = []
    lock = threading.Lock()
    enough = threading.Event()
    with fl.WorkerPool(store_path, agents=["pool_agents:calc"], processes=2) as pool:

        def spawn(k: int) -> None:
            for i in range(10):
                handle = pool.spawn("calc", f"add {k}-{i}", run_id=f"r{k}-{i}")
                with lock:
                    handles.append(handle)
                    if len(handles) == 20:
                        enough.set()

        calls = [_Call(functools.partial(spawn, k)) for k in range(10)]
        assert enough.wait(30)
        os.kill(pool.workers[0].pid, signal.SIGKILL)
        for call in calls:
            call.join(60)
            assert call.error is None, call.error
        assert sorted(h.id for h in handles) == sorted(
            f"r{k}-{i}" for k in range(10) for i in range(10)
        )
        assert all(h.wait(timeout=60).ok for h in handles)
        assert _started_inputs(pool) == collections.Counter(
            f"add {k}-{i}" for k in range(10) for i in range(10)
        )


def test_workers_dying_past_the_attempts_name_what_started_and_what_did_not(
    store_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(spawns_module, "ATTEMPTS", 1)  # the first death is the last straw
    monkeypatch.setattr(pool_module, "SPAWN_WINDOW", 40)  # 4 requests of 10 in flight
    monkeypatch.setattr(pool_module, "SPAWN_CHUNK", 10)
    inputs = [f"sum {i}" for i in range(200)]
    with fl.WorkerPool(store_path, agents=["pool_agents:calc"], processes=2) as pool:
        victim = pool.workers[0]
        os.kill(victim.pid, signal.SIGSTOP)
        call = _Call(lambda: pool.spawn_many("calc", inputs))
        wait_until(
            lambda: _in_flight(pool, 0) == 2 and pool.workers[1].spawned == 20,
            30,
            "two requests stuck in the stopped worker, two answered by the other",
        )
        os.kill(victim.pid, signal.SIGKILL)
        call.join(60)
        error = call.error
        assert isinstance(error, fl.errors.WorkerError), error
        assert "20 of 200 runs started" in str(error)
        assert "spawning only those again is safe" in str(error)
        started = list(error.started)
        runs = _inputs(pool)
        answered = [i for i in range(40) if i // 10 % 2 == 1]  # the other worker's requests
        assert [runs[h.id] for h in started] == [inputs[i] for i in answered]
        assert error.missing == tuple(i for i in range(200) if i not in answered)
        assert len(runs) == 20  # nothing of the missing ran
        rest = pool.spawn_many("calc", [inputs[i] for i in error.missing])
        assert _started_inputs(pool) == collections.Counter(inputs)
        assert all(h.wait(timeout=60).ok for h in [*started, *rest])


def test_a_spawn_past_its_attempts_says_it_did_not_start(
    store_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(spawns_module, "ATTEMPTS", 1)
    with fl.WorkerPool(store_path, agents=["pool_agents:calc"], processes=1) as pool:
        victim = pool.workers[0]
        os.kill(victim.pid, signal.SIGSTOP)
        call = _Call(lambda: pool.spawn("calc", "sum once", run_id="only-once"))
        wait_until(lambda: _in_flight(pool, 0) == 1, 30, "the spawn to be sent")
        os.kill(victim.pid, signal.SIGKILL)
        call.join(60)
        error = call.error
        assert isinstance(error, fl.errors.WorkerError), error
        assert str(error) == (
            "worker processes died under this spawn once: its run (only-once) did not "
            "start; spawning it again is safe"
        )
        assert (error.started, error.missing) == ((), (0,))
        assert pool.runtime.store.head("only-once") == 0
        assert pool.spawn("calc", "sum once", run_id="only-once").wait(timeout=60).ok


def test_a_taken_run_id_is_refused_even_when_the_worker_dies_under_the_spawn(
    store_path: Path,
) -> None:
    """The log has a run under the id already: it is not the spawn's, so the host sends the
    spawn again, and the live worker refuses it as it would have without the death."""
    with fl.WorkerPool(store_path, agents=["pool_agents:calc"], processes=1) as pool:
        assert pool.spawn("calc", "first", run_id="same").wait(timeout=30).ok
        victim = pool.workers[0]
        os.kill(victim.pid, signal.SIGSTOP)
        call = _Call(lambda: pool.spawn("calc", "second", run_id="same"))
        wait_until(lambda: _in_flight(pool, 0) == 1, 30, "the spawn to be sent")
        os.kill(victim.pid, signal.SIGKILL)
        call.join(60)
        assert isinstance(call.error, fl.ConfigError), call.error
        assert "run 'same' already exists" in str(call.error)
        assert _started_inputs(pool) == {"first": 1}


def test_a_run_id_another_spawn_takes_while_the_worker_dies_is_not_returned_as_ours(
    store_path: Path,
) -> None:
    """Two spawns under one caller-given run id: the first is in flight to a worker that
    dies, the second starts the run on the other worker meanwhile. The run in the log is not
    the first spawn's (another input): it is refused, not handed back as its own."""
    with fl.WorkerPool(store_path, agents=["pool_agents:calc"], processes=2) as pool:
        victim = pool.workers[0]
        os.kill(victim.pid, signal.SIGSTOP)
        first = _Call(lambda: pool.spawn("calc", "mine", run_id="x"))
        wait_until(lambda: _in_flight(pool, 0) == 1, 30, "the first spawn to be sent")
        second = pool.spawn("calc", "theirs", run_id="x")  # the next worker
        assert second.wait(timeout=30).ok
        os.kill(victim.pid, signal.SIGKILL)
        first.join(60)
        assert isinstance(first.error, fl.ConfigError), (first.result, first.error)
        assert "run 'x' already exists" in str(first.error)
        assert _started_inputs(pool) == {"theirs": 1}


@pytest.mark.skipif(sys.platform != "linux", reason="writes LMDB's lock file as laid out on Linux")
def test_a_run_its_dead_worker_stored_but_did_not_publish_is_not_sent_again(
    store_path: Path,
) -> None:
    """The worker's last commit holds the run's start, but it died before LMDB published it:
    the host's read after the death must see the run (started: the handle stands), not send
    it again to be refused as a run that already exists."""
    with fl.WorkerPool(store_path, agents=["pool_agents:calc"], processes=1) as pool:
        victim = pool.workers[0]
        os.kill(victim.pid, signal.SIGSTOP)
        call = _Call(lambda: pool.spawn("calc", "sum late", run_id="late"))
        wait_until(lambda: _in_flight(pool, 0) == 1, 30, "the spawn to be sent")
        # as if the victim had started it and been killed inside that commit
        _start_and_die_unpublished(store_path, "late", "sum late")
        assert pool.runtime.store.head("late") == 0  # the host's reads miss it, as the pool's did
        os.kill(victim.pid, signal.SIGKILL)
        call.join(60)
        assert call.error is None, call.error
        handle = call.result
        assert isinstance(handle, fl.types.RunHandle)
        assert handle.id == "late"
        assert handle.wait(timeout=60).status is fl.RunStatus.COMPLETED  # the replacement's
        assert _started_inputs(pool) == {"sum late": 1}


def _spawn_eight(
    rt: fl.Runtime, window: int, answers: dict[int, BaseException], *, first_starts: bool = False
) -> tuple[fl.errors.SpawnError, list[list[int]]]:
    """Spawns of eight inputs, two a request, through a stand-in for the workers that starts
    the runs of each request but answers those in ``answers`` (by their first index) with
    that error (after starting its first run, with ``first_starts``): the SpawnError raised
    and the requests sent."""
    from concurrent.futures import Future

    from pool_agents import calc

    from foldloop.runtime._facade import spawn_named

    run_ids = [f"run-{i}" for i in range(8)]
    sent: list[list[int]] = []

    def send(indices: list[int]) -> Future[list[str]]:
        sent.append(indices)
        answer: Future[list[str]] = Future()
        failure = answers.get(indices[0])
        if failure is None:
            ids = [run_ids[i] for i in indices]
            answer.set_result(spawn_named(rt, calc, [f"sum {i}" for i in indices], ids, None))
            return answer
        if first_starts:
            spawn_named(rt, calc, [f"sum {indices[0]}"], [run_ids[indices[0]]], None)
        answer.set_exception(failure)
        return answer

    spawns = spawns_module.Spawns(rt.store, run_ids, send, call="spawn_many")
    with pytest.raises(fl.errors.SpawnError) as caught:
        spawns.run(([i, i + 1] for i in range(0, 8, 2)), window, lambda run_id: run_id)
    return caught.value, sent


@pytest.mark.parametrize("window", [1, 4])
def test_a_request_a_worker_refuses_names_what_the_whole_call_started(
    store_path: Path, window: int
) -> None:
    """A worker refuses the second of four requests after one of its two runs started (its
    runtime closing under it): no more is sent; the requests in flight are settled; the log
    says what started of the whole call."""
    from pool_agents import calc

    with fl.Runtime.open(store_path, agents=[calc]) as rt:
        closed = fl.ConfigError("this runtime is closed")
        error, sent = _spawn_eight(rt, window, {2: closed}, first_starts=True)
        in_log = {s.run_id for s in rt.runs()}
    assert str(error.__cause__) == "this runtime is closed"
    assert set(error.started) == in_log and len(error.started) + len(error.missing) == 8
    if window == 1:  # nothing sent after the refusal
        assert sent == [[0, 1], [2, 3]] and error.missing == (3, 4, 5, 6, 7)
    else:  # all four were in flight: the other three started their runs
        assert len(sent) == 4 and error.missing == (3,)
    assert error.started == tuple(f"run-{i}" for i in range(8) if i not in error.missing)


def test_after_a_refusal_a_request_whose_worker_dies_is_not_sent_again(store_path: Path) -> None:
    from pool_agents import calc

    with fl.Runtime.open(store_path, agents=[calc]) as rt:
        died = fl.errors.WorkerError("worker process 1 exited")  # before starting anything
        answers = {2: fl.ConfigError("this runtime is closed"), 4: died}
        error, sent = _spawn_eight(rt, 4, answers)
    assert len(sent) == 4  # the dead worker's inputs were not sent again
    assert error.missing == (2, 3, 4, 5)
    assert error.started == ("run-0", "run-1", "run-6", "run-7")


def test_a_request_to_a_worker_the_close_hung_up_on_is_a_worker_error(store_path: Path) -> None:
    """The pool's close closes a worker's stdin while another thread may be sending it a
    request: that request fails as a WorkerError (spawn_many then says what started), not
    with the file's own ValueError."""
    from foldloop.runtime._pool_protocol import Cancel as CancelRequest

    with fl.WorkerPool(store_path, agents=["pool_agents:calc"], processes=1) as pool:
        (worker,) = pool._workers  # the process the close hangs up on
        worker.hang_up()
        with pytest.raises(fl.errors.WorkerError):
            worker.request(CancelRequest(id=0, run_id="any"))
