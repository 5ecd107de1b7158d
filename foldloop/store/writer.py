"""Group commit: one thread owns LMDB's write transactions and commits many appends at once.

Every write (appends of all runs, leases, snapshots) is an op queued here. The writer
drains whatever is queued, runs the ops inside one write transaction and commits once,
so a hundred runs stepping together share one fsync. An op that is not durable (its
events start no effect that leaves the process) may linger a moment so that it rides in
the next durable commit instead of paying for a commit of its own; nobody waits on it.

Each op checks before it writes and raises a FoldloopError to reject itself, so a
rejected op never leaves half its writes in the shared transaction.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import lmdb
import structlog

from foldloop.errors import FoldloopError, StoreError

__all__ = ["WriteOp", "Writer"]

log = structlog.get_logger(__name__)

T = TypeVar("T")
_STOP = object()
_MAX_BATCH = 4096


class WriteOp(Generic[T]):
    """One unit of work for the writer, with a tiny future of its own (cheaper than
    concurrent.futures, which the step path would pay for on every append)."""

    __slots__ = ("_done", "callback", "durable", "error", "fn", "result")

    def __init__(
        self,
        fn: Callable[[Any], T],
        *,
        durable: bool,
        callback: Callable[[WriteOp[T]], None] | None = None,
    ) -> None:
        self.fn = fn
        self.durable = durable
        self.callback = callback
        self.result: T | None = None
        self.error: BaseException | None = None
        self._done = threading.Event()

    def finish(self, result: T | None, error: BaseException | None) -> None:
        """Resolve the op (writer thread only)."""
        self.result = result
        self.error = error
        self._done.set()
        if self.callback is not None:
            try:
                self.callback(self)
            except Exception:
                log.exception("write_callback_failed")

    def wait(self, timeout: float | None = None) -> T:
        """Block until committed; re-raise the op's error."""
        if not self._done.wait(timeout):
            raise StoreError(f"the store writer did not answer within {timeout} s")
        if self.error is not None:
            raise self.error
        return self.result  # type: ignore[return-value]


class _OpCrashed(Exception):
    def __init__(self, index: int, error: BaseException) -> None:
        self.index = index
        self.error = error


class Writer:
    """The store's single writer thread."""

    def __init__(
        self,
        begin: Callable[[], Any],
        grow: Callable[[Exception], None],
        on_commit: Callable[[list[Any]], None],
        *,
        linger_s: float = 0.002,
    ) -> None:
        self._begin = begin
        self._grow = grow
        self._on_commit = on_commit
        self._linger_s = linger_s
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._closed = False
        self.commits = 0
        self.ops = 0
        self._thread = threading.Thread(target=self._run, name="foldloop-writer", daemon=True)
        self._thread.start()

    def submit(self, op: WriteOp[T]) -> WriteOp[T]:
        """Queue an op; it is committed with whatever else is queued."""
        if self._closed:
            op.finish(None, StoreError("the store is closed; open it again to write"))
            return op
        self._queue.put(op)
        return op

    def close(self) -> None:
        """Commit everything queued, then stop the thread."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(_STOP)
        self._thread.join()

    def _run(self) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is _STOP:
                break
            batch: list[WriteOp[Any]] = [first]
            stopping = self._drain(batch)
            if not stopping and self._linger_s > 0 and not any(op.durable for op in batch):
                stopping = self._linger(batch)
            try:
                self._commit(batch)
            except Exception as exc:  # the writer thread must outlive any one bad batch
                log.exception("writer_batch_failed")
                for op in batch:
                    if not op._done.is_set():
                        op.finish(None, StoreError(f"the store writer failed: {exc!r}"))

    def _drain(self, batch: list[WriteOp[Any]]) -> bool:
        while len(batch) < _MAX_BATCH:
            try:
                op = self._queue.get_nowait()
            except queue.Empty:
                return False
            if op is _STOP:
                return True
            batch.append(op)
        return False

    def _linger(self, batch: list[WriteOp[Any]]) -> bool:
        deadline = time.monotonic() + self._linger_s
        while not any(op.durable for op in batch):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            try:
                op = self._queue.get(timeout=remaining)
            except queue.Empty:
                return False
            if op is _STOP:
                return True
            batch.append(op)
            if self._drain(batch):
                return True
        return False

    def _commit(self, batch: list[WriteOp[Any]]) -> None:
        pending = list(batch)
        while pending:
            outcomes: list[tuple[WriteOp[Any], Any, BaseException | None]] = []
            try:
                ctx = self._begin()
                try:
                    for i, op in enumerate(pending):
                        try:
                            outcomes.append((op, op.fn(ctx), None))
                        except FoldloopError as exc:
                            outcomes.append((op, None, exc))
                        except (lmdb.MapFullError, lmdb.MapResizedError):
                            raise
                        except Exception as exc:
                            raise _OpCrashed(i, exc) from exc
                    ctx.commit()
                except BaseException:
                    ctx.abort()
                    raise
            except _OpCrashed as crash:
                op = pending.pop(crash.index)
                log.error("write_op_crashed", error=repr(crash.error))
                op.finish(None, StoreError(f"the store refused a write: {crash.error!r}"))
                continue
            except (lmdb.MapFullError, lmdb.MapResizedError) as exc:
                try:
                    self._grow(exc)
                except StoreError as full:
                    for op in pending:
                        op.finish(None, full)
                    return
                continue
            except lmdb.Error as exc:
                log.error("commit_failed", error=str(exc))
                for op in pending:
                    op.finish(
                        None,
                        StoreError(
                            f"commit failed ({exc}); nothing of this write was stored. "
                            "Is the disk full? Free space, then resume the run"
                        ),
                    )
                return
            self.commits += 1
            self.ops += len(pending)
            for op, result, error in outcomes:
                op.finish(result, error)
            if ctx.appended:
                self._on_commit(ctx.appended)
            return
