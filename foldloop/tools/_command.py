"""``run_command``: run a program from a tool, and really stop it when its time is up.

``subprocess.run(timeout=)`` kills only the direct child; a grandchild that inherited the
pipes keeps ``communicate()`` waiting (python/cpython #76116). So the command runs in a
new session (its own process group), and on timeout the whole group gets SIGTERM, then,
after ``grace`` seconds, SIGKILL; its stdin, stdout and stderr are temporary files, not
pipes, so a process it left outside its group cannot hold the call either. argv lists only
(never a shell); the output read back is capped.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from foldloop.errors import ConfigError

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

    Its output goes to unnamed temporary files, not pipes: the call ends when the command
    does (a process it left behind, holding what it inherited, cannot hold the call), and
    only the first ``max_output`` bytes of each are read back."""
    if isinstance(cmd, str) or not cmd or not all(isinstance(a, str) for a in cmd):
        raise ConfigError(f"cmd must be a non-empty list of strings (argv, no shell); got {cmd!r}")
    if (
        isinstance(timeout, bool)
        or not isinstance(timeout, int | float)
        or not (math.isfinite(timeout) and timeout > 0)
    ):
        raise ConfigError(f"timeout must be a finite number of seconds > 0; got {timeout!r}")
    if cwd is not None and not Path(cwd).is_dir():
        raise ConfigError(f"cwd {str(cwd)!r} is not a directory")
    if isinstance(input, str):
        input = input.encode("utf-8", "surrogatepass")
    elif input is not None and not isinstance(input, bytes | bytearray):
        raise ConfigError(f"input must be bytes or str (the command's stdin); got {input!r:.80}")
    import subprocess  # noqa: PLC0415 - spares `import foldloop` until a command runs
    import tempfile  # noqa: PLC0415

    start = time.monotonic()
    with (
        tempfile.TemporaryFile() as stdin,
        tempfile.TemporaryFile() as stdout,
        tempfile.TemporaryFile() as stderr,
    ):
        if input:
            stdin.write(input)
            stdin.seek(0)
        try:
            proc = subprocess.Popen(
                list(cmd),
                cwd=cwd,
                env=dict(env) if env is not None else None,
                stdin=subprocess.DEVNULL if input is None else stdin,
                stdout=stdout,
                stderr=stderr,
                start_new_session=True,  # its own process group, killed as a whole
            )
        except OSError as exc:
            raise ConfigError(f"cannot start {cmd[0]!r}: {exc}") from None
        timed_out = False
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            _kill_group(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                _kill_group(proc.pid, signal.SIGKILL)
                proc.wait()
        finally:
            _kill_group(proc.pid, signal.SIGKILL)  # leave no stragglers in its group
        return CommandResult(
            returncode=proc.returncode,
            stdout=_head(stdout, max_output),
            stderr=_head(stderr, max_output),
            timed_out=timed_out,
            duration_s=round(time.monotonic() - start, 3),
        )


def _head(file: IO[bytes], size: int) -> str:
    """The first ``size`` bytes a command wrote to ``file``, as text."""
    file.seek(0)
    return file.read(size).decode("utf-8", "replace")
