"""Where the command's output goes: stdout written whole or not at all (an error saying
so), and files written whole or not at all."""

from __future__ import annotations

import contextlib
import errno
import io
import os
import stat
import sys
from pathlib import Path

__all__ = ["OUTPUT_FULL", "OutputFailed", "whole_writes", "write_whole"]

OUTPUT_FULL = frozenset({errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EIO})
"""A write's errors that say where the output goes is full: the command fails, saying so."""


class OutputFailed(Exception):
    """The command's output could not be written (its message says where, and why)."""


def whole_writes() -> None:
    """Make every write to stdout whole, or an error. Under PYTHONUNBUFFERED (set in many
    container images) stdout's text layer writes to the raw file, and a short write (a
    full disk, a file size limit) drops the rest without a word: a ``foldloop export >
    file`` would end 0 with half a file."""
    stdout = sys.stdout
    if isinstance(stdout, io.TextIOWrapper) and isinstance(stdout.buffer, io.RawIOBase):
        sys.stdout = io.TextIOWrapper(
            io.BufferedWriter(io.FileIO(os.dup(stdout.fileno()), "w")),
            encoding=stdout.encoding,
            errors=stdout.errors,
            line_buffering=True,  # each line goes as it is written, as it did
        )


def write_whole(path: Path, text: str) -> None:
    """Write ``text`` to ``path``, with a CLI error saying what went wrong. A regular file
    (or none yet), directly or through symlinks, is written whole or not at all: a
    temporary file beside it takes its place once whole (the links stay). Anything else
    (a FIFO, a device, ``/dev/stdout``) is written through, as it is."""
    try:
        kind = path.stat().st_mode
    except FileNotFoundError:  # none yet, or a link to none
        kind = stat.S_IFLNK if path.is_symlink() else stat.S_IFREG
    except OSError as exc:
        raise OutputFailed(f"could not write {str(path)!r}: {exc.strerror or exc}") from None
    target = Path(os.path.realpath(path))
    # /dev/stdout and its kin name a file another process opened: written through, as is
    if not stat.S_ISREG(kind) or any(str(p).startswith(_THROUGH) for p in (path, target)):
        try:
            with path.open("w") as out:
                out.write(text)
        except OSError as exc:
            raise OutputFailed(f"could not write {str(path)!r}: {exc.strerror or exc}") from None
        return
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, target)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise OutputFailed(f"could not write {str(path)!r}: {exc.strerror or exc}") from None


_THROUGH = ("/dev/", "/proc/")
