"""Checks made before LMDB touches a directory, so a bad path is an error, not a crash.

LMDB maps data.mdb into memory: a truncated file kills the process with SIGBUS on the
first read past its end, and an empty one is silently treated as a brand new database.
So before opening, the meta pages are read with plain file I/O and checked against the
file's size, and a marker file tells a damaged foldloop store from a fresh directory.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shlex
import stat
import struct
from pathlib import Path

from foldloop.errors import StoreAccessError, StoreCorrupted, StoreError

__all__ = [
    "FORMAT",
    "MARKER",
    "check_access",
    "check_data_file",
    "check_local",
    "check_store",
    "marker_text",
    "network_filesystem",
    "write_synced",
]

NETWORK_FILESYSTEMS = frozenset(
    {
        "nfs",
        "nfs4",
        "cifs",
        "smb3",
        "smbfs",
        "ncpfs",
        "afs",
        "9p",
        "fuse.sshfs",
        "glusterfs",
        "ceph",
    }
)
"""Where LMDB's shared-memory locks and mmap coherence do not hold (LMDB docs, Caveats)."""


def _unescape(field: str) -> str:
    return field.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n")


def network_filesystem(path: Path, mounts: str) -> str | None:
    """The network filesystem type ``path`` lives on, per ``mounts`` (/proc/mounts text)."""
    target = os.path.realpath(path)
    best, best_type = "", None
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        point, fstype = _unescape(fields[1]), fields[2]
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, best_type = point, fstype
    return best_type if best_type in NETWORK_FILESYSTEMS else None


def check_local(path: Path) -> None:
    """Refuse a path on a network filesystem."""
    try:
        mounts = Path("/proc/mounts").read_text()
    except OSError:
        return  # not Linux: nothing to check against
    fstype = network_filesystem(path, mounts)
    if fstype is not None:
        raise StoreAccessError(
            f"{str(path)!r} is on {fstype}; LMDB needs a local filesystem (its locks and "
            "memory map are not coherent across network mounts): put the store on a local disk"
        )


MARKER = "foldloop.store"
FORMAT = 5
"""The one on-disk format this foldloop reads and writes: one stored value per append (its
events positional, one checksum and chain hash for them all), an index entry per stretch of
a run's records. A store of another format is refused, never converted in place: its runs
move by export and import. (Format 4 markers were also left on stores upgraded in place
from 1-3 with their old values inside, so 4 is refused too.)"""
_MAGIC = 0xBEEFC0DE
_META_OFFSET = 16  # after the page header


def foldloop_version() -> str:
    """This foldloop's version, as its package metadata gives it."""
    try:
        return importlib.metadata.version("foldloop")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree, not installed
        return "unknown"


def _read_marker(path: Path) -> tuple[int, str | None]:
    """(format, foldloop version that made the store, if the marker records one)."""
    try:
        data = json.loads((path / MARKER).read_text())
        version = data.get("foldloop")
        return int(data["format"]), version if isinstance(version, str) else None
    except PermissionError as exc:
        raise StoreAccessError(
            f"cannot read {str(path / MARKER)!r} ({exc.strerror}): foldloop needs read and "
            "write access to the store's files; run as their owner or fix their modes (0600)"
        ) from None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise StoreCorrupted(
            f"{path / MARKER} is unreadable ({exc}); this is not an intact foldloop store"
        ) from None


def check_access(path: Path) -> None:
    """Refuse a store directory this process cannot both read and write."""
    if not os.access(path, os.R_OK | os.W_OK | os.X_OK):
        raise StoreAccessError(
            f"cannot write to {str(path)!r}: foldloop needs read and write access "
            "(readers too take locks in lock.mdb)"
        )


def check_store(path: Path) -> None:
    """Refuse a marked store this foldloop cannot read, or whose data file is damaged."""
    fmt, version = _read_marker(path)
    if fmt != FORMAT:
        raise StoreError(_other_format(path, fmt, version))
    data = path / "data.mdb"
    if not data.exists() or data.stat().st_size == 0:
        raise StoreCorrupted(
            f"{str(path)!r} is marked as a foldloop store but its data.mdb is missing or empty; "
            "the store was damaged: restore it from a backup"
        )
    try:
        check_data_file(data)
    except PermissionError as exc:
        raise StoreAccessError(
            f"cannot read {str(data)!r} ({exc.strerror}): foldloop needs read and write "
            "access to the store's files; run as their owner or fix their modes (0600)"
        ) from None
    except OSError as exc:
        raise StoreAccessError(f"cannot read {str(data)!r}: {exc}") from None


def check_data_file(data: Path) -> None:
    """Refuse a data.mdb that is not LMDB or that is shorter than its meta pages claim."""
    if not stat.S_ISREG(data.stat().st_mode):
        raise StoreError(f"{str(data)!r} is not a regular file")
    with data.open("rb") as fh:
        head = fh.read(_META_OFFSET + 160)
        if len(head) < _META_OFFSET + 152:
            raise StoreCorrupted(
                f"{str(data)!r} is {len(head)} bytes: too short to be an LMDB file"
            )
        magic, _version = struct.unpack_from("<II", head, _META_OFFSET)
        if magic != _MAGIC:
            raise StoreCorrupted(
                f"{str(data)!r} is not an LMDB file (bad magic); the store is corrupt"
            )
        psize = struct.unpack_from("<I", head, _META_OFFSET + 24)[0]
        if psize < 512 or psize & (psize - 1):
            raise StoreCorrupted(
                f"{str(data)!r} has an impossible page size {psize}; it is corrupt"
            )
        metas = [struct.unpack_from("<QQ", head, _META_OFFSET + 120)]
        fh.seek(psize)
        second = fh.read(_META_OFFSET + 160)
        if (
            len(second) >= _META_OFFSET + 136
            and struct.unpack_from("<I", second, _META_OFFSET)[0] == _MAGIC
        ):
            metas.append(struct.unpack_from("<QQ", second, _META_OFFSET + 120))
        # Sized after the metas are read: a writer extends the file before it writes the meta.
        size = os.fstat(fh.fileno()).st_size
    last_pg, _txnid = max(metas, key=lambda m: m[1])
    needed = (last_pg + 1) * psize
    if size < needed:
        raise StoreCorrupted(
            f"{str(data)!r} is {size:,} bytes but its last page needs {needed:,}: the file was "
            "truncated; refusing to open it (reading it would crash the process). "
            "Restore the store from a backup"
        )


def _other_format(path: Path, fmt: int, version: str | None) -> str:
    """Why a store of format ``fmt`` (made by foldloop ``version``, when known) is refused,
    and how its runs move to a store this foldloop reads."""
    where, at = str(path), shlex.quote(str(path))
    maker = f"foldloop {version}" if version else "a foldloop that did not record its version"
    if fmt > FORMAT:
        return (
            f"{where!r} has store format {fmt}, newer than this foldloop ({foldloop_version()}) "
            f"reads (format {FORMAT}); it was made by {maker}: upgrade foldloop to open it"
        )
    return (
        f"{where!r} has store format {fmt}, made by {maker}; this foldloop "
        f"({foldloop_version()}) reads format {FORMAT} only and never converts a store in place. "
        f"Move its runs: with the foldloop that made it, `foldloop --store {at} runs` lists "
        f"them and `foldloop --store {at} export RUN > RUN.jsonl` writes each one; then, with "
        "this foldloop, `foldloop --store NEW_STORE import RUN.jsonl` for each file"
    )


def marker_text() -> str:
    """What the marker file of a store of this format holds."""
    return json.dumps({"format": FORMAT, "foldloop": foldloop_version()}) + "\n"


def write_synced(path: Path, text: str) -> None:
    """Write ``path`` (mode 0600) and flush it to disk."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
