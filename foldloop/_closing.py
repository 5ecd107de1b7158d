"""``with thing:`` closes it: one definition for the objects that own threads or processes."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from types import FrameType, TracebackType
from typing import Self

__all__ = ["ClosedOnExit", "close_through_ctrl_c"]


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

    Only on the main thread while Python's own SIGINT handler is installed (the rule
    asyncio.Runner follows), so a host's handler is never replaced; a second Ctrl-C
    interrupts at once, for a close that cannot finish.
    """
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    ):
        close()
        return
    pressed: list[int] = []

    def hold(signum: int, frame: FrameType | None) -> None:
        if pressed:
            raise KeyboardInterrupt
        pressed.append(signum)

    signal.signal(signal.SIGINT, hold)
    try:
        close()
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if pressed:
        raise KeyboardInterrupt
