"""The runtime's asyncio event loop, on a thread of its own, started on first use.

Async model calls (``acomplete``) and ``async def`` tools are awaited here: thousands of
calls in flight hold no thread each. One of them that blocks (``time.sleep``, sync I/O)
holds up every other and their timeouts: a watcher logs it when the loop runs late.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from typing import Any, TypeVar

from foldloop._log import get_logger

__all__ = ["LATE_S", "EventLoop"]

T = TypeVar("T")

log = get_logger(__name__)

LATE_S = 2.0
"""How late the loop may run a timer before the watcher says something blocks it."""
LATE_REPEAT_S = 60.0
"""Once said, not again for this long (a loop that stays blocked is one problem)."""


class EventLoop:
    """``run(coro)`` from any thread; ``close()`` cancels what is still running."""

    def __init__(self, name: str = "foldloop-loop") -> None:
        self._name = name
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._closed = False

    def run(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Schedule ``coro`` on the loop; its future resolves on the loop's thread."""
        with self._lock:
            if self._closed:
                coro.close()
                raise RuntimeError("the runtime's event loop is closed")
            if self._loop is None:
                self._loop = asyncio.new_event_loop()
                self._thread = threading.Thread(
                    target=self._loop.run_forever, name=self._name, daemon=True
                )
                self._thread.start()
                asyncio.run_coroutine_threadsafe(_watch_lateness(), self._loop)
            return asyncio.run_coroutine_threadsafe(coro, self._loop)

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
