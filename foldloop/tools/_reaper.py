"""The commands this process started end when it does, even when it is SIGKILLed.

``run_command`` starts each command in a process group of its own (so a timeout kills the
whole group), which also takes it out of the host's reach when the host dies: a hung one
would run on for ever. So the first command also starts a small reaper process (the source
of ``_reaper_child``, stdlib only) holding the read end of a pipe from this process; each
command's group is listed with it while it runs. The kernel closes the pipe when this
process ends, however it ends, and the reaper then stops the groups still listed (SIGTERM,
SIGKILL once the command's grace is over).

The list is kept here too: a reaper that died (killed by hand) or stopped reading is
replaced by one given the whole list. Writes never wait (a reaper that is not reading must
not hold a command up). A process that cannot start one (no interpreter to run it: a frozen
application) runs its commands all the same, unwatched, and says so once.
"""

from __future__ import annotations

import contextlib
import importlib.resources
import os
import subprocess
import sys
import threading

from foldloop._log import get_logger

__all__ = ["forget", "ready", "watch"]

log = get_logger(__name__)


class _Reaper:
    """The reaper of this process and the groups listed with it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._groups: dict[int, float] = {}
        """The groups of the commands running (pgid: their grace after SIGTERM)."""
        self._source: str | None = None
        self._unavailable = False
        self._inherited: list[subprocess.Popen[bytes]] = []
        """Reapers of the parent this process was forked from, held so that their Popen is
        never collected (its __del__ would warn of a process this one cannot wait for)."""

    def ready(self) -> None:
        """Start the reaper now if none runs, so a command's first moments are covered."""
        with self._lock:
            self._running()

    def watch(self, pgid: int, grace: float) -> None:
        """List ``pgid``, the group of a command just started (its leader's pid)."""
        with self._lock:
            self._groups[pgid] = grace
            self._send(_line(pgid, grace))

    def forget(self, pgid: int) -> None:
        """Take ``pgid`` off the list before its leader is waited for (while no other
        process can be given its id)."""
        with self._lock:
            if self._groups.pop(pgid, None) is not None and self._proc is not None:
                self._send(b"-%d\n" % pgid)

    def _running(self) -> subprocess.Popen[bytes] | None:
        """(Lock held.) The reaper, started (given the whole list) if none runs."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            return proc
        if proc is not None:
            log.warning("command_reaper_gone", returncode=proc.returncode, groups=len(self._groups))
        self._proc = proc = self._start()
        return proc

    def _send(self, line: bytes) -> None:
        """(Lock held.) Tell the reaper ``line``; one that cannot take it now is replaced."""
        proc = self._running()
        if proc is None:
            return
        assert proc.stdin is not None
        try:
            os.write(proc.stdin.fileno(), line)  # under PIPE_BUF: written whole or not at all
        except OSError as exc:  # full (it stopped reading) or broken (it died)
            log.warning("command_reaper_replaced", error=str(exc), groups=len(self._groups))
            with contextlib.suppress(OSError):
                proc.kill()
            self._proc = None
            self._running()  # the new one is given the list, this line's change included

    def _start(self) -> subprocess.Popen[bytes] | None:
        if self._unavailable:
            return None
        if getattr(sys, "frozen", False) or not sys.executable:  # no interpreter of its own
            self._unavailable = True
            log.warning("command_reaper_unavailable", why="no Python interpreter to run it with")
            return None
        try:
            if self._source is None:
                self._source = (
                    importlib.resources.files(__package__ or "foldloop.tools")
                    .joinpath("_reaper_child.py")
                    .read_text()
                )
            proc = subprocess.Popen(
                # isolated: it imports nothing of the host's; the list so far as arguments
                [sys.executable, "-I", "-c", self._source]
                + [_line(p, g).decode().strip() for p, g in self._groups.items()],
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                cwd="/",  # holds no directory of the host's (a mount it would keep busy)
                start_new_session=True,  # the terminal's signals are the host's, not its
            )
        except OSError as exc:
            log.warning("command_reaper_not_started", error=str(exc))
            return None
        assert proc.stdin is not None
        os.set_blocking(proc.stdin.fileno(), False)
        return proc

    def before_fork(self) -> None:
        self._lock.acquire()  # no fork while a reaper starts: its pipe would be inherited

    def after_fork_in_parent(self) -> None:
        self._lock.release()

    def after_fork_in_child(self) -> None:
        """Let go of the parent's reaper and list: the inherited end of its pipe would keep
        it from seeing the parent end, and the parent's commands are not this process's."""
        proc, self._proc, self._groups = self._proc, None, {}
        self._lock = threading.Lock()
        if proc is not None and proc.stdin is not None:
            with contextlib.suppress(OSError):
                proc.stdin.close()
            self._inherited.append(proc)


def _line(pgid: int, grace: float) -> bytes:
    return b"+%d %r\n" % (pgid, grace)


_reaper = _Reaper()
ready = _reaper.ready
watch = _reaper.watch
forget = _reaper.forget
os.register_at_fork(
    before=_reaper.before_fork,
    after_in_parent=_reaper.after_fork_in_parent,
    after_in_child=_reaper.after_fork_in_child,
)
