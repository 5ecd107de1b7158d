"""The reaper's own process (``_reaper.py``): stdlib only, run by path, not as a package module.

It reads ``+PGID`` and ``-PGID`` lines on stdin: process groups of commands started and
ended by the process that started it. When stdin ends, that process is gone (exited, or
killed: the kernel closes its end of the pipe either way), and the groups still listed get
SIGTERM, then SIGKILL after a grace period.
"""

from __future__ import annotations

import os
import signal
import sys
import time

GRACE_S = 2.0
"""How long the groups have to end after SIGTERM (``run_command``'s default grace)."""


def _signal(groups: set[int], sig: int) -> set[int]:
    """Send ``sig`` to each group; the ones that still had a process."""
    alive = set()
    for pgid in groups:
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            continue
        except PermissionError:  # not ours any more (its id went to another user's group)
            continue
        alive.add(pgid)
    return alive


def main() -> int:
    groups: set[int] = set()
    for line in sys.stdin.buffer:
        sign, number = line[:1], line[1:].strip()
        if not number.isdigit():
            continue
        pgid = int(number)
        if sign == b"+":
            groups.add(pgid)
        elif sign == b"-":
            groups.discard(pgid)
    alive = _signal(groups, signal.SIGTERM)
    end = time.monotonic() + GRACE_S
    while alive and time.monotonic() < end:
        time.sleep(0.05)
        alive = _signal(alive, 0)
    _signal(alive, signal.SIGKILL)
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the host's Ctrl-C is the host's to handle
    sys.exit(main())
