"""Closed means closed: one check in front of every public member of what host code holds.

``Runtime`` and ``RunHandle`` derive from ``OpenOnly``: each public function and property
a subclass defines in its own body is wrapped, as the class is created, so it first asks
``_check_open`` (not static or class methods, cached properties, mixins' members or instance
attributes). tests/test_runtime_closed.py calls every public name after close.
"""

from __future__ import annotations

import functools
import inspect
import threading
import time
from collections.abc import Callable
from typing import Any, ClassVar

from foldloop.actors._own_threads import calling, closed_says_so
from foldloop.errors import ConfigError

__all__ = ["CLOSED", "Lifecycle", "OpenOnly"]

CLOSED = "this runtime is closed"
REOPEN = "open a new one with fl.Runtime.open()"


class Lifecycle:
    """Whether a runtime is open; shared by the runtime, its parts and its handles."""

    def __init__(self) -> None:
        self._closed = False
        self._lock = threading.Lock()
        self._released = threading.Event()
        self._release_by = 0.0  # time.monotonic() by which the first close will have let go

    @property
    def closed(self) -> bool:
        """True once ``close`` was called."""
        return self._closed

    def close(self, release_by: float = 0.0, *, blocking: bool = True) -> bool:
        """Mark it closed; True only the first time (the caller then releases what it holds,
        by ``release_by``, a ``time.monotonic()``). Not ``blocking``, False at once while
        another close holds the mark (a signal handler's, over the close it interrupted)."""
        if blocking:
            with self._lock:  # two racing closes: one releases
                return self._mark(release_by)
        if not self._lock.acquire(blocking=False):
            return False
        try:
            return self._mark(release_by)
        finally:
            self._lock.release()

    def _mark(self, release_by: float) -> bool:
        if self._closed:
            return False
        self._closed = True
        self._release_by = release_by
        return True

    def mark_released(self) -> None:
        """The first ``close`` let go of everything."""
        self._released.set()

    def wait_released(self) -> bool:
        """For a later ``close``: wait until the first one has let go of everything (no
        longer than it said it would take)."""
        return self._released.wait(max(0.0, self._release_by - time.monotonic()))

    def check(self) -> None:
        """Raise ConfigError if it is closed."""
        if self._closed:
            raise ConfigError(CLOSED, advice=REOPEN)


class OpenOnly:
    """Base whose subclasses' public methods and properties call ``_check_open`` first;
    those named in ``_usable_when_closed`` are left alone."""

    _usable_when_closed: ClassVar[frozenset[str]] = frozenset()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for name, member in list(vars(cls).items()):
            if name.startswith("_") or name in cls._usable_when_closed:
                continue
            if isinstance(member, property) and member.fget is not None:
                guarded = property(_checked(member.fget), member.fset, member.fdel, member.__doc__)
                setattr(cls, name, guarded)
            elif inspect.isfunction(member):  # not classmethods: they need no open instance
                setattr(cls, name, _checked(member))

    def _check_open(self) -> None:
        raise NotImplementedError

    @property
    def _call_key(self) -> object:
        """What names the runtime a call goes into (``own_threads.calling``): its store."""
        raise NotImplementedError


def _checked(method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    def checked(self: OpenOnly, *args: Any, **kwargs: Any) -> Any:
        self._check_open()
        # a close that cuts the call short is the closed runtime's error, not the store's
        with calling(self._call_key), closed_says_so(self._check_open):
            return method(self, *args, **kwargs)

    return checked
