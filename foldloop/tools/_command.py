"""``run_command``: run a program from a tool, and really stop it when its time is up.

``subprocess.run(timeout=)`` kills only the direct child; a grandchild that inherited the
pipes keeps ``communicate()`` waiting (python/cpython #76116). So the command runs in a
new session (its own process group), and on timeout the whole group gets SIGTERM, then,
after ``grace`` seconds, SIGKILL. Its output is read until it exits (Linux tells of the exit
through a pidfd), not until its pipes close, so a process it left outside its group cannot
hold the call either; past ``max_output`` bytes a stream's output is read and dropped.
While it runs, it is listed with this process's reaper (``_reaper``), which stops its group
if this process dies first. argv lists only (never a shell).
"""

from __future__ import annotations

import contextlib
import math
import os
import selectors
import signal
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from foldloop.errors import ConfigError

if TYPE_CHECKING:
    import subprocess

__all__ = ["CommandResult", "run_command"]

_CAP = 1 << 20


@dataclass(frozen=True)
class CommandResult:
    """What a command did: its exit code (negative: killed by that signal) and output."""

    returncode: int
    stdout: str
    stderr: str
    timed_out: bool
    duration_s: float

    @property
    def ok(self) -> bool:
        """It exited 0 within its time."""
        return self.returncode == 0 and not self.timed_out


def _kill_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)


def run_command(
    cmd: Sequence[str],
    timeout: float,
    cwd: str | os.PathLike[str] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    grace: float = 2.0,
    max_output: int = _CAP,
    input: bytes | str | None = None,
) -> CommandResult:
    """Run ``cmd`` (an argv list) for at most ``timeout`` seconds, ``input`` on its stdin
    (else none); never raises for its exit.

    The call ends when the command does: what it wrote is read up to then (the first
    ``max_output`` bytes of each stream kept, the rest dropped as it comes), and a process
    it left behind, holding its pipes, is not waited for."""
    if isinstance(cmd, str) or not cmd or not all(isinstance(a, str) for a in cmd):
        raise ConfigError(f"cmd must be a non-empty list of strings (argv, no shell); got {cmd!r}")
    _check_seconds("timeout", timeout, zero=False)
    _check_seconds("grace", grace, zero=True)
    if cwd is not None and not Path(cwd).is_dir():
        raise ConfigError(f"cwd {str(cwd)!r} is not a directory")
    if isinstance(input, str):
        try:
            input = input.encode()
        except UnicodeEncodeError as exc:
            raise ConfigError(f"input is not valid Unicode text ({exc.reason})") from None
    elif input is not None and not isinstance(input, bytes | bytearray):
        raise ConfigError(f"input must be bytes or str (the command's stdin); got {input!r:.80}")
    import subprocess  # noqa: PLC0415 - spares `import foldloop` until a command runs
    import tempfile  # noqa: PLC0415

    from foldloop.tools import _reaper  # noqa: PLC0415

    start = time.monotonic()
    with tempfile.TemporaryFile() as stdin:  # read at the command's pace: no pipe to fill
        if input:
            try:
                stdin.write(input)
            except OSError as exc:  # a full disk
                raise ConfigError(f"cannot hold the command's input: {exc}") from None
            stdin.seek(0)
        # the reaper hears of it before it starts (by the tag in its environment): a host
        # killed as it starts it leaves no orphan
        tag = _reaper.starting(grace)
        try:
            proc = subprocess.Popen(
                list(cmd),
                cwd=cwd,
                env={**(os.environ if env is None else env), _reaper.TAG_VARIABLE: tag},
                stdin=subprocess.DEVNULL if input is None else stdin,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,  # its own process group, killed as a whole
            )
        except BaseException as exc:
            _reaper.forget(tag)
            if isinstance(exc, OSError):
                raise ConfigError(f"cannot start {cmd[0]!r}: {exc}") from None
            raise
    assert proc.stdout is not None
    assert proc.stderr is not None
    try:
        _reaper.started(tag, proc.pid)  # its group (pgid: its pid, a session's leader)
        output, timed_out = _collect(proc, timeout, grace, max_output)
    finally:
        _kill_group(proc.pid, signal.SIGKILL)  # leave no stragglers in its group
        _reaper.forget(tag)  # before the wait: until then, no other process has its pid
        proc.stdout.close()
        proc.stderr.close()
        proc.wait()
    return CommandResult(
        returncode=proc.returncode,
        stdout=output[0].decode("utf-8", "replace"),
        stderr=output[1].decode("utf-8", "replace"),
        timed_out=timed_out,
        duration_s=round(time.monotonic() - start, 3),
    )


def _check_seconds(name: str, value: object, *, zero: bool) -> None:
    """Refuse what is not a finite number of seconds above 0 (or 0 too, with ``zero``)."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value < 0
        or (value == 0 and not zero)
    ):
        least = ">= 0" if zero else "> 0"
        raise ConfigError(f"{name} must be a finite number of seconds {least}; got {value!r}")


_CHUNK = 1 << 16
_POLL_S = 0.05
"""How often the exit of a command is looked for where no pidfd tells of it."""
_LONGEST_SELECT_S = 3600.0
"""The longest one wait of the loop (epoll refuses waits past ~24.8 days: a subprocess
tool without a timeout is given 10**9 s)."""


def _collect(
    proc: subprocess.Popen[bytes], timeout: float, grace: float, cap: int
) -> tuple[tuple[bytes, bytes], bool]:
    """The first ``cap`` bytes of the command's stdout and stderr, read until it exits, and
    whether its time ran out (its group is sent SIGTERM then, SIGKILL ``grace`` s later)."""
    assert proc.stdout is not None
    assert proc.stderr is not None
    pipes = (proc.stdout.fileno(), proc.stderr.fileno())
    kept = {fd: bytearray() for fd in pipes}
    deadline, timed_out, killed = time.monotonic() + timeout, False, False
    exit_fd = _exit_fd(proc.pid)
    try:
        with selectors.DefaultSelector() as selector:
            for fd in pipes:
                os.set_blocking(fd, False)
                selector.register(fd, selectors.EVENT_READ)
            if exit_fd is not None:
                selector.register(exit_fd, selectors.EVENT_READ)
            while exit_fd is not None or proc.poll() is None:
                now = time.monotonic()
                if now >= deadline and not killed:
                    killed = timed_out  # the second time round: SIGKILL
                    _kill_group(proc.pid, signal.SIGKILL if timed_out else signal.SIGTERM)
                    timed_out, deadline = True, now + grace
                # killed, it ends now; else until the deadline, in waits epoll takes
                wait = None if killed else min(max(0.0, deadline - now), _LONGEST_SELECT_S)
                if exit_fd is None:
                    wait = _POLL_S if wait is None else min(wait, _POLL_S)
                ready = [key.fd for key, _ in selector.select(wait)]
                if exit_fd in ready:
                    break
                for fd in ready:
                    if not _take(fd, kept[fd], cap):
                        selector.unregister(fd)  # its end: the command closed it
    finally:
        if exit_fd is not None:
            os.close(exit_fd)
    for fd in pipes:  # it exited: what it wrote waits in the pipes, taken without waiting
        while _take(fd, kept[fd], cap, once=True):
            pass
    return (bytes(kept[pipes[0]]), bytes(kept[pipes[1]])), timed_out


def _take(fd: int, kept: bytearray, cap: int, *, once: bool = False) -> bool:
    """Read what ``fd`` holds now into ``kept`` (up to ``cap`` bytes, the rest dropped);
    False at its end, or (``once``) when nothing more waits."""
    try:
        data = os.read(fd, _CHUNK)
    except BlockingIOError:
        return not once
    except OSError:
        return False
    if len(kept) < cap:
        kept += data[: cap - len(kept)]
    return bool(data)


def _exit_fd(pid: int) -> int | None:
    """A descriptor that becomes readable when ``pid`` exits (Linux's pidfd), if there is one."""
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None
