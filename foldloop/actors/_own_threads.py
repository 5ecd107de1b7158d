"""Which threads are a runtime's own (its shards, pools and event loop): host code the
runtime calls (a tool, a callback) runs on them, and a ``close()`` called from there must
not wait for the runtime to finish what that very thread is doing. And whether a pool
thread is handing its job's outcome on (``outcome_in_hand``): then it may go on with the
step that outcome starts. And whether a thread is inside a call into a runtime
(``calling``): a signal handler's ``close()`` there must not wait for what it interrupted."""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Callable, Iterator
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
R = TypeVar("R")

__all__ = [
    "a_call",
    "calling",
    "holding_outcome",
    "inside_a_call",
    "mark_own_thread",
    "on_own_thread",
    "outcome_in_hand",
]

_marks = threading.local()


def mark_own_thread() -> None:
    """The calling thread is one of a runtime's own."""
    _marks.own = True


def on_own_thread() -> bool:
    """True on a thread a runtime started for its work."""
    return bool(getattr(_marks, "own", False))


@contextlib.contextmanager
def outcome_in_hand() -> Iterator[None]:
    """The calling pool thread's job is done but for handing its outcome on (a tool's, a
    model's reply): meanwhile it may handle the message it posts itself (``Shard.post``) and
    takes the job that step submits to its pool next (``Workers.submit``)."""
    _marks.outcome = True
    try:
        yield
    finally:
        _marks.outcome = False


def holding_outcome() -> bool:
    """True inside ``outcome_in_hand``."""
    return bool(getattr(_marks, "outcome", False))


def inside_a_call() -> bool:
    """True while this thread is inside a call into a runtime (``calling``): a signal handler
    that runs now interrupted it, perhaps holding any of the runtime's locks."""
    return getattr(_marks, "calls", 0) > 0


@contextlib.contextmanager
def calling() -> Iterator[None]:
    """This thread is inside a call into a runtime for the block's length."""
    _marks.calls = getattr(_marks, "calls", 0) + 1
    try:
        yield
    finally:
        _marks.calls -= 1


def a_call(method: Callable[P, R]) -> Callable[P, R]:
    """Decorator: ``method`` runs inside ``calling``."""

    @functools.wraps(method)
    def marked(*args: P.args, **kwargs: P.kwargs) -> R:
        with calling():
            return method(*args, **kwargs)

    return marked
