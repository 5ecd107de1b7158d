"""Per-run mailboxes on a shard: each run's messages in order, one of them in hand at a time.

Pure bookkeeping (no threads, no I/O): the shard that owns it is the only caller. A run is
*busy* from the moment a message is handed out until ``done`` says it was handled; a message
that arrives meanwhile waits in the run's queue, however long the one in hand takes (a
durable commit, say). Other runs on the same shard are not held up by it.
"""

from __future__ import annotations

import collections
from typing import Generic, TypeVar

__all__ = ["Mailboxes"]

K = TypeVar("K")
M = TypeVar("M")


class Mailboxes(Generic[K, M]):
    """FIFO queues by key, with at most one message of each key in hand."""

    def __init__(self) -> None:
        self._waiting: dict[K, collections.deque[M]] = {}
        """The busy keys, each with the messages that arrived while one was in hand."""

    def post(self, key: K, message: M) -> M | None:
        """Queue ``message``; returns it to handle now if its key was idle (the key is then
        busy until ``done``), else None: it waits its turn."""
        waiting = self._waiting.get(key)
        if waiting is None:
            self._waiting[key] = collections.deque()
            return message
        waiting.append(message)
        return None

    def done(self, key: K) -> M | None:
        """The message in hand for ``key`` was handled: returns the next one to handle (the
        key stays busy), or None (the key is idle again)."""
        waiting = self._waiting[key]
        if waiting:
            return waiting.popleft()
        del self._waiting[key]
        return None

    def drop(self, key: K) -> list[M]:
        """Forget ``key`` (its run was deactivated); returns the messages it never handled."""
        return list(self._waiting.pop(key, ()))

    def busy(self, key: K) -> bool:
        """True while a message of ``key`` is in hand."""
        return key in self._waiting

    def queued(self, key: K) -> int:
        """Messages of ``key`` waiting behind the one in hand."""
        waiting = self._waiting.get(key)
        return len(waiting) if waiting is not None else 0
