"""The reaper's own process (``_reaper.py``): stdlib only, its source read from its stdin.

It reads lines, its arguments first (after its name), then stdin, about the commands of the
process that started it, each known by a tag that is also in the command's environment
(``TAG_VARIABLE``):

- ``+TAG GRACE``: a command is starting, with GRACE seconds to end after SIGTERM;
- ``=TAG PGID``: it started, in process group PGID;
- ``-TAG``: it ended (its group killed).

When stdin ends, that process is gone (exited, or killed: the kernel closes its end of the
pipe either way), and the groups still listed get SIGTERM, then SIGKILL once their grace is
over. A command whose group was never told (the process died as it started it) is found by
its tag among the processes' environments (Linux's ``/proc``).
"""

from __future__ import annotations

import itertools
import os
import signal
import sys
import time

TAG_VARIABLE = b"FOLDLOOP_COMMAND_TAG"


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


def _tagged(tags: dict[bytes, float]) -> dict[int, float]:
    """The groups of the processes whose environment holds one of ``tags``."""
    wanted = {TAG_VARIABLE + b"=" + tag: grace for tag, grace in tags.items()}
    found: dict[int, float] = {}
    try:
        pids = [int(name) for name in os.listdir("/proc") if name.isdigit()]
    except OSError:  # no /proc: nothing to look in
        return found
    for pid in pids:
        try:
            with open(f"/proc/{pid}/environ", "rb") as environ:
                variables = environ.read().split(b"\0")
            tagged = [wanted[v] for v in variables if v in wanted]
            pgid = os.getpgid(pid) if tagged else 0
            if pgid > 1 and pgid != os.getpgrp():  # never its own group, nor init's
                found[pgid] = tagged[0]
        except (OSError, ValueError):  # gone, or not ours to read
            continue
    return found


def main() -> int:
    started: dict[bytes, tuple[int | None, float]] = {}
    listed = [arg.encode() for arg in sys.argv[2:]]  # the list so far, when it replaces one
    for line in itertools.chain(listed, sys.stdin.buffer):
        head, _, rest = line.strip().partition(b" ")
        sign, tag = head[:1], head[1:]
        try:
            if sign == b"+":
                started[tag] = (None, float(rest))
            elif sign == b"=" and tag in started:
                started[tag] = (int(rest), started[tag][1])
            elif sign == b"-":
                started.pop(tag, None)
        except ValueError:
            continue
    groups = {pgid: grace for pgid, grace in started.values() if pgid is not None}
    unknown = {tag: grace for tag, (pgid, grace) in started.items() if pgid is None}
    if unknown:
        groups.update(_tagged(unknown))
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
