"""The open LMDB environment of a store, and the lock that lets its map grow.

LMDB forbids resizing the map while this process has a transaction open, so every
transaction holds the shared side of a lock whose exclusive side a resize takes. A full
map is grown (doubled, up to ``MAX_MAP_SIZE``); a map another process grew is adopted.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import lmdb

from foldloop._log import get_logger
from foldloop.errors import StoreError
from foldloop.store._env import UNDECODABLE, lmdb_failure, undecodable

__all__ = ["DEFAULT_MAP_SIZE", "MAX_MAP_SIZE", "MappedEnv", "SharedExclusive"]

log = get_logger(__name__)

T = TypeVar("T")
DEFAULT_MAP_SIZE = 256 << 20
MAX_MAP_SIZE = 1 << 40
READER_SLOT_WAIT_S = 30.0
"""How long a read waits for a free reader slot before the store says every one is taken."""


class SharedExclusive:
    """Readers share, a map resize excludes them.

    Every transaction takes the shared side, so it is two plain lock round trips; the rare
    exclusive side (a map resize) waits on a condition until the readers drain.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._drained = threading.Condition(self._lock)
        self._readers = 0
        self._writer = False

    def acquire_shared(self) -> None:
        with self._lock:
            while self._writer:
                self._drained.wait()
            self._readers += 1

    def release_shared(self) -> None:
        with self._lock:
            self._readers -= 1
            if self._writer and not self._readers:
                self._drained.notify_all()

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._lock:
            while self._writer:
                self._drained.wait()
            self._writer = True
            while self._readers:
                self._drained.wait()
        try:
            yield
        finally:
            with self._lock:
                self._writer = False
                self._drained.notify_all()


class MappedEnv:
    """A store's LMDB environment: transactions under the resize lock, growth, closing."""

    def __init__(self, env: lmdb.Environment, path: Path) -> None:
        self.env = env
        self.path = path
        self._resize = SharedExclusive()
        self._closed = False
        self._full_logged = float("-inf")

    @property
    def map_size(self) -> int:
        """Current LMDB map size in bytes."""
        return int(self.env.info()["map_size"])

    def hold(self) -> None:
        """Keep the map from being resized until ``let_go`` (a write transaction's life)."""
        self._resize.acquire_shared()

    def let_go(self) -> None:
        """Undo one ``hold`` (call it exactly once for each)."""
        self._resize.release_shared()

    def begin(self, *, write: bool = False, parent: Any = None) -> Any:
        """A transaction (a child of ``parent`` when given); the caller holds the map."""
        if parent is not None:
            return self.env.begin(write=True, parent=parent, buffers=False)
        try:
            return self.env.begin(write=write, buffers=False)
        except lmdb.ReadersFullError:
            # Slots of SIGKILLed readers linger until someone checks: clear them, retry once.
            self.env.reader_check()
            return self.env.begin(write=write, buffers=False)

    def read(self, fn: Callable[[Any], T]) -> T:
        """Run ``fn`` inside a short read transaction (a failure to read is a StoreError).

        When every reader slot is taken (thousands of threads reading at once across the
        store's processes; a read holds one only for its transaction) it waits for one, up
        to ``READER_SLOT_WAIT_S``, without the map's lock (a grow, and writes, go on)."""
        pause, deadline = 0.001, 0.0
        while True:
            full = False
            self._resize.acquire_shared()
            try:
                if self._closed:  # a read racing close, or an iterator outliving it
                    raise StoreError(f"the store at {str(self.path)!r} is closed; open it again")
                txn = self.begin()
                try:
                    return fn(txn)
                finally:
                    txn.abort()
            except lmdb.MapResizedError as exc:
                resized: Exception = exc
            except lmdb.ReadersFullError as exc:
                if deadline and time.monotonic() >= deadline:
                    raise lmdb_failure(self.path, "read", exc) from None
                full = True
            except lmdb.Error as exc:
                raise lmdb_failure(self.path, "read", exc) from None
            except UNDECODABLE as exc:
                raise undecodable(self.path, exc) from None
            finally:
                self._resize.release_shared()
            if not full:
                self.grow(resized)
                continue
            if not deadline:
                deadline = time.monotonic() + READER_SLOT_WAIT_S
                self._slots_full()
            time.sleep(pause)
            pause = min(pause * 2, 0.05)

    def _slots_full(self) -> None:
        """Log that reads wait for reader slots, at most once a second (thousands may)."""
        now = time.monotonic()
        if now - self._full_logged >= 1.0:
            self._full_logged = now
            log.info("reader_slots_full", path=str(self.path))

    def grow(self, error: Exception) -> None:
        """After MapFullError, double the map; after MapResizedError, adopt the new size."""
        with self._resize.exclusive():
            if isinstance(error, lmdb.MapResizedError):
                # Another process grew the map: adopt its size (no txn of ours is open).
                self.env.set_mapsize(0)
                return
            size = self.map_size
            if size >= MAX_MAP_SIZE:
                raise StoreError(f"the store reached its map size cap of {MAX_MAP_SIZE:,} bytes")
            self.env.set_mapsize(min(size * 2, MAX_MAP_SIZE))
        log.info("map_grown", path=str(self.path), map_size=min(size * 2, MAX_MAP_SIZE))

    def close(self) -> None:
        """Close the environment once no transaction of this process is open."""
        with self._resize.exclusive():
            self._closed = True
            self.env.close()
