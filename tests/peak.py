"""A counter of how many threads are inside a block at once (concurrency-bound tests)."""

from __future__ import annotations

import threading
from typing import Any


class Peak:
    """``with peak:`` around the bounded work; ``most`` is the most threads ever inside."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.inside = 0
        self.most = 0

    def __enter__(self) -> Peak:
        with self._lock:
            self.inside += 1
            self.most = max(self.most, self.inside)
        return self

    def __exit__(self, *exc: Any) -> None:
        with self._lock:
            self.inside -= 1
