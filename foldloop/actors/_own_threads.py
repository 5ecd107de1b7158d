"""Which threads are a runtime's own (its shards, pools and event loop): host code the
runtime calls (a tool, a callback) runs on them, and a ``close()`` called from there must
not wait for the runtime to finish what that very thread is doing."""

from __future__ import annotations

import threading

__all__ = ["mark_own_thread", "on_own_thread"]

_marks = threading.local()


def mark_own_thread() -> None:
    """The calling thread is one of a runtime's own."""
    _marks.own = True


def on_own_thread() -> bool:
    """True on a thread a runtime started for its work."""
    return bool(getattr(_marks, "own", False))
