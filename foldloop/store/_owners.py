"""Owner liveness through flock: a runtime that dies, even by SIGKILL, frees its runs at once.

Each runtime holds an exclusive flock on ``owners/<owner_id>.lock`` for its lifetime. The
kernel drops the lock when the process dies, so "is this owner alive?" is a non-blocking
flock attempt on its file. Local filesystems only (LMDB needs one anyway).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from foldloop.errors import StoreAccessError

__all__ = ["OwnerLock", "owner_alive"]


class OwnerLock:
    """The lock file a live runtime holds."""

    def __init__(self, directory: Path, owner_id: str) -> None:
        self.owner_id = owner_id
        self.path = directory / f"{owner_id}.lock"
        self._fd = -1
        # Lock under a temporary name, then rename into place: nobody can ever see the
        # owner's file unlocked while the owner lives (and so mistake it for dead).
        tmp = directory / f"{owner_id}.lock.tmp"
        try:
            directory.mkdir(mode=0o700, exist_ok=True)
            self._fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.write(self._fd, f"{os.getpid()}\n".encode())
            os.replace(tmp, self.path)
        except OSError as exc:  # a full disk, most likely: the host gets a StoreAccessError
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            raise StoreAccessError(
                f"cannot write this runtime's owner lock {str(self.path)!r} ({exc}); "
                "is the disk full, or the store directory not writable? Free space (or "
                "fix its permissions), then open the store again"
            ) from None

    def release(self) -> None:
        """Give the lock up (the runtime closed cleanly)."""
        if self._fd >= 0:
            try:
                self.path.unlink(missing_ok=True)
            finally:
                os.close(self._fd)
                self._fd = -1


def owner_alive(directory: Path, owner_id: str) -> bool:
    """True if a live process holds ``owner_id``'s lock."""
    if not owner_id:
        return False
    path = directory / f"{owner_id}.lock"
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        path.unlink(missing_ok=True)
        return False
    finally:
        os.close(fd)
