"""The unindexed tail: where the records past the index's high-water mark sit.

The per-run index is written only every ``INDEX_EVERY`` records (``lmdb_store``); the
records after its mark are found by scanning the log. A process that writes keeps what it
scanned and what it appended here, so its write path knows every run's head without a
scan, and its reads of a run look at that run's values only. Its reads keep a second one
(``LogReader``) for the records other processes wrote since its write path last looked.

One owner changes a cache, one change at a time (the write path inside its write
transactions; the reads under their lock); readers on any thread take ``view()``, a tuple
replaced whole after every change, so one attribute read is a consistent view (its entries
list is only ever appended to until it is replaced).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from foldloop.store._framing import Head, chain_hash
from foldloop.store._layout import TailEntry

__all__ = ["KEPT_HEADS", "Scanned", "TailCache", "TailView"]

Scanned = tuple[int, bytes, str, int, int]
"""(position, value, run_id, first seq, count) of a stored value found by a scan."""
KEPT_HEADS = 65_536
"""Heads kept over an index write at most (a fleet's active runs; a few MiB)."""
TailView = tuple[int, list[TailEntry], int]
"""(index mark the entries follow, the entries, the last position they cover)."""


class TailCache:
    """A record of the tail (the write path's, or the reads'), and the view readers use."""

    def __init__(self) -> None:
        self._base = -1
        self._scanned = 0
        self._entries: list[TailEntry] = []
        self._heads: dict[str, Head] = {}
        self._view: TailView = (-1, self._entries, 0)

    def view(self) -> TailView:
        """What readers use: a consistent view (any thread)."""
        return self._view

    def __len__(self) -> int:
        """Records in the tail as the write path knows it."""
        return len(self._entries)

    def entries(self) -> Sequence[TailEntry]:
        """The tail's records in log order (write path only)."""
        return self._entries

    def head(self, run_id: str) -> Head | None:
        """The run's head if its last records are in the tail, or were when this process
        last indexed it (write path only)."""
        return self._heads.get(run_id)

    def sync(self, indexed: int, scan: Callable[[int], Iterable[Scanned]]) -> None:
        """Catch up with what is committed: ``indexed`` is the index's mark now, and
        ``scan(after)`` the stored values past a position (its owner only)."""
        if indexed != self._base:
            self.restart(indexed)
        for position, value, run_id, seq, count in scan(self._scanned):
            chain = chain_hash(value)
            for i in range(count):
                self._entries.append((run_id, seq + i, position + i, chain))
            self._heads[run_id] = Head(seq + count - 1, chain)
            self._scanned = position + count - 1
        self._publish()

    def restart(self, indexed: int, heads: dict[str, Head] | None = None) -> None:
        """Empty the tail: everything up to ``indexed`` is in the index now. ``heads``: the
        heads of the runs this process's own commit moved, which indexed the whole tail
        this cache knew: every head known stays true and is kept (up to KEPT_HEADS), so
        a run's next append does not look its head up in the index."""
        self._base = self._scanned = indexed
        self._entries = []
        if heads is None or len(self._heads) + len(heads) > KEPT_HEADS:
            self._heads = {}
        self._heads.update(heads or {})
        self._publish()

    def extend(self, new: Iterable[TailEntry], heads: dict[str, Head], last: int) -> None:
        """Add records this process committed, up to position ``last``, and the heads of
        the runs they belong to."""
        self._entries.extend(new)
        self._heads.update(heads)
        self._scanned = last
        self._publish()

    def _publish(self) -> None:
        self._view = (self._base, self._entries, self._scanned)
