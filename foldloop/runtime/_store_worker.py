"""A worker of a shared store (``foldloop worker nats://... --agents m:a``): a runtime that
takes queued runs of its agents from the store's work queue and, every ``recover_every``
seconds, takes over runs whose runtime died (their owner key lapsed), until it is told
to stop (SIGTERM, or Ctrl-C). With ``processes`` above 1 it supervises that many worker
processes of itself, starting another in place of one that dies.

It prints nothing: what it does goes to the log (stderr, at ``log_level``).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from types import FrameType

from foldloop._log import get_logger
from foldloop.errors import FoldloopError
from foldloop.runtime._agent_ref import load_agent
from foldloop.runtime._facade import Runtime
from foldloop.store._nats_names import shown

__all__ = ["RECOVER_EVERY_S", "serve_store"]

log = get_logger("foldloop.worker")

RECOVER_EVERY_S = 2.0
"""How often a worker looks for runs of dead runtimes (each look reads every run's lease)."""
RESTART_AFTER_S = 1.0
"""A worker process that died is started again no sooner than this after it started."""
FAILED_START_S = 10.0
"""A worker process failing this soon, before any ran this long, could not start (bad
agents, refused credentials, no JetStream): the supervisor stops with its exit code rather
than start it again and again."""
SUPERVISOR_ENV = "FOLDLOOP_WORKER_SUPERVISOR"
EXIT_FORCED = 130


def serve_store(
    url: str,
    agents: Sequence[str],
    *,
    processes: int = 1,
    max_active_runs: int | None = None,
    log_level: str = "warning",
    recover_every: float = RECOVER_EVERY_S,
) -> int:
    """Work on the store at ``url`` for ``agents`` (``module:attr`` each) until stopped;
    the exit code (0 once stopped)."""
    level = logging.getLevelName(log_level.upper())
    if isinstance(level, int):  # the CLI configured warnings already: this level wins
        logging.basicConfig(
            level=level, stream=sys.stderr, format="%(levelname)s %(message)s", force=True
        )
    stop = threading.Event()

    def stopping(signum: int, frame: FrameType | None) -> None:
        if stop.is_set():  # asked twice: stop now (the runs stay resumable all the same)
            os._exit(EXIT_FORCED)
        stop.set()

    signal.signal(signal.SIGTERM, stopping)
    signal.signal(signal.SIGINT, stopping)
    if processes > 1:
        command = [sys.executable, "-m", "foldloop", "worker", url, "--log-level", log_level]
        for spec in agents:
            command += ["--agents", spec]
        if max_active_runs is not None:
            command += ["--max-active-runs", str(max_active_runs)]
        return _supervise(command, processes, stop)
    loaded = [load_agent(spec) for spec in agents]
    with Runtime.open(url, agents=loaded, max_active_runs=max_active_runs) as rt:
        log.info(
            "worker_started", store=shown(url), agents=[a.name for a in loaded], owner=rt.owner
        )
        supervisor = int(os.environ.pop(SUPERVISOR_ENV, "0"))  # not for its tools' processes
        while not stop.is_set():
            if supervisor and os.getppid() != supervisor:  # the supervisor died: so do we
                break
            try:
                taken = rt.recover()
            except FoldloopError as exc:
                log.warning("recover_failed", error=str(exc))
            else:
                if taken:
                    log.info("runs_recovered", runs=[h.id for h in taken])
            stop.wait(recover_every)
    log.info("worker_stopped", owner=rt.owner)
    return 0


def _supervise(command: list[str], processes: int, stop: threading.Event) -> int:
    """Keep ``processes`` worker processes of ``command`` running until ``stop``; then stop
    them (SIGTERM: each closes its runtime) and return."""
    started: dict[subprocess.Popen[bytes], float] = {}
    env = {**os.environ, SUPERVISOR_ENV: str(os.getpid())}
    ever_up = False  # some worker ran FAILED_START_S: a later failure is no start-up error
    try:
        while not stop.is_set():
            now = time.monotonic()
            ever_up = ever_up or any(now - since >= FAILED_START_S for since in started.values())
            for proc, since in list(started.items()):
                if proc.poll() is None:
                    continue
                del started[proc]
                if proc.returncode > 0 and not ever_up and now - since < FAILED_START_S:
                    return proc.returncode  # it could not start (its error is above)
                log.warning("worker_process_exited", pid=proc.pid, code=proc.returncode)
            while len(started) < processes:
                # a session of its own: a Ctrl-C at the terminal is the supervisor's to pass on
                proc = subprocess.Popen(command, env=env, start_new_session=True)
                started[proc] = time.monotonic()
            stop.wait(RESTART_AFTER_S)  # a process that dies at once costs one start a second
    finally:
        for proc in started:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in started:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    return 0
