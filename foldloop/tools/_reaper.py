"""The commands this process started end when it does, even when it is SIGKILLed.

``run_command`` starts each command in a process group of its own (so a timeout kills the
whole group), which also takes it out of the host's reach when the host dies: a hung one
would run on for ever. So the first command also starts a small reaper process
(``_reaper_child.py``, stdlib only) holding the read end of a pipe from this process; each
command's group is listed with it while it runs. The kernel closes the pipe when this
process ends, however it ends, and the reaper then stops the groups still listed (SIGTERM,
SIGKILL two seconds later). One reaper a process; a process without one (it could not be
started) runs its commands all the same, unwatched.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
from pathlib import Path

from foldloop._log import get_logger

__all__ = ["forget", "watch"]

log = get_logger(__name__)

_CHILD = str(Path(__file__).with_name("_reaper_child.py"))


class _Reaper:
    """The reaper of this process, started on first use, started again if it died."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None

    def watch(self, pgid: int) -> None:
        """List ``pgid``, the group of a command just started, with the reaper."""
        self._send(b"+%d\n" % pgid, start=True)

    def forget(self, pgid: int) -> None:
        """Take ``pgid`` off the list: its command ended, and its group was killed."""
        self._send(b"-%d\n" % pgid, start=False)

    def _send(self, line: bytes, *, start: bool) -> None:
        with self._lock:
            proc = self._proc
            if proc is None or proc.poll() is not None:
                if not start:
                    return
                proc = self._proc = self._start()
                if proc is None:
                    return
            assert proc.stdin is not None
            try:
                proc.stdin.write(line)
            except OSError as exc:  # it died (killed by hand): the next command starts another
                log.warning("command_reaper_gone", error=str(exc))
                self._proc = None

    def _start(self) -> subprocess.Popen[bytes] | None:
        try:
            return subprocess.Popen(
                [sys.executable, "-I", _CHILD],  # isolated: it imports nothing of the host's
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                bufsize=0,  # each line reaches it as it is written
                start_new_session=True,  # the terminal's signals are the host's, not its
            )
        except OSError as exc:
            log.warning("command_reaper_not_started", error=str(exc))
            return None

    def forked(self) -> None:
        """(In a child made by os.fork.) Let go of the parent's reaper: the inherited end
        of its pipe would keep it from seeing the parent end."""
        proc, self._proc = self._proc, None
        self._lock = threading.Lock()
        if proc is not None and proc.stdin is not None:
            with contextlib.suppress(OSError):
                proc.stdin.close()


_reaper = _Reaper()
watch = _reaper.watch
forget = _reaper.forget
os.register_at_fork(after_in_child=_reaper.forked)
