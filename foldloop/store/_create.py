"""Opening a store directory, and creating the store in it first when there is none.

Creation is safe when several processes create one store at once and when a creator is
stopped part way (Ctrl-C, SIGKILL, power loss):

- Creators take turns under an exclusive flock on the directory itself; whoever comes
  second finds the store made and opens it.
- The creator first writes the marker's text under the name ``CREATING``, then makes the
  environment, its databases and ``owners/``, and last renames ``CREATING`` to the marker:
  the store becomes complete in one atomic step, and a marked store is always whole.
- So a directory without the marker holds nothing, or the leftovers of a stopped creation,
  ``CREATING`` among them, which the next creator clears (a creator that sees an exception,
  KeyboardInterrupt included, clears them itself). Files without ``CREATING`` are someone
  else's and are refused, never removed.

Building in place, rather than in a sibling directory renamed over the path, also works
where the parent is not writable or the path is a mount point.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from foldloop.errors import ConfigError, StoreAccessError, StoreError, StoreNotFound
from foldloop.store._env import initialise
from foldloop.store._preflight import (
    MARKER,
    check_access,
    check_local,
    check_store,
    marker_text,
    write_synced,
)

__all__ = ["CREATING", "prepare_dir"]

CREATING = MARKER + ".creating"
_LEFTOVERS = frozenset({CREATING, "data.mdb", "lock.mdb", "owners"})
"""All a stopped creation can leave behind."""


def prepare_dir(path: Path, *, create: bool, map_size: int) -> bool:
    """Check the store directory, creating a store in it if there is none and ``create``.

    Returns True if this call created the store. Raises StoreError naming the path and the
    fix when the path cannot hold a store or the store there cannot be opened.
    """
    check_path(path)
    if path.exists() and not path.is_dir():
        raise StoreError(f"{str(path)!r} is not a directory (foldloop stores are directories)")
    check_local(path)
    if not path.exists():
        if not create:
            raise StoreNotFound(f"no foldloop store at {str(path)!r}")
        _make_dir(path)
    check_access(path)
    if not (path / MARKER).exists():
        with _locked(path) as dirfd:
            # Looked at again under the lock: another creator may have finished meanwhile.
            if not (path / MARKER).exists():
                _create(path, dirfd, create=create, map_size=map_size)
                return True
    check_store(path)
    return False


def check_path(path: Path) -> None:
    """Refuse a path no store can be at, before anything is made there: one LMDB cannot
    open (not UTF-8: a file name with bytes of another encoding), or the system refuses
    to look up (a name too long)."""
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        raise ConfigError(
            f"the store path {str(path)!r} is not UTF-8 text (LMDB opens only UTF-8 paths)",
            advice="give a store directory whose path is UTF-8",
        ) from None
    try:
        path.exists()
    except OSError as exc:
        raise ConfigError(
            f"the store path {str(path)!r} cannot be used: {exc.strerror}",
            advice="give a shorter store path (each name at most 255 bytes)"
            if exc.errno == errno.ENAMETOOLONG
            else "give another store directory",
        ) from None


def _make_dir(path: Path) -> None:
    """Make the store directory (mode 0700) and its parents; another process may too."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError):
            path.mkdir(mode=0o700)
    except OSError as exc:
        raise StoreAccessError(f"cannot create the store directory {str(path)!r}: {exc}") from None


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[int]:
    """Hold an exclusive flock on the directory (the kernel drops it if this process dies)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as exc:
        raise StoreAccessError(f"cannot open the store directory {str(path)!r}: {exc}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as exc:
            raise StoreAccessError(
                f"cannot lock {str(path)!r} to create a store in it: {exc}"
            ) from None
        yield fd
    finally:
        os.close(fd)


def _create(path: Path, dirfd: int, *, create: bool, map_size: int) -> None:
    """Create the store in ``path``, an unmarked directory whose lock is held."""
    found = set(os.listdir(path))
    if found and (CREATING not in found or not found <= _LEFTOVERS):
        raise StoreError(
            f"{str(path)!r} holds files but is not a foldloop store (no {MARKER} marker); "
            "point --store at an empty or new directory"
        )
    if not create:
        raise StoreNotFound(f"no foldloop store at {str(path)!r}")
    try:
        _clear(path)
        if os.stat(path).st_uid == os.geteuid():
            os.chmod(path, 0o700)  # a directory made by someone else's umask
        write_synced(path / CREATING, marker_text())
        initialise(path, map_size=map_size)
        (path / "owners").mkdir(mode=0o700)
        os.rename(path / CREATING, path / MARKER)
    except BaseException as exc:
        # The interrupt may land just after the rename: a marked store is whole, keep it.
        if not (path / MARKER).exists():
            with contextlib.suppress(OSError):
                _clear(path)
        if isinstance(exc, OSError):
            raise StoreAccessError(f"cannot create the store in {str(path)!r}: {exc}") from None
        raise
    try:
        os.fsync(dirfd)  # the marker's rename is durable only once the directory is
    except OSError as exc:
        raise StoreAccessError(f"cannot flush the new store at {str(path)!r}: {exc}") from None


def _clear(path: Path) -> None:
    """Remove what a stopped creation left; CREATING last, so a partial clear is seen again."""
    for name in sorted(_LEFTOVERS - {CREATING}):
        target = path / name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        else:
            target.unlink(missing_ok=True)
    (path / CREATING).unlink(missing_ok=True)
