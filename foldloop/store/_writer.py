"""Group commit: one thread owns LMDB's write transactions and commits many appends at once.

Every write (appends of all runs, leases, snapshots) is an op queued here. The writer
drains whatever is queued, runs the ops inside one write transaction and commits once,
so a hundred runs stepping together share one fsync. An op that is not durable (its
events start no effect that leaves the process) may linger a moment so that it rides in
the next durable commit instead of paying for a commit of its own; nobody waits on it.

Each op runs in a child transaction of the shared one: an op that raises (a FoldloopError
to reject itself, or anything else) is undone whole, whatever it wrote before raising.
"""

from __future__ import annotations

import collections
import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

import lmdb

from foldloop._log import get_logger
from foldloop.errors import FoldloopError, StoreError

__all__ = ["WriteOp", "Writer"]

log = get_logger(__name__)

T = TypeVar("T")
_MAX_BATCH = 4096
# Python raises KeyboardInterrupt in this thread at any bytecode; a commit it cut short
# would keep the commit role for ever, so this thread never leads (its ops wait instead).
_MAIN_THREAD = threading.main_thread().ident


class WriteOp(Generic[T]):
    """One unit of work for the writer, with a tiny future of its own (cheaper than
    concurrent.futures, which the step path would pay for on every append)."""

    __slots__ = ("_gate", "callback", "done", "durable", "error", "fn", "queued_at", "result")

    def __init__(
        self,
        fn: Callable[[Any], T],
        *,
        durable: bool,
        callback: Callable[[WriteOp[T]], None] | None = None,
    ) -> None:
        self.fn = fn
        self.durable = durable
        self.queued_at = time.monotonic()
        self.callback = callback
        self.result: T | None = None
        self.error: BaseException | None = None
        self.done = False
        # A held lock released by finish(): far cheaper to make than a threading.Event,
        # and most ops (led by their own caller, or never waited on) never block on it.
        self._gate = threading.Lock()
        self._gate.acquire()

    def finish(self, result: T | None, error: BaseException | None) -> None:
        """Resolve the op (writer thread only)."""
        self.result = result
        self.error = error
        self.done = True
        self._gate.release()
        if self.callback is not None:
            try:
                self.callback(self)
            except Exception:
                log.exception("write_callback_failed")

    def wait(self, timeout: float | None = None) -> T:
        """Block until committed; re-raise the op's error."""
        if not self.done:
            if not self._gate.acquire(timeout=-1 if timeout is None else timeout):
                raise StoreError(f"the store writer did not answer within {timeout} s")
            self._gate.release()
        if self.error is not None:
            raise self.error
        return self.result  # type: ignore[return-value]


class Writer:
    """The store's write path: leader commits plus a background flusher.

    Ops wait in ``_pending``; only the holder of ``_committing`` takes them, all at once
    and in order, so a run's appends can never overtake each other. A thread that submits
    a durable op while nobody commits becomes the leader and commits on its own thread
    (no hand-off to another thread and back on the step path); it keeps committing while
    durable ops arrive, so concurrent runs share fsyncs (group commit). Non-durable ops
    linger: the next durable commit carries them, or the background flusher commits them
    within ``linger_s``. While the store is busy the flusher polls every ``linger_s``
    instead of being woken for each op, which would steal the GIL from the step path.
    """

    IDLE_AFTER_S = 0.25
    """Seconds without work after which the flusher sleeps until a submit wakes it."""

    def __init__(
        self,
        begin: Callable[[], Any],
        grow: Callable[[Exception], None],
        on_commit: Callable[[list[Any]], None],
        failure: Callable[[lmdb.Error], StoreError],
        *,
        linger_s: float = 0.002,
    ) -> None:
        self._begin = begin
        self._grow = grow
        self._on_commit = on_commit
        self._failure = failure  # what a failed commit means for the host
        self._linger_s = linger_s
        self._pending: collections.deque[WriteOp[Any]] = collections.deque()
        self._lock = threading.Lock()  # entered directly: Condition's own `with` is Python
        self._cond = threading.Condition(self._lock)
        self._committing = False
        self._polling = False
        self._closed = False
        self.commits = 0
        self.ops = 0
        self._together = threading.local()  # its `depth`: how deep a thread is in together()
        self._thread = threading.Thread(target=self._run, name="foldloop-writer", daemon=True)
        self._thread.start()

    def submit(self, op: WriteOp[T]) -> WriteOp[T]:
        """Queue an op; a durable one is committed at once, by this thread if it is free."""
        with self._lock:
            if self._closed:
                op.finish(None, StoreError("the store is closed; open it again to write"))
                return op
            self._pending.append(op)
            if self._committing or not op.durable or not self._may_lead():
                if not self._polling or (op.durable and not self._committing):
                    self._cond.notify()
                return op
            self._committing = True
            batch = self._take()
        self._lead(batch)
        return op

    @contextlib.contextmanager
    def together(self) -> Iterator[None]:
        """A block whose durable ops this thread does not commit one by one as it submits
        them (a loop of submits would pay a commit each): they queue for the flusher (or a
        leader committing on another thread), which commits them many at once."""
        depth = getattr(self._together, "depth", 0)
        self._together.depth = depth + 1
        try:
            yield
        finally:
            self._together.depth = depth

    def _may_lead(self) -> bool:
        """Whether this thread commits the ops it submits while nobody commits."""
        return threading.get_ident() != _MAIN_THREAD and not getattr(self._together, "depth", 0)

    def close(self) -> None:
        """Commit everything queued, then stop the flusher (no linger: queued ops commit now)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._cond.notify_all()
        self._thread.join()

    def _take(self) -> list[WriteOp[Any]]:
        if len(self._pending) <= _MAX_BATCH:
            batch = list(self._pending)
            self._pending.clear()
            return batch
        return [self._pending.popleft() for _ in range(_MAX_BATCH)]

    def _lead(self, batch: list[WriteOp[Any]]) -> None:
        """Commit ``batch``; keep going while durable ops wait; then release the role."""
        try:
            while True:
                self._commit_safely(batch)
                with self._lock:
                    if any(op.durable for op in self._pending):
                        batch = self._take()
                        continue
                    self._committing = False
                    if self._closed or (self._pending and not self._polling):
                        # close() waits on this; a flusher asleep would not see what queued
                        self._cond.notify()
                    return
        except BaseException as exc:
            self._abandon(batch, exc)
            raise

    def _abandon(self, batch: list[WriteOp[Any]], exc: BaseException) -> None:
        """Hand back the role a leader cut short holds, failing what it had not finished, so
        that neither close() nor the batch's waiters wait for ever."""
        with self._lock:
            self._committing = False
            self._cond.notify()
        for op in batch:
            if not op.done:
                op.finish(None, StoreError(f"the store writer was interrupted ({exc!r})"))

    def _run(self) -> None:
        idle_since = time.monotonic()
        while True:
            with self._lock:
                if self._closed and not self._pending and not self._committing:
                    return
                if not self._pending or self._committing:
                    if self._closed or time.monotonic() - idle_since > self.IDLE_AFTER_S:
                        self._polling = False  # asleep until a submit wakes us
                        self._cond.wait()
                        idle_since = time.monotonic()
                    else:
                        self._polling = True  # busy: look again in linger_s, unasked
                        self._cond.wait(self._linger_s)
                    continue
                idle_since = now = time.monotonic()
                oldest = self._pending[0]
                due = oldest.queued_at + self._linger_s
                if not self._closed and not oldest.durable and due > now:
                    self._polling = True
                    self._cond.wait(due - now)
                    continue
                self._committing = True
                batch = self._take()
            self._lead(batch)

    def _commit_safely(self, batch: list[WriteOp[Any]]) -> None:
        try:
            self._commit(batch)
        except Exception as exc:  # the write path must outlive any one bad batch
            log.exception("writer_batch_failed")
            for op in batch:
                if not op.done:
                    op.finish(None, StoreError(f"the store writer failed: {exc!r}"))

    def _commit(self, batch: list[WriteOp[Any]]) -> None:
        while True:
            try:
                ctx = self._begin()
                try:
                    outcomes = [self._run_op(ctx, op) for op in batch]
                    ctx.commit()
                except BaseException:
                    ctx.abort()
                    raise
            except (lmdb.MapFullError, lmdb.MapResizedError) as exc:
                try:
                    self._grow(exc)
                except StoreError as full:
                    for op in batch:
                        op.finish(None, full)
                    return
                continue
            except lmdb.Error as exc:
                log.error("commit_failed", error=str(exc))
                failure = self._failure(exc)
                for op in batch:
                    op.finish(None, failure)
                return
            self.commits += 1
            self.ops += len(batch)
            for op, (result, error) in zip(batch, outcomes, strict=True):
                op.finish(result, error)
            if ctx.appended:
                self._on_commit(ctx.appended)
            return

    @staticmethod
    def _run_op(ctx: Any, op: WriteOp[Any]) -> tuple[Any, BaseException | None]:
        """Run one op in its own child transaction: all of it is kept, or (it raised) none."""
        ctx.begin_op()
        try:
            result = op.fn(ctx)
        except (lmdb.MapFullError, lmdb.MapResizedError):
            raise  # the whole batch is retried once the map has grown
        except FoldloopError as exc:
            ctx.undo_op()
            return None, exc
        except Exception as exc:
            ctx.undo_op()
            log.error("write_op_crashed", error=repr(exc))
            return None, StoreError(f"the store refused a write: {exc!r}")
        ctx.end_op()
        return result, None
