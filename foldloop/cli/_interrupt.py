"""Ctrl-C for the CLI. Python drops an exception raised in a ``__del__`` or a weakref
callback, a KeyboardInterrupt included: the SIGINT handler notes each Ctrl-C
(``noting_int_handler``), and the command's long waits look for one between slices."""

from __future__ import annotations

import threading
import time

from foldloop._closing import ctrl_c_came
from foldloop.runtime._results import RunHandle, RunResult

__all__ = ["pause", "raise_if_interrupted", "waited"]

SLICE_S = 0.5
"""How long a wait goes before it looks for a Ctrl-C that was dropped."""


def raise_if_interrupted() -> None:
    """KeyboardInterrupt if a Ctrl-C came (its own may have been dropped)."""
    if ctrl_c_came():
        raise KeyboardInterrupt


def waited(handle: RunHandle, timeout: float | None = None) -> RunResult:
    """``handle.wait(timeout)``, whole, on a thread of its own; this thread looks for a
    dropped Ctrl-C every ``SLICE_S`` meanwhile (the wait is left to the runtime's close)."""
    outcome: list[RunResult | BaseException] = []
    done = threading.Event()

    def wait() -> None:
        try:
            outcome.append(handle.wait(timeout))
        except BaseException as exc:  # handed to the caller's thread
            outcome.append(exc)
        finally:
            done.set()

    threading.Thread(target=wait, name="foldloop-cli-wait", daemon=True).start()
    while not done.wait(SLICE_S):
        raise_if_interrupted()
    result = outcome[0]
    if isinstance(result, BaseException):
        raise result
    return result


def pause(seconds: float) -> None:
    """``time.sleep``, then ``raise_if_interrupted``."""
    time.sleep(seconds)
    raise_if_interrupted()
