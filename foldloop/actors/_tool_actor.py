"""ToolActor: one per tool; owns the tool's bounded pool and its timeouts.

Run actors hand calls straight to ``dispatch`` (thread-safe) rather than through the
actor's mailbox: the mailbox would only forward to the pool, at the price of one more
thread wake-up on every step. The actor's own thread handles lifecycle (stop shuts the
pool down). A call past its timeout is reported as ``tool.failed(kind="timeout")``
at once; its late real outcome is then ignored by decide. An ``async def`` tool's calls are
tasks on the runtime's event loop instead: no thread each, the timeout also cancels the task.
"""

from __future__ import annotations

import asyncio
import collections
import threading
import time
from collections.abc import Callable

import msgspec

from foldloop._log import get_logger
from foldloop.actors._base import FAILURES, FastActor
from foldloop.actors._event_loop import EventLoop, in_step_of
from foldloop.actors._model_call import reply_bound
from foldloop.actors._queued import Cancellable, QueuedCall
from foldloop.actors._timers import Timer, Timers
from foldloop.actors._workers import Workers
from foldloop.core._commands import ToolFinished
from foldloop.store import MAX_EVENT_BYTES
from foldloop.tools._decorator import Tool, ToolOutcome, failure_text

__all__ = [
    "AsyncCall",
    "OneOutcome",
    "RunToolCall",
    "ToolActor",
    "ToolRunner",
    "outcome_command",
]

log = get_logger(__name__)


class RunToolCall(msgspec.Struct, frozen=True):
    """Run one call and hand ``reply`` its ToolFinished command (False: nobody took it)."""

    run_id: str
    call_id: str
    args: str
    reply: Callable[[ToolFinished], bool]


class OneOutcome:
    """A call reports exactly one outcome: its own or its timeout, whichever claims first.
    (A late one is dropped: a later step may reuse the call id and must not receive it.)"""

    __slots__ = ("_lock", "_taken")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._taken = False

    def claim(self) -> bool:
        """True for the first caller only."""
        with self._lock:
            if self._taken:
                return False
            self._taken = True
            return True


def outcome_command(call_id: str, outcome: ToolOutcome, now: int) -> ToolFinished:
    """The command that reports what one call of a tool produced, at ``now`` (unix ns)."""
    return ToolFinished(
        now=now,
        call_id=call_id,
        ok=outcome.ok,
        result=outcome.text,
        kind=outcome.kind,
        duration_ms=round(outcome.duration_ms, 3),
        original_chars=outcome.original_chars,
    )


class AsyncCall:
    """An async tool's call: its task on the loop, and its wait for a place."""

    __slots__ = ("queued", "task")

    def __init__(self, task: Cancellable, queued: QueuedCall) -> None:
        self.task = task
        self.queued = queued

    def cancel(self) -> bool:
        self.queued.cancel()
        return self.task.cancel()

    def done(self) -> bool:
        return self.task.done()

    def hold(self) -> None:
        """See ``QueuedCall.hold``."""
        self.queued.hold()


class ToolRunner:
    """One tool's bounded pool and timeouts; ``dispatch`` may be called from any thread."""

    def __init__(
        self,
        tool: Tool,
        timers: Timers,
        clock: Callable[[], int],
        loop: EventLoop,
        event_bytes: int = MAX_EVENT_BYTES,
    ) -> None:
        self.tool = tool
        self.result_bytes = reply_bound(event_bytes) if event_bytes < MAX_EVENT_BYTES else None
        """What a store whose events are smaller than usual (``event_bytes``) can keep of a
        result, if less than any tool's own bound."""
        self.timers = timers
        self.clock = clock
        self.loop = loop
        self.async_slots = asyncio.Semaphore(tool.concurrency)
        """The bound of an async tool's calls in flight on the loop."""
        self.async_taken = 0
        """Its places taken (written on the loop only)."""
        self.pool = Workers(
            tool.concurrency, f"foldloop-tool-{tool.name}", call_later=timers.call_later
        )
        self._running: collections.Counter[str] = collections.Counter()
        """Sync calls started and not yet reported, by run (a close waits for those of runs
        cancelled meanwhile: their outcomes are recorded after the cancel)."""
        self._running_lock = threading.Lock()

    def running(self) -> dict[str, int]:
        """(Any thread.) Sync calls started and not yet reported, by run id."""
        with self._running_lock:
            return dict(self._running)

    def dispatch(self, call: RunToolCall, *, closing: bool = False) -> Cancellable | None:
        """Start ``call`` on the pool or, for an async tool, the loop; its outcome goes to
        ``call.reply``. Returns what a cancel of the run cancels: the async task, or the sync
        call while it waits for a thread (one running cannot be stopped). ``closing``: the
        runtime is closing, and a call that would wait for a slot is held back at once."""
        try:
            started = self._start(call)
            if closing and isinstance(started, QueuedCall | AsyncCall) and not self._free():
                started.hold()
            return started
        except Exception:
            log.exception("tool_dispatch_failed", tool=self.tool.name, run_id=call.run_id)
            return None

    def finished(self, run_id: str, call_id: str, outcome: ToolOutcome) -> ToolFinished:
        """The command that reports a call's own outcome, cut to the tool's bound (and to what
        the store can keep)."""
        outcome = self.tool.bounded(outcome)
        text = outcome.text
        bound = self.result_bytes
        if bound is not None and len(text) * 4 > bound and len(raw := text.encode()) > bound:
            kept = raw[:bound].decode("utf-8", "ignore")
            original = outcome.original_chars or len(text)
            outcome = msgspec.structs.replace(outcome, text=kept, original_chars=original)
        if outcome.original_chars is not None:
            log.warning(
                "tool_result_cut",
                run_id=run_id,
                tool=self.tool.name,
                call_id=call_id,
                kept=len(outcome.text),
                original=outcome.original_chars,
            )
        return outcome_command(call_id, outcome, self.clock())

    def timed_out(self, run_id: str, call_id: str, started: float) -> ToolFinished:
        """The outcome of a call still running ``timeout`` s after ``started`` (monotonic);
        ``say_timed_out`` once it is handed on (the first log record may take long)."""
        timeout = self.tool.timeout or 0.0
        return ToolFinished(
            now=self.clock(),
            call_id=call_id,
            ok=False,
            result=f"tool {self.tool.name!r} did not finish within {timeout:g} s",
            kind="timeout",
            duration_ms=round((time.monotonic() - started) * 1000, 3),
        )

    def say_timed_out(self, run_id: str) -> None:
        log.warning(
            "tool_timed_out", run_id=run_id, tool=self.tool.name, timeout_s=self.tool.timeout
        )

    def _free(self) -> bool:
        """A slot is free now (a thread, or an async tool's place). (Any thread: the count of
        async places taken is a plain int, not the semaphore's waiters, which only the loop
        may walk.)"""
        if self.tool.is_async:
            return self.async_taken < self.tool.concurrency
        return self.pool.has_room()

    def not_run(self, call_id: str) -> ToolFinished:
        """The outcome of a call its runtime held back as it closed: it never started."""
        return ToolFinished(
            now=self.clock(),
            call_id=call_id,
            ok=False,
            result=f"tool {self.tool.name!r} did not run: its runtime closed before the call "
            "got a thread",
            kind="interrupted",
            duration_ms=0.0,
        )

    def shutdown(self) -> None:
        """Stop taking calls; running ones finish on their threads, unclaimed."""
        self.pool.shutdown()

    def watch(
        self,
        run_id: str,
        call_id: str,
        once: OneOutcome,
        deliver: Callable[[ToolFinished], object],
    ) -> Timer | None:
        """Arm the call's timeout (None if the tool has none): once it passes, and unless
        ``once`` was claimed by the call's own outcome, ``deliver`` gets the timeout."""
        timeout = self.tool.timeout
        if timeout is None:
            return None
        started = time.monotonic()

        def expire() -> None:
            if once.claim():
                deliver(self.timed_out(run_id, call_id, started))
                self.say_timed_out(run_id)

        return self.timers.call_later(timeout, expire)

    def _start(self, call: RunToolCall) -> Cancellable:
        once = OneOutcome()

        def report(command: ToolFinished) -> None:  # called by whoever claimed ``once``
            if not call.reply(command):
                log.info("tool_result_unclaimed", run_id=call.run_id, call_id=call.call_id)

        def not_run() -> None:
            if once.claim():
                report(self.not_run(call.call_id))

        queued = QueuedCall(not_run)
        if self.tool.is_async:
            return AsyncCall(self.loop.start(self._awaited(call, once, report, queued)), queued)

        def run() -> None:
            if not queued.start():  # its run was cancelled or closing while it waited
                log.info("tool_call_not_started", run_id=call.run_id, call_id=call.call_id)
                return
            counted = OneOutcome()

            def reported() -> None:  # once: its outcome, or its timeout, is handed on
                if counted.claim():
                    with self._running_lock:
                        self._running[call.run_id] -= 1
                        if not self._running[call.run_id]:
                            del self._running[call.run_id]

            with self._running_lock:
                self._running[call.run_id] += 1
            try:
                invoke(reported)
            finally:
                reported()

        def invoke(reported: Callable[[], None]) -> None:
            # The timeout runs from here: waiting for one of the tool's threads is not the
            # call. Past it, the call's thread no longer counts against the tool's bound (a
            # call that hangs must not hold up the ones queued behind it).
            late = OneOutcome()

            def past_timeout(command: ToolFinished) -> None:
                if late.claim():  # still running (else it returned just now: nothing to lend)
                    self.pool.lend()
                report(command)
                reported()

            timer = self.watch(call.run_id, call.call_id, once, past_timeout)
            try:
                outcome = self.tool.invoke(call.args)  # the pool's threads are the tool's bound
            except FAILURES as exc:  # a Tool whose invoke raises: the run must still hear of it
                log.exception("tool_invoke_failed", tool=self.tool.name, run_id=call.run_id)
                outcome = ToolOutcome(False, failure_text(exc), "exception")
            if timer is not None:
                timer.cancel()  # release the run's references now, not in `timeout` s
            if not late.claim():  # it timed out: its lent thread is taken back
                self.pool.reclaim()
            if once.claim():
                finished = self.finished(call.run_id, call.call_id, outcome)
                with self.pool.handing_on():
                    report(finished)
            else:
                log.info("tool_result_late", run_id=call.run_id, call_id=call.call_id)

        self.pool.submit(run)
        return queued

    async def _awaited(
        self,
        call: RunToolCall,
        once: OneOutcome,
        report: Callable[[ToolFinished], None],
        queued: QueuedCall,
    ) -> None:
        """An async tool's call on the loop: its bound kept by ``async_slots``. Its timeout
        runs from when it has a slot; past it, as for a sync call, the run gets the timeout
        at once, the slot goes back and the task is cancelled (what it does then is ignored:
        a tool may swallow the cancel)."""
        await self.async_slots.acquire()
        self.async_taken += 1
        slot = _Slot(self)
        try:
            if not queued.start():  # held back as its runtime closes (reported then)
                return
            outcome = await self._invoked(call, once, report, slot)
        finally:
            slot.release()
        if outcome is None:
            return
        if once.claim():
            report(self.finished(call.run_id, call.call_id, outcome))
        else:
            log.info("tool_result_late", run_id=call.run_id, call_id=call.call_id)

    async def _invoked(
        self,
        call: RunToolCall,
        once: OneOutcome,
        report: Callable[[ToolFinished], None],
        slot: _Slot,
    ) -> ToolOutcome | None:
        """The async tool's outcome (None: its timeout cancelled it, and was reported)."""
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("an async tool's call runs as a task on the runtime's loop")
        started = time.monotonic()
        expired = False

        def expire() -> None:
            nonlocal expired
            expired = True
            slot.release()  # a call that ignores its cancel must not hold up the ones queued
            self.loop.abandon(task)
            if once.claim():
                report(self.timed_out(call.run_id, call.call_id, started))
                self.say_timed_out(call.run_id)

        timeout = self.tool.timeout
        timer = None if timeout is None else asyncio.get_running_loop().call_later(timeout, expire)
        try:
            return await self.tool.ainvoke(call.args)
        except asyncio.CancelledError:
            if expired:
                return None
            if self.loop.cancelled_here(task):  # foldloop's (its run's, a close): no outcome
                raise
            why = "CancelledError raised inside the tool without its call being cancelled"
            return ToolOutcome(False, why, "exception", _ms_since(started))
        except BaseException as exc:  # out of the loop, it would stop every call on it
            if isinstance(exc, GeneratorExit) and not in_step_of(task):
                raise  # its coroutine is being closed, not run: nobody waits for an outcome
            return ToolOutcome(False, failure_text(exc), "exception", _ms_since(started))
        finally:
            if timer is not None:
                timer.cancel()


class _Slot:
    """(On the loop.) An async call's place in its tool's bound, given back once: at its
    timeout, or as it ends."""

    __slots__ = ("_runner",)

    def __init__(self, runner: ToolRunner) -> None:
        self._runner: ToolRunner | None = runner

    def release(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            runner.async_taken -= 1
            runner.async_slots.release()


def _ms_since(started: float) -> float:
    return (time.monotonic() - started) * 1000


class ToolActor(FastActor):
    """The actor of one tool: owns its ToolRunner's lifecycle (runs call ``dispatch``)."""

    def __init__(self, runner: ToolRunner) -> None:
        super().__init__()
        self.runner = runner

    def on_stop(self) -> None:
        self.runner.shutdown()
