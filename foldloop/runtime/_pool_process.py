"""One worker process of a WorkerPool, as the host sees it: its pipes, the requests in
flight to it and the thread reading its answers."""

from __future__ import annotations

import contextlib
import itertools
import subprocess
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from typing import IO, Any

import msgspec

from foldloop import errors
from foldloop._log import get_logger
from foldloop.errors import FoldloopError, WorkerError
from foldloop.runtime._pool_protocol import (
    Cancelled,
    Ended,
    Failed,
    Ready,
    Request,
    Spawned,
    SpawnedMany,
    decode_reply,
    encode,
)

__all__ = ["WorkerInfo", "WorkerProcess"]

log = get_logger(__name__)

SHOWN_RECOVERED = 5
"""How many recovered run ids a WorkerInfo's repr lists (past that, their count)."""


@dataclass(frozen=True)
class WorkerInfo:
    """One worker process as the pool sees it."""

    pid: int
    owner: str
    spawned: int
    """Runs it started or resumed (requests it refused are not counted)."""
    recovered: tuple[str, ...]
    """The runs it recovered as it started (a replacement takes up its predecessor's)."""
    alive: bool

    def __repr__(self) -> str:
        # a worker that took up a fleet recovered thousands: a printed pool.workers shows few
        few = self.recovered if len(self.recovered) <= SHOWN_RECOVERED else None
        recovered = repr(few) if few is not None else f"<{len(self.recovered):,} run ids>"
        return (
            f"WorkerInfo(pid={self.pid}, owner={self.owner!r}, spawned={self.spawned}, "
            f"recovered={recovered}, alive={self.alive})"
        )


def _error(name: str, message: str) -> FoldloopError:
    """The worker's error, re-raised here as the same FoldloopError class."""
    cls = getattr(errors, name, None)
    if isinstance(cls, type) and issubclass(cls, FoldloopError):
        try:
            return cls(message)
        except TypeError:  # a class whose constructor wants more than a message
            pass
    return FoldloopError(message)


class WorkerProcess:
    """One worker process, the requests in flight to it and the thread reading its answers
    (and the ends of runs it tells of, handed to ``on_ended``)."""

    def __init__(
        self,
        command: list[str],
        env: Mapping[str, str],
        on_exit: Callable[[], None],
        on_ended: Callable[[Ended], None],
    ) -> None:
        self._on_exit = on_exit
        self._on_ended = on_ended
        self.proc = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=dict(env)
        )
        self.ready: Future[Ready] = Future()
        self.spawned = 0
        self._pending: dict[int, Future[Any]] = {}
        self._gone: WorkerError | None = None
        """Set once its process ended: a request sent after that would wait forever."""
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
        with self.proc.stdout:  # closed at its end: the pipe is this thread's alone
            self._answers(self.proc.stdout)
        self._ended()

    def _answers(self, stdout: IO[bytes]) -> None:
        """Settle each request as its worker's answer arrives, until the pipe ends."""
        for line in stdout:
            try:
                reply = decode_reply(line)
            except msgspec.DecodeError:
                continue  # not ours: the worker's stdout carries only protocol lines
            if isinstance(reply, Ended):
                try:
                    self._on_ended(reply)
                except Exception:  # this thread settles the requests: it must go on
                    log.exception("pool_ends_not_handed_out")
            elif isinstance(reply, Ready):
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

    def _ended(self) -> None:
        """Its process ended: fail what waits on it, and have it replaced if it had started."""
        gone = self._exited(self.proc.wait())
        if not self.ready.done():
            self.ready.set_exception(gone)
        with self._lock:
            self._gone = gone
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
            if self._gone is not None:
                raise WorkerError(str(self._gone))  # a fresh one: threads may raise it at once
            if (code := self.proc.poll()) is not None:  # ended; its reader has yet to see it
                raise self._exited(code)
            request = msgspec.structs.replace(message, id=next(self._ids))
            self._pending[request.id] = future
            assert self.proc.stdin is not None
            try:
                self.proc.stdin.write(encode(request))
                self.proc.stdin.flush()
            except (OSError, ValueError):  # ValueError: the pool's close closed its stdin
                self._pending.pop(request.id, None)
                raise WorkerError(
                    f"worker process {self.proc.pid} is gone; the pool starts another"
                ) from None
        return future

    def _exited(self, code: int) -> WorkerError:
        return WorkerError(
            f"worker process {self.proc.pid} exited (code {code}) before answering; the "
            "runs it drove are in the log and the pool's replacement worker recovers them"
        )

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
