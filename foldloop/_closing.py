"""``with thing:`` closes it: one definition for the objects that own threads or processes."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from types import FrameType, TracebackType
from typing import Self

__all__ = ["ClosedOnExit", "close_through_ctrl_c", "ctrl_c_came", "noting_int_handler"]

_came = threading.Event()


def noting_int_handler(signum: int, frame: FrameType | None) -> None:
    """A SIGINT handler (the CLI's): KeyboardInterrupt, as Python's own, and noted
    (``ctrl_c_came``): Python drops one raised in a ``__del__`` or a weakref callback."""
    _came.set()
    raise KeyboardInterrupt


def ctrl_c_came() -> bool:
    """A Ctrl-C came while ``noting_int_handler`` (or a close's hold) was installed."""
    return _came.is_set()


_RAISING = (signal.default_int_handler, noting_int_handler)


class ClosedOnExit:
    """A context manager whose exit calls ``close()`` (which subclasses define)."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        close_through_ctrl_c(self.close)


def close_through_ctrl_c(close: Callable[[], None]) -> None:
    """Run ``close`` to its end even if Ctrl-C is pressed meanwhile, then raise the
    KeyboardInterrupt: a close cut short leaves threads behind that keep the process alive.

    Only on the main thread while Python's own SIGINT handler (or ``noting_int_handler``)
    is installed (the rule asyncio.Runner follows), so a host's handler is never replaced;
    a second Ctrl-C interrupts at once, for a close that cannot finish (under
    ``noting_int_handler``, the first one during the close is the second if one came
    before it, as when a Ctrl-C is what led to the close).
    """
    installed = signal.getsignal(signal.SIGINT)
    if threading.current_thread() is not threading.main_thread() or installed not in _RAISING:
        close()
        return
    pressed: list[int] = []
    noting = installed is noting_int_handler

    def hold(signum: int, frame: FrameType | None) -> None:
        if pressed or (noting and _came.is_set()):
            raise KeyboardInterrupt
        pressed.append(signum)
        if noting:
            _came.set()

    signal.signal(signal.SIGINT, hold)
    try:
        close()
    finally:
        signal.signal(signal.SIGINT, installed)
    if pressed:
        raise KeyboardInterrupt
