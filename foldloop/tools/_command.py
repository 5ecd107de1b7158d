"""``run_command``: run a program from a tool, and really stop it when its time is up.

``subprocess.run(timeout=)`` kills only the direct child; a grandchild that inherited the
pipes keeps ``communicate()`` waiting (python/cpython #76116). So the command runs in a
new session (its own process group), and on timeout the whole group gets SIGTERM, then,
after ``grace`` seconds, SIGKILL. argv lists only (never a shell); output is capped.
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
    input: bytes | None = None,
) -> CommandResult:
    """Run ``cmd`` (an argv list) for at most ``timeout`` seconds, ``input`` on its stdin
    (else none); never raises for its exit."""
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
    import subprocess  # noqa: PLC0415 - spares `import foldloop` until a command runs

    start = time.monotonic()
    try:
        proc = subprocess.Popen(
            list(cmd),
            cwd=cwd,
            env=dict(env) if env is not None else None,
            stdin=subprocess.DEVNULL if input is None else subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,  # its own process group, killed as a whole
        )
    except OSError as exc:
        raise ConfigError(f"cannot start {cmd[0]!r}: {exc}") from None
    timed_out = False
    try:
        out, err = proc.communicate(input, timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        _kill_group(proc.pid, signal.SIGTERM)
        try:
            out, err = proc.communicate(timeout=grace)
        except subprocess.TimeoutExpired:
            _kill_group(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
    finally:
        _kill_group(proc.pid, signal.SIGKILL)  # leave no stragglers in its group
    return CommandResult(
        returncode=proc.returncode,
        stdout=out[:max_output].decode("utf-8", "replace"),
        stderr=err[:max_output].decode("utf-8", "replace"),
        timed_out=timed_out,
        duration_s=round(time.monotonic() - start, 3),
    )
