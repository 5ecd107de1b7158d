"""How long a caller will wait for a store's answer: a deadline its reads honour.

A store on a server rides out an outage by asking again for a while (30 s on JetStream);
a caller with a deadline of its own (``wait(timeout=5)``, a spawn's check after its write
failed) must not wait past it for a read. ``answer_by`` sets the deadline for the reads
the current thread makes inside the block; a store whose reads can wait on something
remote reads it with ``read_timeout``. An embedded store answers at once and ignores it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

__all__ = ["LAST_LOOK_S", "answer_by", "read_timeout"]

LAST_LOOK_S = 1.0
"""What a read made at or past the deadline still gets: a wait's last look at its run
(milliseconds on a server that answers)."""

_deadline: ContextVar[float | None] = ContextVar("foldloop_answer_by", default=None)


@contextmanager
def answer_by(deadline: float | None) -> Iterator[None]:
    """Reads made in this block give up at ``deadline`` (``time.monotonic()``; None: no
    deadline of the caller's), or the earlier deadline of an enclosing block."""
    outer = _deadline.get()
    if outer is not None and (deadline is None or outer < deadline):
        deadline = outer
    token = _deadline.set(deadline)
    try:
        yield
    finally:
        _deadline.reset(token)


def read_timeout(longest: float) -> float:
    """Seconds a read may wait for its answer now: ``longest``, or what is left before the
    caller's deadline (at least LAST_LOOK_S)."""
    deadline = _deadline.get()
    if deadline is None:
        return longest
    return min(longest, max(LAST_LOOK_S, deadline - time.monotonic()))
