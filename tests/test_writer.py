"""The writer's hand-offs between its leaders and its flusher, on a commit slower than the
flusher's idle window (a stand-in transaction: only its timing matters here)."""

from __future__ import annotations

import threading
import time
from typing import Any

from foldloop.errors import StoreError
from foldloop.store._writer import WriteOp, Writer


class SlowCommit:
    """A write transaction whose commit takes ``seconds`` and says when it starts."""

    def __init__(self, seconds: float, started: threading.Event) -> None:
        self.seconds = seconds
        self.started = started
        self.appended: list[Any] = []

    def begin_op(self) -> None: ...
    def end_op(self) -> None: ...
    def undo_op(self) -> None: ...
    def abort(self) -> None: ...

    def commit(self) -> None:
        self.started.set()
        time.sleep(self.seconds)


def _failure(exc: Exception) -> StoreError:
    return StoreError(str(exc))


def test_an_op_queued_behind_a_slow_commit_is_committed_without_another_submit() -> None:
    started = threading.Event()
    slow = Writer.IDLE_AFTER_S * 3
    writer = Writer(
        lambda: SlowCommit(slow, started), lambda exc: None, lambda records: None, _failure
    )
    try:
        time.sleep(Writer.IDLE_AFTER_S * 2)  # set-up: the flusher falls asleep, idle
        durable = WriteOp(lambda ctx: "led", durable=True)
        leader = threading.Thread(target=writer.submit, args=(durable,))
        leader.start()  # not the main thread: it leads its own commit
        assert started.wait(5), "the leader never began its commit"
        queued = writer.submit(WriteOp(lambda ctx: "queued", durable=False))
        leader.join(5)
        assert durable.wait(5) == "led"
        # Nothing else is submitted: the leader must hand the queued op on when it is done.
        assert queued.wait(timeout=slow + 5) == "queued"
    finally:
        writer.close()
