"""Which threads are a runtime's own (its shards, pools and event loop): host code the
runtime calls (a tool, a callback) runs on them, and a ``close()`` called from there must
not wait for the runtime to finish what that very thread is doing. And whether a pool
thread is handing its job's outcome on (``outcome_in_hand``): then it may go on with the
step that outcome starts. And whether a thread is inside a call into a runtime
(``calling``): a signal handler's ``close()`` there must not wait for what it interrupted,
and a read its close cut short says the runtime closed (``closed_says_so``)."""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Callable, Iterator
from typing import Concatenate, ParamSpec, Protocol, TypeVar

from foldloop.errors import StoreError

P = ParamSpec("P")
R = TypeVar("R")

__all__ = [
    "a_call",
    "calling",
    "calls_into",
    "closed_says_so",
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


def calls_into(store: object) -> int:
    """How many calls into the runtime on ``store`` this thread is inside (``calling``): two
    or more when a signal handler's call interrupted another, perhaps holding its locks."""
    calls: dict[int, int] | None = getattr(_marks, "calls", None)
    return 0 if calls is None else calls.get(id(store), 0)


def inside_a_call(store: object) -> bool:
    """True while this thread is inside a call into the runtime on ``store`` (``calling``):
    a signal handler that runs now interrupted it, perhaps holding any of its locks."""
    return calls_into(store) > 0


@contextlib.contextmanager
def calling(store: object) -> Iterator[None]:
    """This thread is inside a call into the runtime on ``store`` for the block's length
    (the store names the runtime: its handles, queries and projections all hold it)."""
    calls: dict[int, int] | None = getattr(_marks, "calls", None)
    if calls is None:
        calls = _marks.calls = {}
    key = id(store)
    calls[key] = calls.get(key, 0) + 1
    try:
        yield
    finally:
        if calls[key] == 1:
            del calls[key]
        else:
            calls[key] -= 1


@contextlib.contextmanager
def closed_says_so(check_open: Callable[[], None]) -> Iterator[None]:
    """A store read in a call into a runtime that its close cut short (or that came after
    it) raises what any call on the closed runtime raises (``check_open``'s), not the
    store's own error."""
    try:
        yield
    except StoreError:
        check_open()  # raises once the runtime is closed
        raise


class _OnAStore(Protocol):
    @property
    def _call_key(self) -> object: ...


S = TypeVar("S", bound=_OnAStore)


def a_call(method: Callable[Concatenate[S, P], R]) -> Callable[Concatenate[S, P], R]:
    """Decorator: the method runs inside ``calling(self._call_key)``."""

    @functools.wraps(method)
    def marked(self: S, /, *args: P.args, **kwargs: P.kwargs) -> R:
        with calling(self._call_key):
            return method(self, *args, **kwargs)

    return marked
