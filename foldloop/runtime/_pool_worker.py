"""A WorkerPool's worker process: a Runtime of its own on the shared store.

Started by ``WorkerPool`` as ``python -m foldloop.runtime._pool_worker --store PATH
--agent module:attr ...``. It opens the store, recovers runs whose runtime died (a worker
that was killed, say), says Ready, then spawns the runs the host asks for and drives them
until its stdin closes, telling the host of each run that ended (``_pool_endings``). One
process per core is how a pool uses more than one core: each has its own interpreter lock,
and the store's leases keep each run driven by one of them.

A worker whose host is gone (killed: its end of the pipes closed) stops as on a hang-up,
quietly and with exit code 0: it reads no more requests, and the runs it drives stay
resumable, as after ``WorkerPool.close``. It ignores SIGINT: a Ctrl-C at the terminal is
the host's to handle (closing its pool, or dying, hangs its workers up).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import BinaryIO

import msgspec

from foldloop._agent import Agent
from foldloop.errors import ConfigError, FoldloopError, SpawnError
from foldloop.runtime._agent_ref import load_agent
from foldloop.runtime._facade import Runtime, spawn_named
from foldloop.runtime._pool_endings import EndingsSender
from foldloop.runtime._pool_protocol import (
    REQUESTS,
    Cancelled,
    Failed,
    Ready,
    Refused,
    Reply,
    Request,
    Resume,
    Spawn,
    Spawned,
    SpawnedMany,
    SpawnMany,
    encode,
)

__all__ = ["main"]

SPAWN_THREADS = 32
"""Requests answered at once: each waits for its run.started to be durable, so several in
flight share a group commit instead of paying an fsync each."""


class _Answers:
    """The protocol channel: stdout as it was at start (print() and logs go to stderr)."""

    def __init__(self, out: BinaryIO) -> None:
        self._out = out
        self._lock = threading.Lock()
        self.host_gone = False
        """True once a reply found nobody reading: the host died."""

    def send(self, reply: Reply) -> None:
        """Write one reply; to a host that is gone, nothing (``host_gone`` says so)."""
        line = encode(reply)
        with self._lock:
            if self.host_gone:
                return
            try:
                self._out.write(line)
                self._out.flush()
            except BrokenPipeError:
                self.host_gone = True
                # Closed now, its unsent line dropped: flushed at exit, it would fail again.
                with contextlib.suppress(OSError):
                    self._out.close()


def _agent(rt: Runtime, name: str) -> Agent:
    agent = rt.agent_named(name)
    if agent is None:
        raise ConfigError(
            f"this pool's workers do not know agent {name!r}; "
            "name it in WorkerPool(agents=[...]) as module:attr"
        )
    return agent


def _spawn(rt: Runtime, request: Spawn) -> str:
    agent = _agent(rt, request.agent)
    handle = rt.spawn(
        agent,
        request.input,
        run_id=request.run_id,
        metadata=request.metadata,
        parent_run_id=request.parent_run_id,
    )
    return handle.id


def _spawn_many(rt: Runtime, request: SpawnMany) -> list[str]:
    try:
        return _start_many(rt, request)
    except SpawnError as exc:
        # the host reads from the log which runs of its whole call started: it is told
        # what failed, not this request's share of it
        if isinstance(exc.__cause__, Exception):
            raise exc.__cause__ from None
        raise


def _start_many(rt: Runtime, request: SpawnMany) -> list[str]:
    agent = _agent(rt, request.agent)
    if request.run_ids is None:
        return [h.id for h in rt.spawn_many(agent, request.inputs, metadata=request.metadata)]
    if len(request.run_ids) != len(request.inputs):
        raise ConfigError(
            f"a spawn_many request named {len(request.run_ids)} run ids for "
            f"{len(request.inputs)} inputs; it needs one an input"
        )
    return spawn_named(rt, agent, request.inputs, request.run_ids, request.metadata)


def _serve(rt: Runtime, request: Request) -> Reply:
    """Carry out one request; every failure becomes a Refused the host re-raises."""
    try:
        if isinstance(request, Spawn):
            return Spawned(request.id, _spawn(rt, request))
        if isinstance(request, SpawnMany):
            return SpawnedMany(request.id, _spawn_many(rt, request))
        if isinstance(request, Resume):
            return Spawned(request.id, rt.resume(request.run_id, extend=request.extend).id)
        rt.handle(request.run_id).cancel(request.reason)
        return Cancelled(request.id)
    except FoldloopError as exc:
        return Refused(request.id, type(exc).__name__, str(exc))
    except Exception as exc:  # a bug, reported to the host rather than lost in a thread
        return Refused(request.id, "FoldloopError", f"{type(exc).__name__}: {exc}")


def _malformed(line: bytes, exc: msgspec.DecodeError) -> Reply:
    """A Refused for a request that did not decode, so the host waiting on it learns why
    (a line without even an id is answered with id 0, which nobody waits on)."""
    try:
        raw = msgspec.json.decode(line)
    except msgspec.DecodeError:
        raw = None
    ident = raw.get("id") if isinstance(raw, dict) else None
    return Refused(
        ident if isinstance(ident, int) else 0, "ConfigError", f"a malformed request: {exc}"
    )


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="A WorkerPool's worker (started by the pool).")
    parser.add_argument("--store", required=True)
    parser.add_argument("--agent", action="append", required=True, help="module:attr")
    parser.add_argument("--log-level", default="warning")
    parser.add_argument("--switch-interval", type=float, help="sys.setswitchinterval, s")
    parser.add_argument("--max-model-calls", type=int, help="Runtime.open(max_model_calls=)")
    parser.add_argument("--max-active-runs", type=int, help="Runtime.open(max_active_runs=)")
    return parser.parse_args(argv)


def _ignore(signum: int, frame: object) -> None:
    """A SIGINT handler that does nothing."""


def main(argv: Sequence[str] | None = None) -> int:
    """Serve requests from stdin until it closes or the host is gone (0); 1 if the runtime
    could not start."""
    args = _parse(argv)
    # A Ctrl-C reaches the host's whole process group: the host decides when workers stop.
    # (A handler, not SIG_IGN: an ignored signal stays ignored in the tools' subprocesses.)
    signal.signal(signal.SIGINT, _ignore)
    if args.switch_interval is not None:
        sys.setswitchinterval(args.switch_interval)  # see pool.SWITCH_INTERVAL
    answers = _Answers(os.fdopen(os.dup(1), "wb"))
    os.dup2(2, 1)  # whatever else writes to stdout lands on stderr, not in the protocol
    level = logging.getLevelName(args.log_level.upper())
    if isinstance(level, int):
        fmt = f"%(levelname)s %(name)s [worker {os.getpid()}]: %(message)s"
        logging.basicConfig(level=level, stream=sys.stderr, format=fmt)  # a host of its own
    try:
        agents = [load_agent(spec) for spec in args.agent]
        rt = Runtime.open(
            args.store,
            agents=agents,
            create=False,
            max_model_calls=args.max_model_calls,
            max_active_runs=args.max_active_runs,
        )
    except Exception as exc:  # an agent's module may raise anything as it is imported
        answers.send(Failed(str(exc) if isinstance(exc, FoldloopError) else repr(exc)))
        return 1
    endings = EndingsSender(answers.send)  # closed last: it sends the close's ends too
    rt.system.on_ended = endings.ended
    with (
        contextlib.closing(endings),
        rt,
        ThreadPoolExecutor(SPAWN_THREADS, thread_name_prefix="foldloop-spawn") as pool,
    ):
        try:
            recovered = [h.id for h in rt.recover()]
        except FoldloopError as exc:
            answers.send(Failed(f"recovering orphaned runs failed: {exc}"))
            return 1
        answers.send(Ready(rt.owner, os.getpid(), recovered))

        def serve(request: Request) -> None:
            if not answers.host_gone:  # a request still in the pipe of a host that died
                answers.send(_serve(rt, request))

        for line in sys.stdin.buffer:
            if answers.host_gone:
                break
            try:
                request = REQUESTS.decode(line)
            except msgspec.DecodeError as exc:
                answers.send(_malformed(line, exc))
                continue
            pool.submit(serve, request)
    return 0


if __name__ == "__main__":
    sys.exit(main())
