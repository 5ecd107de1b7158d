"""The JetStream store's threads: an asyncio loop that talks to NATS, and a notifier.

The store port is synchronous (actors and the runtime block on ``Pending.wait``), nats-py
is asyncio: every operation is a coroutine run on the store's own loop thread. Callbacks
and commit listeners run on a third thread in order, never on the loop, so one that
calls back into the store cannot deadlock it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import queue
import threading
from collections.abc import Callable, Coroutine
from typing import Any, Generic, TypeVar

from foldloop._log import get_logger
from foldloop.errors import StoreError

__all__ = ["LoopThread", "NatsPending"]

T = TypeVar("T")
log = get_logger("foldloop.store")

_STOP = object()


class NatsPending(Generic[T]):
    """A write in flight on the loop (``Pending``): resolved by NATS's acknowledgement."""

    __slots__ = ("_future",)

    def __init__(self, future: concurrent.futures.Future[T]) -> None:
        self._future = future

    @property
    def done(self) -> bool:
        """True once the write is acknowledged or refused."""
        return self._future.done()

    @property
    def error(self) -> BaseException | None:
        """Why the write was refused (None while pending or once acknowledged)."""
        if not self._future.done():
            return None
        if self._future.cancelled():
            return StoreError("the store closed before this write was acknowledged")
        return self._future.exception()

    def wait(self, timeout: float | None = None) -> T:
        """The write's result once acknowledged; raises its error if it was refused."""
        try:
            return self._future.result(timeout)
        except concurrent.futures.TimeoutError:
            raise StoreError(f"the NATS server did not answer within {timeout} s") from None
        except concurrent.futures.CancelledError:
            raise StoreError("the store closed before this write was acknowledged") from None


class LoopThread:
    """An event loop on its own thread, plus the notifier thread (see module doc)."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=f"{name}-loop", daemon=True)
        self._notices: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._inflight: set[concurrent.futures.Future[Any]] = set()
        self._open = True
        self._opened = threading.Lock()
        self._notifier = threading.Thread(
            target=self._notify_loop, name=f"{name}-notify", daemon=True
        )
        self._thread.start()
        self._notifier.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()
        # The loop stopped with work queued: tasks handed over just before (cancelled, so
        # no coroutine is left never awaited) and the callbacks that tell their callers'
        # futures how tasks ended; one more turn runs them.
        left = asyncio.all_tasks(self.loop)
        for task in left:
            task.cancel()
        self.loop.run_until_complete(asyncio.gather(*left, return_exceptions=True))
        self.loop.run_until_complete(asyncio.sleep(0))

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Run ``coro`` on the loop; its future (StoreError once the loop is stopping: a
        coroutine handed to a stopped loop would never run)."""
        with self._opened:  # handed over before the loop's stop is, or refused
            if self._open:
                return asyncio.run_coroutine_threadsafe(coro, self.loop)
        coro.close()
        raise StoreError("the store is closed")

    def call(self, coro: Coroutine[Any, Any, T], timeout: float, *, read: bool = False) -> T:
        """Run ``coro`` on the loop and wait for its result; a ``read`` not answered in
        time is cancelled (nothing to leave landing behind the caller's back)."""
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("a JetStream store call was made on the store's own loop")
        future = self.submit(coro)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            if read:
                future.cancel()
            raise StoreError(
                f"the NATS server did not answer within {timeout:.3g} s; is it reachable?"
            ) from None
        except concurrent.futures.CancelledError:  # the store's close cancels calls in flight
            raise StoreError("the store closed before the NATS server answered") from None

    def pending(
        self,
        coro: Coroutine[Any, Any, T],
        callback: Callable[[NatsPending[T]], None] | None = None,
    ) -> NatsPending[T]:
        """Run ``coro`` on the loop as a write; ``callback`` hears of its end (notifier)."""
        future = self.submit(coro)
        self._inflight.add(future)
        future.add_done_callback(self._inflight.discard)
        op = NatsPending(future)
        if callback is not None:
            op._future.add_done_callback(lambda _f: self.notify(callback, op))
        return op

    def notify(self, fn: Callable[..., Any], *args: Any) -> None:
        """Call ``fn(*args)`` on the notifier thread, after every notice queued before it."""
        self._notices.put((fn, args))

    def _notify_loop(self) -> None:
        while True:
            item = self._notices.get()
            if item is _STOP:
                return
            fn, args = item
            try:
                fn(*args)
            except Exception:
                log.exception("store_notice_failed")

    def settle(self, timeout: float) -> bool:
        """Wait for the writes in flight to end; False if some had not within ``timeout``."""
        _, left = concurrent.futures.wait(list(self._inflight), timeout)
        return not left

    def close(
        self,
        finish: Coroutine[Any, Any, None],
        timeout: float = 10.0,
        settle_s: float | None = None,
    ) -> None:
        """Let the writes in flight end (``settle_s``, else ``timeout``), run ``finish``
        (closing the connection), then stop both threads."""
        self.settle(timeout if settle_s is None else settle_s)
        try:
            self.call(finish, timeout * 2)
        finally:
            with self._opened:
                self._open = False
                self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout)
            self._notices.put(_STOP)
            if threading.current_thread() is not self._notifier:
                self._notifier.join(timeout)
            if not self._thread.is_alive():
                self.loop.close()
