"""WorkerPool: runs driven by several worker processes on one store, to use every core.

One Runtime drives its runs on one interpreter lock, so it is bound to one core however
many runs it drives. A pool
starts ``processes`` worker processes, each a Runtime of its own on the same store
(``pool_worker``), hands each new run to the next one, and keeps a Runtime in the host
that drives nothing: waiting, reading, approving and cancelling go through the log, as
for any run driven by another process. A worker that dies loses its leases at once; the
pool starts a replacement, which recovers the runs the dead one left. The host names each
run before sending it, so a spawn in flight to a dying worker is settled from the log
(``pool_spawns``): what started stands, the rest is sent again.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from foldloop._agent import Agent
from foldloop._closing import ClosedOnExit
from foldloop._log import get_logger
from foldloop.actors._own_threads import a_call, calling, inside_a_call
from foldloop.core._state import RunStatus
from foldloop.errors import ConfigError, WorkerError
from foldloop.events import RunStarted
from foldloop.events._codec import plain_str
from foldloop.events._values import Limits
from foldloop.runtime._agent_ref import load_agent
from foldloop.runtime._calls import CallsUnderWay
from foldloop.runtime._facade import CLOSE_GRACE_S, Runtime, run_ops
from foldloop.runtime._pool_args import (
    check_log_level,
    check_processes,
    check_start_timeout,
    check_switch_interval,
)
from foldloop.runtime._pool_endings import EndingsHeard
from foldloop.runtime._pool_process import WorkerInfo, WorkerProcess
from foldloop.runtime._pool_protocol import Cancel, Resume, Spawn, SpawnMany
from foldloop.runtime._pool_spawns import ATTEMPTS, Spawns
from foldloop.runtime._results import RunHandle, RunResult
from foldloop.runtime._rules import (
    check_cap,
    check_inputs,
    check_spawn,
    input_room,
    metadata_pairs,
    new_run_id,
    plain_metadata,
    priced_limits,
)

__all__ = ["PooledRunHandle", "WorkerInfo", "WorkerPool"]

log = get_logger(__name__)

SPAWN_WINDOW = 2048
"""Runs ``spawn_many`` keeps in flight: enough that the workers start runs faster than their
first ones step (a smaller window left starts waiting behind steps), bounded so a Ctrl-C
leaves at most this many already sent behind it."""
SPAWN_CHUNK = 256
"""Inputs one request to a worker carries: its starts share the worker's commits, and the
pipe carries one round trip for them instead of one each."""

SWITCH_INTERVAL = 0.05
"""The workers' ``sys.setswitchinterval`` (CPython's default is 0.005): a worker's many run
threads each wake every interval to ask for the interpreter lock, which costs CPU a step
at the default. A worker runs no host code but its agents' tools, so the longer interval
only delays a run while another run's tool computes in pure Python."""

CLOSED = "this WorkerPool is closed"
"""What a closed pool (and its handles) say when used."""
REOPEN = "open a new one with fl.WorkerPool(...)"
"""The advice that goes with it."""

RESTART_INTERVAL = 1.0
"""Seconds at least between a worker's death and its automatic replacement: a run that
kills every worker that recovers it costs one process start a second, not a busy loop."""


class PooledRunHandle(RunHandle):
    """A run driven by one of a pool's workers; ``wait`` rides out that worker's death,
    ``cancel`` asks the worker driving the run."""

    def __init__(self, pool: WorkerPool, run_id: str) -> None:
        super().__init__(run_ops(pool.runtime), run_id)
        self._pool = pool

    def _check_open(self) -> None:
        if self._pool.closed:  # its runtime is the pool's: the pool is what to open again
            raise ConfigError(
                "this handle's WorkerPool is closed",
                advice=f"{REOPEN} and take the run up with pool.handle(run_id)",
            )
        super()._check_open()

    def wait(self, timeout: float | None = None, *, through_approvals: bool = False) -> RunResult:
        """``RunHandle.wait``; each time the run's worker died, a replacement is started (it
        recovers the run) and waited on, ``ATTEMPTS`` deaths at most (its replacement may
        die too: a death under each of them is no chance event), within ``timeout`` all
        told (a replacement still starting then goes on starting)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        result = self._wait_once(timeout, through_approvals)
        for _ in range(ATTEMPTS):
            if result.status is not RunStatus.INTERRUPTED or self._pool.closed:
                break
            self._pool.replace_dead(ready_by=deadline)
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            result = self._wait_once(left, through_approvals)
        return result

    def _wait_once(self, timeout: float | None, through_approvals: bool) -> RunResult:
        try:
            return super().wait(timeout, through_approvals=through_approvals)
        except ConfigError:
            self._check_open()  # the pool closed under the wait: say so in the pool's words
            raise

    def cancel(self, reason: str = "") -> None:
        """Cancel the run: through the worker that drives it, or here if none does."""
        if not self._pool.cancel_in_worker(self.id, reason):
            # not super().cancel: a second public call on this thread reads as a signal
            # handler's over the first, whose cancel is handed off instead of awaited
            self._ops.cancel(self.id, reason)


def chunk_size(inputs: int, workers: int) -> int:
    """Inputs a ``spawn_many`` request carries: ``SPAWN_CHUNK``, or fewer so that each worker
    gets a share (12 runs in one request would leave a worker of two idle)."""
    return max(1, min(SPAWN_CHUNK, -(-inputs // max(1, workers))))


class WorkerPool(ClosedOnExit):
    """``processes`` worker processes driving runs of ``agents`` on the store at ``path``.

    ``agents`` are import paths (``"myapp.agents:calc"``): each worker imports them, with
    the host's ``sys.path``. Use it as a context manager; ``close()`` stops the workers
    (runs still going stay resumable: a later pool, or ``rt.recover()``, continues them).
    ``switch_interval`` is the workers' ``sys.setswitchinterval`` (``SWITCH_INTERVAL``;
    None keeps Python's default). ``max_model_calls`` and ``max_active_runs`` are each
    worker's ``Runtime.open`` caps (per process: the pool's whole is that times ``processes``).
    """

    def __init__(
        self,
        path: str | Path,
        *,
        agents: Iterable[str],
        processes: int | None = None,
        log_level: str = "warning",
        start_timeout: float = 60.0,
        switch_interval: float | None = SWITCH_INTERVAL,
        max_model_calls: int | None = None,
        max_active_runs: int | None = None,
    ) -> None:
        specs = [agents] if isinstance(agents, str) else list(agents)
        if not specs or not all(isinstance(s, str) for s in specs):
            raise ConfigError(
                "WorkerPool(agents=...) takes import paths of agents, e.g. "
                f"['myapp.agents:calc']; got {agents!r:.80}"
            )
        processes = check_processes(processes)
        log_level = check_log_level(log_level)
        check_start_timeout(start_timeout)
        check_switch_interval(switch_interval)
        check_cap("max_model_calls", max_model_calls)
        check_cap("max_active_runs", max_active_runs)
        self._agents = {a.name: a for a in map(load_agent, specs)}  # for the checks a spawn makes
        self._start_timeout = start_timeout
        self.runtime = Runtime.open(path)  # drives nothing: it knows no agents
        self._command = [sys.executable, "-m", "foldloop.runtime._pool_worker"]
        self._command += ["--store", self.runtime.store.location, "--log-level", log_level]
        for spec in specs:
            self._command += ["--agent", spec]
        if switch_interval is not None:
            self._command += ["--switch-interval", repr(float(switch_interval))]
        for flag, cap in (
            ("--max-model-calls", max_model_calls),
            ("--max-active-runs", max_active_runs),
        ):
            if cap is not None:
                self._command += [flag, str(cap)]
        search = [os.getcwd() if p == "" else p for p in sys.path]
        self._env = {**os.environ, "PYTHONPATH": os.pathsep.join(search)}
        self._lock = threading.Lock()
        self._closed = False
        self._released = threading.Event()
        """The first ``close`` is done."""
        self._spawns = CallsUnderWay()  # a close lets them read the log first
        self._next = itertools.count()
        self._endings = EndingsHeard()
        self._workers: list[WorkerProcess] = []
        try:
            started = [self._start_worker() for _ in range(processes)]
            self._workers = started
            for worker in started:
                self._await_ready(worker)
        except BaseException:
            self.close()
            raise

    def _start_worker(self) -> WorkerProcess:
        return WorkerProcess(self._command, self._env, self._worker_exited, self._endings.heard)

    def _worker_exited(self) -> None:
        """A started worker's process ended: replace it soon, from a thread of its own."""
        if not self._closed:
            threading.Thread(
                target=self._restart_soon, name="foldloop-pool-restart", daemon=True
            ).start()

    def _restart_soon(self) -> None:
        time.sleep(RESTART_INTERVAL)
        try:
            for info in self.replace_dead():
                log.warning("pool_worker_replaced", pid=info.pid, recovered=len(info.recovered))
        except WorkerError as exc:
            log.warning("pool_worker_not_replaced", error=str(exc))

    def _await_ready(self, worker: WorkerProcess, ready_by: float | None = None) -> None:
        """Wait for ``worker`` to say Ready: up to the start timeout (then WorkerError), or
        until ``ready_by`` (a ``time.monotonic()``) if sooner (then it goes on starting)."""
        left = None if ready_by is None else max(0.0, ready_by - time.monotonic())
        cut_short = left is not None and left < self._start_timeout
        try:
            worker.ready.result(left if cut_short else self._start_timeout)
        except TimeoutError:
            if cut_short:  # the caller's deadline came first: the worker goes on starting
                return
            raise WorkerError(
                f"worker process {worker.proc.pid} did not start within "
                f"{self._start_timeout:g} s (WorkerPool(start_timeout=...))"
            ) from None

    @property
    def closed(self) -> bool:
        """True once ``close()`` was called."""
        return self._closed

    @property
    @a_call
    def workers(self) -> list[WorkerInfo]:
        """The worker processes, in the order runs are handed out."""
        with self._lock:
            return [w.info() for w in self._workers]

    @a_call
    def replace_dead(self, ready_by: float | None = None) -> list[WorkerInfo]:
        """Start a replacement for each worker that died; each recovers the runs left
        without a live runtime before it says Ready. Returns the replacements once they,
        and any replacement started before and still starting, are ready (or, given
        ``ready_by``, a ``time.monotonic()``, at the latest then). The pool's lock is held
        only to start them: a wait with a deadline of its own is not held up by another
        thread's wait for a slow start."""
        with self._lock:
            if self._closed:
                return []
            fresh: list[WorkerProcess] = []
            for i, worker in enumerate(self._workers):
                if not self._dead(worker):
                    continue
                worker.stop(1.0)
                self._workers[i] = replacement = self._start_worker()
                fresh.append(replacement)
            starting = [w for w in self._workers if not w.ready.done()]
        try:
            for worker in starting:
                self._await_ready(worker, ready_by)
        except WorkerError:
            if self._closed:  # the close stopped it as it started
                return []
            raise
        return [w.info() for w in fresh]

    def _dead(self, worker: WorkerProcess) -> bool:
        """Its process ended, or its owner lock is free (the process is dying: a SIGKILLed
        worker drops the lock at once, before anything here can reap it)."""
        if not worker.alive:
            return True
        owner = worker.owner
        return bool(owner) and not self.runtime.store.owner_alive(owner)

    @a_call
    def spawn(
        self,
        agent: Agent | str,
        input: str,
        *,
        run_id: str | None = None,
        metadata: Mapping[str, str] | None = None,
        parent_run_id: str | None = None,
    ) -> PooledRunHandle:
        """Start a run on the next worker; returns once its run.started is durable. A
        worker that dies first is ridden out: the log says whether the run started, and if
        not it is sent again, under the same run id, to a live worker."""
        self._check_open()
        name = self._agent_name(agent)
        check_spawn(input, run_id, metadata, parent_run_id)
        meta = plain_metadata(metadata)
        named = run_id if run_id is not None else new_run_id(name)
        text = plain_str(input)

        def send(indices: list[int]) -> Future[Any]:
            request = Spawn(0, name, text, named, meta, parent_run_id)
            return self._pick().request(request)

        # a run id the caller chose may have a run already, or get another caller's: only one
        # started past here with what was sent is ours

        def ours(started: RunStarted) -> bool:
            return (
                started.agent == name
                and started.input == text
                and started.parent_run_id == parent_run_id
                and dict(started.metadata) == (meta or {})
            )

        with self._spawn_call(), self._endings.expecting([named]):
            mark = self.runtime.store.last_position() if run_id is not None else 0
            spawns = Spawns(self.runtime.store, [named], send, call="spawn", mark=mark, ours=ours)
            return spawns.run([[0]], 1, self._handle)[0]

    @a_call
    def spawn_many(
        self,
        agent: Agent | str,
        inputs: Iterable[str],
        *,
        metadata: Mapping[str, str] | None = None,
    ) -> list[PooledRunHandle]:
        """Start a run on each input, spread over the workers, ``SPAWN_CHUNK`` a request and
        up to ``SPAWN_WINDOW`` in flight at once (a worker's starts share commits); returns
        their handles in input order, one an input, once every run.started is durable. Every
        input is checked before any is sent; a Ctrl-C stops the sending (the requests in
        flight still start their runs). A worker that dies is ridden out as in ``spawn``;
        if workers die under the same inputs ``ATTEMPTS`` times, the WorkerError holds the
        handles of the runs that started (``.started``) and the inputs that have none
        (``.missing``); a worker that refuses a request (its runtime closing, the store
        failing) after some runs started raises a SpawnError holding the same."""
        self._check_open()
        check_inputs(inputs)
        texts = list(inputs)
        name = self._agent_name(agent)
        check_spawn("", None, metadata, None)  # the metadata, once for all inputs
        meta = plain_metadata(metadata)
        room = None
        if len(texts) > 1:  # what each run.started leaves its input, as a worker works it out
            now = time.time_ns()
            room = input_room(
                self._agents[name],
                now=now,
                limits=priced_limits(self._agents[name], now),
                metadata=metadata_pairs(meta),
                parent_run_id=None,
                max_event_bytes=self.runtime.store.max_event_bytes,
            )
        for index, text in enumerate(texts):
            try:
                check_spawn(text, None, None, None, room=room)
            except ConfigError as exc:
                raise ConfigError(f"inputs[{index}]: {exc.fact}", advice=exc.advice) from None
        texts = [plain_str(text) for text in texts]
        run_ids = [new_run_id(name) for _ in texts]

        def send(indices: list[int]) -> Future[Any]:
            request = SpawnMany(
                0, name, [texts[i] for i in indices], meta, [run_ids[i] for i in indices]
            )
            return self._pick().request(request)

        spawns = Spawns(self.runtime.store, run_ids, send, call="spawn_many")
        size = chunk_size(len(texts), len(self._workers))
        chunks = (list(range(at, min(at + size, len(texts)))) for at in range(0, len(texts), size))
        with self._spawn_call(), self._endings.expecting(run_ids):
            return spawns.run(chunks, max(1, SPAWN_WINDOW // size), self._handle)

    @contextlib.contextmanager
    def _spawn_call(self) -> Iterator[None]:
        """A spawn call under way: ``close`` keeps the host's runtime open until it ends (one
        that the close cut short reads the log to say which of its runs started)."""
        with self._spawns.call():
            self._check_open()  # once counted: a close from here on waits for the call
            yield

    def _handle(self, run_id: str) -> PooledRunHandle:
        """A handle to give out: told of its run's end by the worker that drives it."""
        handle = PooledRunHandle(self, run_id)
        self._endings.given_out(handle)
        return handle

    def _check_open(self) -> None:
        if self._closed:
            raise ConfigError(CLOSED, advice=REOPEN)

    def _agent_name(self, agent: Agent | str) -> str:
        """The name the workers know ``agent`` by (refused if they do not know it)."""
        name = agent.name if isinstance(agent, Agent) else agent
        if name not in self._agents:
            raise ConfigError(
                f"this pool's workers do not know agent {name!r}; they know "
                f"{sorted(self._agents)} (WorkerPool(agents=[...]) names them as module:attr)"
            )
        return name

    def _pick(self) -> WorkerProcess:
        worker = self._next_worker()
        if not worker.alive:  # the process check alone: a spawn costs no lock-file probe
            self.replace_dead()
            worker = self._next_worker()
        return worker

    def _next_worker(self) -> WorkerProcess:
        with self._lock:
            self._check_open()  # under the lock: a close empties the list
            return self._workers[next(self._next) % len(self._workers)]

    @a_call
    def resume(self, run_id: str, *, extend: Limits | None = None) -> PooledRunHandle:
        """Continue a resumable run on the next worker (``Runtime.resume``'s rules: RunLocked
        if a live runtime drives it, ConfigError if it cannot be resumed)."""
        if extend is not None and not isinstance(extend, Limits):
            raise ConfigError("extend must be fl.Limits(...)")
        self._check_open()
        self.runtime.handle(run_id)  # raises RunNotFound
        worker = self._pick()
        with self._endings.expecting([run_id]):
            return self._handle(worker.request(Resume(0, run_id, extend)).result())

    @a_call
    def cancel_in_worker(self, run_id: str, reason: str) -> bool:
        """Ask the worker holding the run's lease to cancel it; False if none of this
        pool's workers holds it (the run is parked or finished: cancel it from the host)."""
        lease = self.runtime.store.lease(run_id)
        if lease is None or not lease.owner:
            return False
        with self._lock:
            driver = next((w for w in self._workers if w.owner == lease.owner), None)
        if driver is None:
            return False
        driver.request(Cancel(0, run_id, reason)).result()
        return True

    @a_call
    def handle(self, run_id: str) -> PooledRunHandle:
        """A handle to an existing run of the store."""
        self._check_open()
        self.runtime.handle(run_id)  # raises RunNotFound
        return self._handle(run_id)

    def close(self, timeout: float = 30.0) -> None:
        """Stop the workers (runs still going stay resumable) and the host's runtime. From
        a signal handler that interrupted a call into the pool (which may hold the pool's
        lock until the handler returns), the close goes on on a thread of its own."""
        if inside_a_call(self._call_key):
            threading.Thread(target=self._close, args=(timeout,), name="foldloop-close").start()
            return
        self._close(timeout)

    def _close(self, timeout: float) -> None:
        with calling(self._call_key), self._lock:  # a handler's close landing here: see close()
            first = not self._closed
            if first:
                self._closed = True
                workers, self._workers = self._workers, []
        if not first:  # another close is under way (a handler's, say): return once it is done
            self._released.wait(timeout + CLOSE_GRACE_S)
            return
        try:
            deadline = time.monotonic() + timeout
            for worker in workers:
                worker.hang_up()  # all at once: they wind down in parallel
            for worker in workers:
                worker.stop(max(0.0, deadline - time.monotonic()))
            self._spawns.wait_others(deadline - time.monotonic())
            self.runtime.close()
        finally:
            self._released.set()

    @property
    def _call_key(self) -> object:
        """What names this pool in a call (``own_threads.calling``): its runtime's store, as
        its handles name it."""
        return self.runtime.store
