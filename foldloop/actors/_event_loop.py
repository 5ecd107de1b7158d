"""The runtime's asyncio event loop, on a thread of its own, started on first use.

Async model calls (``acomplete``) and ``async def`` tools are awaited here: thousands of
calls in flight hold no thread each. One of them that blocks (``time.sleep``, sync I/O)
holds up every other and their timeouts: a watcher logs it when the loop runs late. One
that raises ``SystemExit`` or ``KeyboardInterrupt`` (which asyncio lets out of the loop)
does not stop it: the loop is served again. A task is cancelled once (by its run, its timeout
or a close): a second cancel would land in the ``finally`` where it cleans up; only a close
cancels once more what still runs half its wait later.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import weakref
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from typing import Any, TypeVar

from foldloop._log import get_logger
from foldloop.actors._own_threads import mark_own_thread

__all__ = ["LATE_S", "LOOP_CLOSE_S", "EventLoop", "LoopCall", "in_step_of"]

T = TypeVar("T")

log = get_logger(__name__)

LATE_S = 2.0
"""How late the loop may run a timer before the watcher says something blocks it."""
LATE_REPEAT_S = 60.0
"""Once said, not again for this long (a loop that stays blocked is one problem)."""
LOOP_CLOSE_S = 5.0
"""The longest a close waits for the tasks it cancelled, and for each clean-up after."""
CLOSE_AT_LEAST_S = 0.5
"""The least a close waits for the tasks it cancelled."""
CLEANUP_AT_LEAST_S = 2.0
"""The least a close gives each model's ``aclose``, however short its own wait."""
CLOSE_SLACK_S = 1.0
"""What a close waits past its bounds for the loop to answer and its thread to end."""


def in_step_of(task: asyncio.Task[Any] | None) -> bool:
    """Whether the code calling this runs as a step of ``task``. A ``GeneratorExit`` caught
    outside one was thrown in by a close of the coroutine (the garbage collector's, of a
    task nobody holds): it must go on out. Inside one, the awaited code raised it."""
    try:
        return task is not None and asyncio.current_task() is task
    except RuntimeError:  # no loop runs on this thread
        return False


class LoopCall:
    """One coroutine handed to the loop; ``cancel`` and ``done`` from any thread."""

    __slots__ = ("_cancelled", "_coro", "_loop", "_on_end", "_on_result", "_owner", "_task")

    def __init__(
        self,
        coro: Coroutine[Any, Any, T],
        on_result: Callable[[T], object] | None,
        owner: EventLoop,
        on_end: Callable[[], object] | None = None,
    ) -> None:
        self._coro: Coroutine[Any, Any, Any] | None = coro
        self._on_result: Callable[[Any], object] | None = on_result
        self._on_end = on_end
        self._owner = owner
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[Any] | None = None
        self._cancelled = False

    def cancel(self) -> bool:
        """Cancel the call: before it starts, it never does; running, its task is cancelled."""
        self._cancelled = True
        task, loop = self._task, self._loop
        if task is not None and loop is not None and not task.done():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(self._owner.cancel_once, task)
        return True

    def done(self) -> bool:
        """Finished, or cancelled before it started: nothing left to cancel."""
        task = self._task
        return task.done() if task is not None else self._coro is None

    def _begin(self, loop: asyncio.AbstractEventLoop) -> None:
        """(On the loop.) Start the call's task, unless it was cancelled first."""
        coro, self._coro = self._coro, None
        if coro is None:
            return
        if self._cancelled:
            coro.close()
            self._ended()
            return
        self._loop = loop
        task = loop.create_task(coro)
        self._task = task
        task.add_done_callback(self._finished)
        if self._cancelled:  # cancel() ran between the check and the task's creation
            self._owner.cancel_once(task)

    def _finished(self, task: asyncio.Task[Any]) -> None:
        self._ended()
        if task.cancelled():
            return
        error = task.exception()
        if error is not None:
            log.error("loop_call_failed", error=repr(error))
        elif self._on_result is not None:
            try:
                self._on_result(task.result())
            except Exception:
                log.exception("loop_call_result_failed")
        self._on_result = None

    def _discard(self) -> None:
        """The loop closed before the call started."""
        coro, self._coro = self._coro, None
        if coro is not None:
            coro.close()
            self._ended()

    def _ended(self) -> None:
        """Tell ``on_end``, once, that the call is over (run, cancelled or dropped)."""
        on_end, self._on_end = self._on_end, None
        if on_end is not None:
            try:
                on_end()
            except Exception:
                log.exception("loop_call_end_failed")


class EventLoop:
    """``start(coro)`` from any thread; ``close()`` cancels what is still running."""

    def __init__(self, name: str = "foldloop-loop") -> None:
        self._name = name
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._closed = False
        self._stopped = False  # set on the loop as close stops it: its thread then ends
        self._inbox: list[LoopCall] = []  # calls handed over, not yet started on the loop
        self._abandoned: set[asyncio.Task[Any]] = set()  # (loop only) see ``abandon``
        self._cancelled: weakref.WeakSet[asyncio.Task[Any]] = weakref.WeakSet()  # (loop only)

    def start(
        self,
        coro: Coroutine[Any, Any, T],
        on_result: Callable[[T], object] | None = None,
        *,
        on_end: Callable[[], object] | None = None,
    ) -> LoopCall:
        """Start ``coro`` on the loop; ``on_result`` gets what it returns, on the loop's
        thread (not if it is cancelled or raises: that is logged); ``on_end`` is told once
        the call is over whichever way, its coroutine run or not (not when this raises: the
        loop is closed). Calls handed over together wake the loop once."""
        call = LoopCall(coro, on_result, self, on_end)
        with self._lock:
            if self._closed:
                coro.close()
                raise RuntimeError("the runtime's event loop is closed")
            loop = self._loop or self._open()
            self._inbox.append(call)
            if len(self._inbox) == 1:  # else the loop is woken already and takes this one too
                loop.call_soon_threadsafe(self._begin_all, loop)
        return call

    def _open(self) -> asyncio.AbstractEventLoop:
        """(Lock held.) The loop and its thread, on first use."""
        loop = self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=_serve, args=(loop, lambda: self._stopped), name=self._name, daemon=True
        )
        self._thread.start()
        asyncio.run_coroutine_threadsafe(_watch_lateness(), loop)
        return loop

    def _begin_all(self, loop: asyncio.AbstractEventLoop) -> None:
        with self._lock:
            calls, self._inbox = self._inbox, []
            closed = self._closed
        for call in calls:
            if closed:  # after close took its tasks to cancel: it would miss these
                call._discard()
            else:
                call._begin(loop)

    def cancel_once(self, task: asyncio.Task[Any]) -> None:
        """(On the loop.) Cancel ``task`` unless it was cancelled here before: what it does
        in ``finally`` then (closing a stream) is not cut short by a second cancel."""
        if task not in self._cancelled and not task.done():
            self._cancelled.add(task)
            task.cancel()

    def cancelled_here(self, task: asyncio.Task[Any]) -> bool:
        """(On the loop.) Whether foldloop cancelled ``task`` (its run's cancel, a timeout, a
        close), not the code it runs (``task.cancelling()`` counts either)."""
        return task in self._cancelled

    def abandon(self, task: asyncio.Task[Any]) -> None:
        """(On the loop.) Give ``task`` up (past its timeout, its outcome reported): it is
        cancelled, and a close does not wait for it."""
        self._abandoned.add(task)
        task.add_done_callback(self._abandoned.discard)
        self.cancel_once(task)

    def close(
        self,
        timeout: float = LOOP_CLOSE_S,
        *,
        then: Iterable[Callable[[], Awaitable[object]]] = (),
    ) -> None:
        """Cancel the tasks still running, stop the loop and wait for its thread, ``timeout``
        seconds at most for the cancelled tasks (kept within ``CLOSE_AT_LEAST_S`` and
        ``LOOP_CLOSE_S``). ``then``: clean-ups awaited once nothing runs (a model's ``aclose``
        of its connections), each given as long, but ``CLEANUP_AT_LEAST_S`` at least (one cut
        short is logged), its failure ignored. A task still running ``timeout / 2`` s later
        is cancelled once more; one still running ``timeout`` s later (or at once, one
        ``abandon``ed) is left running on the loop's thread, which ends once it does: nothing
        can stop a task that ignores its cancels."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return

        cleanups = list(then)
        timeout = min(LOOP_CLOSE_S, max(CLOSE_AT_LEAST_S, timeout))
        within = max(CLEANUP_AT_LEAST_S, timeout)
        stopped = threading.Event()

        async def stop() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                self.cancel_once(task)
            waited = [t for t in tasks if t not in self._abandoned]
            if waited:
                await asyncio.wait(waited, timeout=timeout / 2)
            # Still running: a clean-up that long, or a call that swallowed its cancel (its
            # run's, or this one): cancelled once more, and waited for the other half.
            for task in tasks:
                if not task.done():
                    task.cancel()
            if left := [t for t in waited if not t.done()]:
                await asyncio.wait(left, timeout=timeout / 2)
            for cleanup in cleanups:
                try:
                    await asyncio.wait_for(cleanup(), within)
                except TimeoutError:
                    log.warning("model_aclose_unfinished", within_s=within, cleanup=repr(cleanup))
                except Exception:  # a model's own clean-up failing stops nothing else
                    log.debug("model_aclose_failed", exc_info=True)
            self._stop_when_done([t for t in tasks if not t.done()], loop)
            stopped.set()

        asyncio.run_coroutine_threadsafe(stop(), loop)
        if stopped.wait(timeout + within * len(cleanups) + CLOSE_SLACK_S) and self._stopped:
            thread.join(CLOSE_SLACK_S)
        with self._lock:
            unstarted, self._inbox = self._inbox, []
        for call in unstarted:
            call._discard()
        if not thread.is_alive():
            loop.close()

    def _stop_when_done(
        self, left: list[asyncio.Task[Any]], loop: asyncio.AbstractEventLoop
    ) -> None:
        """(On the loop, closing.) Stop the loop now, or once the tasks ``left`` (which
        ignored their cancel) end."""

        def stop() -> None:
            self._stopped = True
            loop.stop()

        if not left:
            stop()
            return
        log.warning(
            "loop_tasks_ignore_cancel",
            tasks=len(left),
            advice="an async tool or acomplete caught its CancelledError and went on: "
            "re-raise it; the runtime's loop thread is left running until they end",
        )
        running = set(left)

        def gone(task: asyncio.Task[Any]) -> None:
            running.discard(task)
            if not running:
                stop()

        for task in left:
            task.add_done_callback(gone)


async def _watch_lateness(period: float = 0.25) -> None:
    """Warn when the loop runs a ``period`` s timer ``LATE_S`` late or more."""
    loop = asyncio.get_running_loop()
    said = -LATE_REPEAT_S
    while True:
        before = loop.time()
        await asyncio.sleep(period)
        late = loop.time() - before - period
        if late >= LATE_S and loop.time() - said >= LATE_REPEAT_S:
            said = loop.time()
            log.warning(
                "event_loop_blocked",
                late_s=round(late, 2),
                advice="an acomplete or async tool blocked the runtime's event loop (time.sleep "
                "or sync I/O there): await instead, or give a sync complete / def tool",
            )


def _serve(loop: asyncio.AbstractEventLoop, stopped: Callable[[], bool]) -> None:
    mark_own_thread()
    while True:
        try:
            loop.run_forever()
        except BaseException as exc:  # asyncio lets SystemExit / KeyboardInterrupt out
            if not stopped():
                log.error("event_loop_callback_raised", error=repr(exc))
                continue
        # closed here: after a close that left a task ignoring its cancel, nobody else would
        loop.close()
        return
