"""The commands this process started end when it does, even when it is SIGKILLed.

``run_command`` starts each command in a process group of its own (so a timeout kills the
whole group), which also takes it out of the host's reach when the host dies: a hung one
would run on for ever. So the first command also starts a small reaper process (the source
of ``_reaper_child``, stdlib only) holding the read end of a pipe from this process, and is
told of each command while it runs: as it starts (a tag, which is also put in the command's
environment), then its group. The kernel closes the pipe when this process ends, however it
ends, and the reaper then stops the groups still listed (SIGTERM, SIGKILL once the command's
grace is over); a command this process died starting is found by its tag.

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

__all__ = ["TAG_VARIABLE", "forget", "started", "starting"]

TAG_VARIABLE = "FOLDLOOP_COMMAND_TAG"
"""Where a command's environment holds its tag (``_reaper_child.TAG_VARIABLE`` too)."""

log = get_logger(__name__)


_BOOT = "import sys; exec(eval(sys.stdin.buffer.readline()))"
"""What the reaper is started with: its source comes as the first line of its stdin (a command
line holding it would show in ``ps`` and match a user's ``pkill -f``)."""
_NAME = "foldloop-reaper"


class _Reaper:
    """The reaper of this process and the commands listed with it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._commands: dict[str, tuple[int | None, float]] = {}
        """The commands running, by tag: their group (None until told) and grace."""
        self._prefix = os.urandom(8).hex()  # tags no other process gives (pids are reused)
        self._count = 0
        self._source: bytes | None = None
        self._unavailable = False
        self._notes: list[tuple[str, dict[str, object]]] = []
        """Warnings made under the lock, logged once it is let go (a handler may fork)."""
        self._inherited: list[subprocess.Popen[bytes]] = []
        """Reapers of the parent this process was forked from, held so that their Popen is
        never collected (its __del__ would warn of a process this one cannot wait for)."""

    def starting(self, grace: float) -> str:
        """List a command about to start (``grace``: its seconds after SIGTERM); returns
        the tag to put in its environment (``TAG_VARIABLE``)."""
        with self._lock:
            self._count += 1
            tag = f"{self._prefix}.{self._count}"
            self._commands[tag] = (None, grace)
            self._send(b"+%s %r\n" % (tag.encode(), grace))
        self._say()
        return tag

    def started(self, tag: str, pgid: int) -> None:
        """The command tagged ``tag`` started, in group ``pgid`` (its leader's pid)."""
        with self._lock:
            if tag in self._commands:
                self._commands[tag] = (pgid, self._commands[tag][1])
                self._send(b"=%s %d\n" % (tag.encode(), pgid))
        self._say()

    def forget(self, tag: str) -> None:
        """Take the command off the list: it ended (or never started), its group killed.
        Before its leader is waited for: until then no other process can have its pid."""
        with self._lock:
            if self._commands.pop(tag, None) is not None and self._proc is not None:
                self._send(b"-%s\n" % tag.encode())
        self._say()

    def _say(self) -> None:
        """Log the warnings made under the lock (now let go)."""
        while self._notes:
            event, fields = self._notes.pop(0)
            log.warning(event, **fields)

    def _running(self) -> subprocess.Popen[bytes] | None:
        """(Lock held.) The reaper, started (given the whole list) if none runs."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            return proc
        if proc is not None:
            if proc.returncode > 0:  # it ended by itself: this interpreter cannot run it
                self._give_up(f"it exited with {proc.returncode} ({sys.executable})")
                self._proc = None
                return None
            self._notes.append(
                (
                    "command_reaper_gone",
                    {"returncode": proc.returncode, "commands": len(self._commands)},
                )
            )
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
            self._notes.append(
                ("command_reaper_replaced", {"error": str(exc), "commands": len(self._commands)})
            )
            with contextlib.suppress(OSError):
                proc.kill()
            self._proc = None
            self._running()  # the new one is given the list, this line's change included

    def _start(self) -> subprocess.Popen[bytes] | None:
        if self._unavailable:
            return None
        if getattr(sys, "frozen", False) or not sys.executable:  # no interpreter of its own
            self._give_up("this process has no Python interpreter to run it with")
            return None
        try:
            if self._source is None:
                source = (
                    importlib.resources.files(__package__ or "foldloop.tools")
                    .joinpath("_reaper_child.py")
                    .read_text()
                )
                self._source = repr(source).encode() + b"\n"
            proc = subprocess.Popen(
                # isolated: it imports nothing of the host's; the list so far as arguments
                [sys.executable, "-I", "-c", _BOOT, _NAME, *self._listed()],
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                cwd="/",  # holds no directory of the host's (a mount it would keep busy)
                start_new_session=True,  # the terminal's signals are the host's, not its
            )
        except (FileNotFoundError, PermissionError) as exc:  # no interpreter there
            self._give_up(str(exc))
            return None
        except OSError as exc:  # out of processes or memory: the next command tries again
            self._notes.append(("command_reaper_not_started", {"error": str(exc)}))
            return None
        assert proc.stdin is not None
        try:
            os.write(proc.stdin.fileno(), self._source)  # into an empty pipe: whole
        except OSError as exc:
            self._notes.append(("command_reaper_not_started", {"error": str(exc)}))
            proc.kill()
            return None
        os.set_blocking(proc.stdin.fileno(), False)
        return proc

    def _give_up(self, why: str) -> None:
        """(Lock held.) No reaper can run here: commands run unwatched, said once."""
        self._unavailable = True
        self._notes.append(("command_reaper_unavailable", {"why": why}))

    def _listed(self) -> list[str]:
        """(Lock held.) The list as a new reaper's arguments (the lines it would have read)."""
        lines = []
        for tag, (pgid, grace) in self._commands.items():
            lines.append(f"+{tag} {grace!r}")
            if pgid is not None:
                lines.append(f"={tag} {pgid}")
        return lines

    def before_fork(self) -> None:
        self._lock.acquire()  # no fork while a reaper starts: its pipe would be inherited

    def after_fork_in_parent(self) -> None:
        self._lock.release()

    def after_fork_in_child(self) -> None:
        """Let go of the parent's reaper and list: the inherited end of its pipe would keep
        it from seeing the parent end, and the parent's commands are not this process's."""
        proc, self._proc, self._commands = self._proc, None, {}
        self._lock = threading.Lock()
        self._prefix, self._count, self._notes = os.urandom(8).hex(), 0, []
        if proc is not None and proc.stdin is not None:
            with contextlib.suppress(OSError):
                proc.stdin.close()
            self._inherited.append(proc)


_reaper = _Reaper()
starting = _reaper.starting
started = _reaper.started
forget = _reaper.forget
os.register_at_fork(
    before=_reaper.before_fork,
    after_in_parent=_reaper.after_fork_in_parent,
    after_in_child=_reaper.after_fork_in_child,
)
