"""The runtime's asyncio event loop, on a thread of its own, started on first use.

Async model calls (``acomplete``) and ``async def`` tools are awaited here: thousands of
calls in flight hold no thread each. One of them that blocks (``time.sleep``, sync I/O)
holds up every other and their timeouts: a watcher logs it when the loop runs late.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from typing import Any, TypeVar

from foldloop._log import get_logger
from foldloop.actors._own_threads import mark_own_thread

__all__ = ["LATE_S", "EventLoop", "LoopCall"]

T = TypeVar("T")

log = get_logger(__name__)

LATE_S = 2.0
"""How late the loop may run a timer before the watcher says something blocks it."""
LATE_REPEAT_S = 60.0
"""Once said, not again for this long (a loop that stays blocked is one problem)."""


class LoopCall:
    """One coroutine handed to the loop; ``cancel`` and ``done`` from any thread."""

    __slots__ = ("_cancelled", "_coro", "_loop", "_on_result", "_task")

    def __init__(
        self, coro: Coroutine[Any, Any, T], on_result: Callable[[T], object] | None
    ) -> None:
        self._coro: Coroutine[Any, Any, Any] | None = coro
        self._on_result: Callable[[Any], object] | None = on_result
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[Any] | None = None
        self._cancelled = False

    def cancel(self) -> bool:
        """Cancel the call: before it starts, it never does; running, its task is cancelled."""
        self._cancelled = True
        task, loop = self._task, self._loop
        if task is not None and loop is not None and not task.done():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(task.cancel)
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
            return
        self._loop = loop
        task = loop.create_task(coro)
        self._task = task
        task.add_done_callback(self._finished)
        if self._cancelled:  # cancel() ran between the check and the task's creation
            task.cancel()

    def _finished(self, task: asyncio.Task[Any]) -> None:
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


class EventLoop:
    """``start(coro)`` from any thread; ``close()`` cancels what is still running."""

    def __init__(self, name: str = "foldloop-loop") -> None:
        self._name = name
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._closed = False
        self._inbox: list[LoopCall] = []  # calls handed over, not yet started on the loop

    def start(
        self, coro: Coroutine[Any, Any, T], on_result: Callable[[T], object] | None = None
    ) -> LoopCall:
        """Start ``coro`` on the loop; ``on_result`` gets what it returns, on the loop's
        thread (not if it is cancelled or raises: that is logged). Calls handed over
        together wake the loop once."""
        call = LoopCall(coro, on_result)
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
        self._thread = threading.Thread(target=_serve, args=(loop,), name=self._name, daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(_watch_lateness(), loop)
        return loop

    def _begin_all(self, loop: asyncio.AbstractEventLoop) -> None:
        with self._lock:
            calls, self._inbox = self._inbox, []
        for call in calls:
            call._begin(loop)

    def close(
        self, timeout: float = 5.0, *, then: Iterable[Callable[[], Awaitable[object]]] = ()
    ) -> None:
        """Cancel the tasks still running, stop the loop and wait for its thread. ``then``:
        clean-ups awaited once nothing runs (a model's ``aclose`` of its connections), each
        bounded by ``timeout`` and its failure ignored."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return

        cleanups = list(then)

        async def stop() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for cleanup in cleanups:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(cleanup(), timeout)
            loop.stop()

        asyncio.run_coroutine_threadsafe(stop(), loop)
        thread.join(timeout * (1 + len(cleanups)))
        with self._lock:
            unstarted, self._inbox = self._inbox, []
        for call in unstarted:
            call._discard()
        if not thread.is_alive():
            loop.close()


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


def _serve(loop: asyncio.AbstractEventLoop) -> None:
    mark_own_thread()
    loop.run_forever()
