"""The reaper's own process (``_reaper.py``): stdlib only, its source run with ``python -I -c``.

It reads ``+PGID GRACE`` and ``-PGID`` lines, its arguments first, then stdin: process
groups of commands started and ended by the process that started it, each with the seconds it
has to end after SIGTERM. When stdin ends, that process is gone (exited, or killed: the kernel
closes its end of the pipe either way), and the groups still listed get SIGTERM, then SIGKILL
once their grace is over.
"""

from __future__ import annotations

import itertools
import os
import signal
import sys
import time


def _signal(groups: dict[int, float], sig: int) -> dict[int, float]:
    """Send ``sig`` to each group; the ones that still had a process."""
    alive = {}
    for pgid, grace in groups.items():
        try:
            os.killpg(pgid, sig)
        except (ProcessLookupError, PermissionError):  # gone (its id may be another's now)
            continue
        alive[pgid] = grace
    return alive


def main() -> int:
    groups: dict[int, float] = {}
    listed = [arg.encode() for arg in sys.argv[1:]]  # the list so far, when it replaces one
    for line in itertools.chain(listed, sys.stdin.buffer):
        sign, _, rest = line.strip().partition(b" ")
        try:
            pgid = int(sign[1:])
            grace = float(rest) if rest else 0.0
        except ValueError:
            continue
        if sign[:1] == b"+":
            groups[pgid] = grace
        elif sign[:1] == b"-":
            groups.pop(pgid, None)
    alive = _signal(groups, signal.SIGTERM)
    start = time.monotonic()
    while alive:
        late = {p: g for p, g in alive.items() if time.monotonic() - start >= g}
        _signal(late, signal.SIGKILL)
        alive = _signal({p: g for p, g in alive.items() if p not in late}, 0)
        if alive:
            time.sleep(0.05)
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the host's Ctrl-C is the host's to handle
    sys.exit(main())
