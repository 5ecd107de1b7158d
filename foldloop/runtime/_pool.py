"""WorkerPool: runs driven by several worker processes on one store, to use every core.

One Runtime drives its runs on one interpreter lock, so it is bound to one core however
many runs it drives. A pool
starts ``processes`` worker processes, each a Runtime of its own on the same store
(``pool_worker``), hands each new run to the next one, and keeps a Runtime in the host
that drives nothing: waiting, reading, approving and cancelling go through the log, as
for any run driven by another process. A worker that dies loses its leases at once; the
pool starts a replacement, which recovers the runs the dead one left.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from foldloop import errors
from foldloop._agent import Agent
from foldloop._closing import ClosedOnExit
from foldloop._log import get_logger
from foldloop.core._state import RunStatus
from foldloop.errors import ConfigError, FoldloopError, WorkerError
from foldloop.events._values import Limits
from foldloop.runtime._agent_ref import load_agent
from foldloop.runtime._facade import Runtime, run_ops
from foldloop.runtime._pool_protocol import (
    Cancel,
    Cancelled,
    Failed,
    Ready,
    Request,
    Resume,
    Spawn,
    Spawned,
    SpawnedMany,
    SpawnMany,
    decode_reply,
    encode,
)
from foldloop.runtime._results import RunHandle, RunResult
from foldloop.runtime._rules import check_cap, check_inputs, check_spawn

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

RESTART_INTERVAL = 1.0
"""Seconds at least between a worker's death and its automatic replacement: a run that
kills every worker that recovers it costs one process start a second, not a busy loop."""


@dataclass(frozen=True)
class WorkerInfo:
    """One worker process as the pool sees it."""

    pid: int
    owner: str
    spawned: int
    """Runs it started or resumed (requests it refused are not counted)."""
    recovered: tuple[str, ...]
    alive: bool


def _error(name: str, message: str) -> FoldloopError:
    """The worker's error, re-raised here as the same FoldloopError class."""
    cls = getattr(errors, name, None)
    if isinstance(cls, type) and issubclass(cls, FoldloopError):
        try:
            return cls(message)
        except TypeError:  # a class whose constructor wants more than a message
            pass
    return FoldloopError(message)


class _Worker:
    """One worker process, the requests in flight to it and the thread reading its answers."""

    def __init__(
        self, command: list[str], env: Mapping[str, str], on_exit: Callable[[], None]
    ) -> None:
        self._on_exit = on_exit
        self.proc = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=dict(env)
        )
        self.ready: Future[Ready] = Future()
        self.spawned = 0
        self._pending: dict[int, Future[Any]] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._reader = threading.Thread(
            target=self._read, name=f"foldloop-pool-{self.proc.pid}", daemon=True
        )
        self._reader.start()

    @property
    def alive(self) -> bool:
        return self._reader.is_alive() and self.proc.poll() is None

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                reply = decode_reply(line)
            except msgspec.DecodeError:
                continue  # not ours: the worker's stdout carries only protocol lines
            if isinstance(reply, Ready):
                self.ready.set_result(reply)
            elif isinstance(reply, Failed):
                self.ready.set_exception(
                    WorkerError(f"a worker process could not start: {reply.message}")
                )
            else:
                with self._lock:
                    future = self._pending.pop(reply.id, None)
                if future is None:
                    continue
                if isinstance(reply, Spawned):
                    self.spawned += 1  # only this thread writes it
                    future.set_result(reply.run_id)
                elif isinstance(reply, SpawnedMany):
                    self.spawned += len(reply.run_ids)
                    future.set_result(reply.run_ids)
                elif isinstance(reply, Cancelled):
                    future.set_result("")
                else:
                    future.set_exception(_error(reply.error, reply.message))
        code = self.proc.wait()
        gone = WorkerError(
            f"worker process {self.proc.pid} exited (code {code}) before answering; if it "
            "had written run.started, the run is in the log and the pool's replacement "
            "worker recovers it"
        )
        if not self.ready.done():
            self.ready.set_exception(gone)
        with self._lock:
            pending, self._pending = self._pending, {}
        for future in pending.values():
            future.set_exception(gone)
        if self.ready.exception() is None:
            self._on_exit()  # it had started: replace it (one that could not start is not)

    def request(self, message: Request) -> Future[Any]:
        """Send ``message`` (its id is assigned here); the future gets the run id of a
        spawn or resume, the run ids of a spawn_many, "" for a cancel, or the error the
        worker raised."""
        future: Future[Any] = Future()
        with self._lock:
            request = msgspec.structs.replace(message, id=next(self._ids))
            self._pending[request.id] = future
            assert self.proc.stdin is not None
            try:
                self.proc.stdin.write(encode(request))
                self.proc.stdin.flush()
            except OSError:
                self._pending.pop(request.id, None)
                raise WorkerError(
                    f"worker process {self.proc.pid} is gone; the pool starts another"
                ) from None
        return future

    @property
    def _started(self) -> Ready | None:
        return self.ready.result() if self.ready.done() and not self.ready.exception() else None

    @property
    def owner(self) -> str:
        """Its runtime's owner id ("" until it is ready)."""
        ready = self._started
        return ready.owner if ready else ""

    def info(self) -> WorkerInfo:
        ready = self._started
        return WorkerInfo(
            pid=self.proc.pid,
            owner=ready.owner if ready else "",
            spawned=self.spawned,
            recovered=tuple(ready.recovered) if ready else (),
            alive=self.alive,
        )

    def hang_up(self) -> None:
        """Close its stdin: it stops driving (its runs stay resumable) and exits."""
        assert self.proc.stdin is not None
        with contextlib.suppress(OSError):
            self.proc.stdin.close()

    def stop(self, timeout: float) -> None:
        """Hang up and wait for it to exit (killing it after ``timeout`` seconds)."""
        self.hang_up()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(timeout)


class PooledRunHandle(RunHandle):
    """A run driven by one of a pool's workers; ``wait`` rides out that worker's death,
    ``cancel`` asks the worker driving the run."""

    def __init__(self, pool: WorkerPool, run_id: str) -> None:
        super().__init__(run_ops(pool.runtime), run_id)
        self._pool = pool

    def wait(self, timeout: float | None = None, *, through_approvals: bool = False) -> RunResult:
        """``RunHandle.wait``; if the run's worker died, a replacement is started (it
        recovers the run) and waited on once."""
        deadline = None if timeout is None else time.monotonic() + timeout
        result = super().wait(timeout, through_approvals=through_approvals)
        if result.status is RunStatus.INTERRUPTED and not self._pool.closed:
            self._pool.replace_dead()
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            result = super().wait(left, through_approvals=through_approvals)
        return result

    def cancel(self, reason: str = "") -> None:
        """Cancel the run: through the worker that drives it, or here if none does."""
        if not self._pool.cancel_in_worker(self.id, reason):
            super().cancel(reason)


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
        processes = processes if processes is not None else os.cpu_count() or 1
        if not isinstance(processes, int) or processes < 1:
            raise ConfigError(f"processes must be an int >= 1; got {processes!r}")
        if switch_interval is not None and (
            not isinstance(switch_interval, int | float)
            or isinstance(switch_interval, bool)
            or not 0 < switch_interval <= 1
        ):
            raise ConfigError(
                "switch_interval is the workers' sys.setswitchinterval in seconds, a number "
                f"in (0, 1], or None for Python's default; got {switch_interval!r}"
            )
        check_cap("max_model_calls", max_model_calls)
        check_cap("max_active_runs", max_active_runs)
        self._agents = {load_agent(spec).name for spec in specs}
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
        self._next = itertools.count()
        self._workers: list[_Worker] = []
        try:
            started = [self._start_worker() for _ in range(processes)]
            self._workers = started
            for worker in started:
                self._await_ready(worker)
        except BaseException:
            self.close()
            raise

    def _start_worker(self) -> _Worker:
        return _Worker(self._command, self._env, self._worker_exited)

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

    def _await_ready(self, worker: _Worker) -> None:
        try:
            worker.ready.result(self._start_timeout)
        except TimeoutError:
            raise WorkerError(
                f"worker process {worker.proc.pid} did not start within "
                f"{self._start_timeout:g} s (WorkerPool(start_timeout=...))"
            ) from None

    @property
    def closed(self) -> bool:
        """True once ``close()`` was called."""
        return self._closed

    @property
    def workers(self) -> list[WorkerInfo]:
        """The worker processes, in the order runs are handed out."""
        with self._lock:
            return [w.info() for w in self._workers]

    def replace_dead(self) -> list[WorkerInfo]:
        """Start a replacement for each worker that died; each recovers the runs left
        without a live runtime before it says Ready. Returns the replacements."""
        with self._lock:
            if self._closed:
                return []
            fresh: list[_Worker] = []
            for i, worker in enumerate(self._workers):
                if not self._dead(worker):
                    continue
                worker.stop(1.0)
                self._workers[i] = replacement = self._start_worker()
                fresh.append(replacement)
            for worker in fresh:
                self._await_ready(worker)
            return [w.info() for w in fresh]

    def _dead(self, worker: _Worker) -> bool:
        """Its process ended, or its owner lock is free (the process is dying: a SIGKILLed
        worker drops the lock at once, before anything here can reap it)."""
        if not worker.alive:
            return True
        owner = worker.owner
        return bool(owner) and not self.runtime.store.owner_alive(owner)

    def spawn(
        self,
        agent: Agent | str,
        input: str,
        *,
        run_id: str | None = None,
        metadata: Mapping[str, str] | None = None,
        parent_run_id: str | None = None,
    ) -> PooledRunHandle:
        """Start a run on the next worker; returns once its run.started is durable."""
        request = self._spawn_request(agent, input, run_id, metadata, parent_run_id)
        self.runtime.check_open()
        return PooledRunHandle(self, self._pick().request(request).result())

    def spawn_many(
        self,
        agent: Agent | str,
        inputs: Iterable[str],
        *,
        metadata: Mapping[str, str] | None = None,
    ) -> list[PooledRunHandle]:
        """Start a run on each input, spread over the workers, up to ``SPAWN_WINDOW``
        requests in flight at once (a worker's starts share commits); returns their handles
        in input order once every run.started is durable. Every input is checked before any
        is sent; a Ctrl-C stops the sending (the requests in flight still start their runs)."""
        check_inputs(inputs)
        texts = list(inputs)
        name = self._agent_name(agent)
        for text in texts:
            check_spawn(text, None, metadata, None)
        meta = dict(metadata) if metadata is not None else None
        self.runtime.check_open()
        started: list[PooledRunHandle] = []
        in_flight: collections.deque[Future[list[str]]] = collections.deque()
        for at in range(0, len(texts), SPAWN_CHUNK):
            if len(in_flight) * SPAWN_CHUNK >= SPAWN_WINDOW:
                started.extend(PooledRunHandle(self, i) for i in in_flight.popleft().result())
            chunk = SpawnMany(0, name, texts[at : at + SPAWN_CHUNK], metadata=meta)
            in_flight.append(self._pick().request(chunk))
        for reply in in_flight:
            started.extend(PooledRunHandle(self, i) for i in reply.result())
        return started

    def _spawn_request(
        self,
        agent: Agent | str,
        input: str,
        run_id: str | None,
        metadata: Mapping[str, str] | None,
        parent_run_id: str | None,
    ) -> Spawn:
        """A worker's spawn request, checked here: a worker gets only what it can start."""
        name = self._agent_name(agent)
        check_spawn(input, run_id, metadata, parent_run_id)
        return Spawn(
            0,
            name,
            input,
            run_id=run_id,
            metadata=dict(metadata) if metadata is not None else None,
            parent_run_id=parent_run_id,
        )

    def _agent_name(self, agent: Agent | str) -> str:
        """The name the workers know ``agent`` by (refused if they do not know it)."""
        name = agent.name if isinstance(agent, Agent) else agent
        if name not in self._agents:
            raise ConfigError(
                f"this pool's workers do not know agent {name!r}; they know "
                f"{sorted(self._agents)} (WorkerPool(agents=[...]) names them as module:attr)"
            )
        return name

    def _pick(self) -> _Worker:
        with self._lock:
            worker = self._workers[next(self._next) % len(self._workers)]
        if not worker.alive:  # the process check alone: a spawn costs no lock-file probe
            self.replace_dead()
            with self._lock:
                worker = self._workers[next(self._next) % len(self._workers)]
        return worker

    def resume(self, run_id: str, *, extend: Limits | None = None) -> PooledRunHandle:
        """Continue a resumable run on the next worker (``Runtime.resume``'s rules: RunLocked
        if a live runtime drives it, ConfigError if it cannot be resumed)."""
        if extend is not None and not isinstance(extend, Limits):
            raise ConfigError("extend must be fl.Limits(...)")
        self.runtime.handle(run_id)  # raises RunNotFound
        self.runtime.check_open()
        worker = self._pick()
        return PooledRunHandle(self, worker.request(Resume(0, run_id, extend)).result())

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

    def handle(self, run_id: str) -> PooledRunHandle:
        """A handle to an existing run of the store."""
        self.runtime.handle(run_id)  # raises RunNotFound
        return PooledRunHandle(self, run_id)

    def close(self, timeout: float = 30.0) -> None:
        """Stop the workers (runs still going stay resumable) and the host's runtime."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            workers, self._workers = self._workers, []
        for worker in workers:
            worker.hang_up()  # all at once: they wind down in parallel
        for worker in workers:
            worker.stop(timeout)
        self.runtime.close()
